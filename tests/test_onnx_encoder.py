"""The whole encoder as one ONNX graph (crosslayer.onnx_encoder), against `CrossLayerEncoder.encode` on real images.

Why bits may differ, and by how much: the graph's backbone is the encoder's own export fed the same normalised input
(the `embedding` output is compared bit for bit below to show it), so both pool the same activations. Each side
computes every pooled value P in float32 and so lies within B = `reference.float32_pool_bound` of the exact P
(float64 here); their signs can differ only where one of them differs from sign(P), i.e. where |P| <= B.
channel_mean: both sum the guidance in float64 and round once to float32, so each is within u|m| + N 2^-53 mean|a|
of the exact mean m (u = 2^-24, N positions); the two within twice that.
"""

from pathlib import Path

import numpy as np
import pytest

import crosslayer
from crosslayer import reference
from crosslayer.encoder import CrossLayerEncoder, NotFittedError
from crosslayer.errors import UsageError
from crosslayer.images import ImageError
from crosslayer.onnx_encoder import (BITS, CHANNEL_MEAN, CUSTOM_DOMAIN, EMBEDDING, build_encoder_model,
                                     export_encoder_onnx, model_metadata)

from _images import write_block_images

# ../shared/data beside the repository (a worktree sits one level deeper); without it only generated images are used
_REPOSITORY = Path(__file__).resolve().parents[1]
DATA = next((folder for folder in (_REPOSITORY.parent / "shared" / "data", _REPOSITORY.parents[1] / "shared" / "data")
             if folder.is_dir()), _REPOSITORY.parent / "shared" / "data")
SIDE = 96


def _real_images(tmp_path):
    """A few real photos of each set (colour birds, grey scenes, phone photos) and two generated ones."""
    paths = []
    for folder, count in (("cub100/images", 3), ("scene15/images", 2), ("smvs", 2)):
        found = sorted((DATA / folder).rglob("*.jpg"))[:count] if (DATA / folder).is_dir() else []
        paths.extend(found)
    return paths + write_block_images(tmp_path / "generated", 2, side=72)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, backbone_cache):
    tmp_path = tmp_path_factory.mktemp("onnx-encoder")
    paths = _real_images(tmp_path)
    # pca_dim 70: two words per plane, the last one with 58 padding bits. (The fit sees 9 images x 9 positions = 81
    # rows of 320 channels: components past that rank are rounding noise, whose P is within the bound of zero.)
    encoder = CrossLayerEncoder(side=SIDE, pca_dim=70, batch_size=4, threads=2).fit(paths)
    return encoder, paths, tmp_path


def _session(path, library=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_against_encoder(encoder, paths, bits, channel_mean):
    codes = encoder.encode(paths)
    assert bits.dtype == np.uint64 and bits.shape == codes.expanded().bits.shape  # the graph emits the 2-plane layout
    assert channel_mean.dtype == np.float32 and channel_mean.shape == codes.channel_mean.shape
    local, guidance = [], []
    for batch in encoder.activations(paths):
        local.append(batch.outputs[encoder.layers[0]])
        guidance.append(batch.outputs[encoder.layers[1]])
    local, guidance = np.concatenate(local), np.concatenate(guidance)
    exact = reference.cross_layer_pool(local, guidance, encoder.pca_)
    bound = reference.float32_pool_bound(local, guidance, encoder.pca_)
    graph_signs = reference.unpack_ternary(bits, encoder.Dt)
    differ = graph_signs != codes.signs()
    assert not np.any(differ & (np.abs(exact) > bound)), "a sign differs where |P| exceeds the float32 bound"
    assert differ.mean() < 1e-3
    assert reference.sign_violations(graph_signs, exact, bound) == 0
    # the layout's rules (zero padding, negative within nonzero): Codes checks them
    crosslayer.Codes(bits, channel_mean, encoder.Dt)
    positions = guidance.shape[2] * guidance.shape[3]
    exact_mean = reference.channel_mean(guidance)
    mean_abs = np.abs(guidance.astype(np.float64)).reshape(*guidance.shape[:2], -1).mean(axis=2)
    tolerance = 2 * (2.0**-24 * np.abs(exact_mean) + positions * 2.0**-53 * mean_abs)
    assert np.all(np.abs(channel_mean.astype(np.float64) - codes.channel_mean) <= tolerance)


def wide_int_reduce_sums(model) -> list[str]:
    """Names of ReduceSum nodes over int64/uint64 (inexact, or missing, in onnxruntime)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    wide = (onnx.TensorProto.INT64, onnx.TensorProto.UINT64)
    return [node.name for node in model.graph.node if node.op_type == "ReduceSum" and types.get(node.input[0]) in wide]


def test_standard_graph_gives_the_encoders_codes(fitted):
    encoder, paths, tmp_path = fitted
    out = export_encoder_onnx(encoder, tmp_path / "standard.onnx", ops="standard", embedding=True)
    pixels = encoder.load_pixels(paths)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(paths), SIDE, SIDE, 3)
    session = _session(out)
    assert [o.name for o in session.get_outputs()] == [BITS, CHANNEL_MEAN, EMBEDDING]
    bits, channel_mean, embedding = session.run(None, {"images": pixels})
    _check_against_encoder(encoder, paths, bits, channel_mean)
    # the same backbone input, bit for bit: the graph's normalisation is the encoder's
    expected_embedding = np.concatenate([b.outputs[EMBEDDING] for b in encoder.activations(paths)])
    np.testing.assert_array_equal(embedding, expected_embedding)


def test_standard_graph_uses_standard_ops_and_no_wide_int_reduce_sum(fitted):
    import onnx

    encoder = fitted[0]
    model = build_encoder_model(encoder, ops="standard")
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert wide_int_reduce_sums(model) == []
    assert [o.name for o in model.graph.output] == [BITS, CHANNEL_MEAN]
    onnx.checker.check_model(model)


def test_wide_int_reduce_sum_check_catches_one():
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceSum", ["x"], ["y"], name="sum_words", keepdims=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert wide_int_reduce_sums(model) == ["sum_words"]
    del onnx


def test_metadata_names_the_encoder(fitted):
    encoder, _, tmp_path = fitted
    out = export_encoder_onnx(encoder, tmp_path / "meta.onnx")
    meta = model_metadata(out)
    assert meta["backbone"] == "mobilenet_v2" and meta["layers"] == '["features.17", "features.18"]'
    assert meta["side"] == str(SIDE) and meta["policy"] == "square" and meta["pca_dim"] == "70"
    assert meta["weights_id"] == encoder.weights_id and meta["crosslayer_version"] == crosslayer.__version__
    assert meta["ops"] == "standard" and (meta["Dk"], meta["Dt"]) == (str(encoder.Dk), "70")
    assert meta["identity_digest"] == encoder.identity_digest
    assert meta["pca_sha256"] == encoder.identity["pca_sha256"]
    assert (meta["precision"], meta["draft"]) == ("fp32", "false")


def test_graph_codes_stamped_with_the_metadata_join_the_encoders_index(fitted):
    """Codes from the graph, stamped with the model's identity_digest, mix with encode's codes in an index, and
    are refused by an index of another encoder."""
    from crosslayer.codes import IdentityMismatchError
    from crosslayer.index import CodeIndex

    encoder, paths, tmp_path = fitted
    out = export_encoder_onnx(encoder, tmp_path / "stamped.onnx")
    meta = model_metadata(out)
    bits, channel_mean = _session(out).run(None, {"images": encoder.load_pixels(paths[:3])})
    from_graph = crosslayer.Codes(bits, channel_mean, int(meta["Dt"]), identity=meta["identity_digest"])
    index = CodeIndex.create(tmp_path / "stamped-index", encoder.Dk, encoder.Dt)
    index.append(encoder.encode(paths[3:5]))
    assert list(index.append(from_graph)) == [2, 3, 4] and index.identity == encoder.identity_digest
    index.close()
    other = CodeIndex.create(tmp_path / "other-index", encoder.Dk, encoder.Dt, identity="0123456789abcdef")
    with pytest.raises(IdentityMismatchError):
        other.append(from_graph)
    other.close()


def test_damaged_or_foreign_model_is_refused(fitted, tmp_path):
    import onnx

    from crosslayer.errors import FormatError

    out = export_encoder_onnx(fitted[0], tmp_path / "good.onnx")
    model = onnx.load(str(out))
    weights = next(init for init in model.graph.initializer if "pca_projection" in init.name)
    raw = bytearray(weights.raw_data)
    raw[0] ^= 1
    weights.raw_data = bytes(raw)
    onnx.save(model, str(tmp_path / "edited.onnx"))
    with pytest.raises(FormatError, match="checksum mismatch"):
        model_metadata(tmp_path / "edited.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(FormatError, match="junk.onnx"):
        model_metadata(tmp_path / "junk.onnx")
    with pytest.raises(FormatError, match="not an exported crosslayer encoder"):
        model_metadata(fitted[0]._backbone().model_path)


def test_export_from_an_encoder_file(fitted):
    encoder, paths, tmp_path = fitted
    encoder.save(tmp_path / "enc.xle")
    out = export_encoder_onnx(tmp_path / "enc.xle", tmp_path / "from-file.onnx")
    bits, _ = _session(out).run(None, {"images": encoder.load_pixels(paths[:2])})
    direct, _ = _session(export_encoder_onnx(encoder, tmp_path / "direct.onnx")).run(
        None, {"images": encoder.load_pixels(paths[:2])})
    np.testing.assert_array_equal(bits, direct)


def test_bad_arguments_are_named(fitted, tmp_path):
    encoder = fitted[0]
    with pytest.raises(UsageError, match="ops: expected one of"):
        export_encoder_onnx(encoder, tmp_path / "x.onnx", ops="fast")
    with pytest.raises(UsageError, match="encoder_or_path: expected a fitted CrossLayerEncoder"):
        export_encoder_onnx(42, tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="embedding: expected a bool"):
        export_encoder_onnx(encoder, tmp_path / "x.onnx", embedding="yes")
    with pytest.raises(NotFittedError):
        export_encoder_onnx(CrossLayerEncoder(side=SIDE), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_load_pixels_is_the_encoders_resize(fitted, tmp_path):
    encoder, paths, _ = fitted
    pixels = encoder.load_pixels([paths[0], np.zeros((50, 80, 3), np.uint8)])
    assert pixels.shape == (2, SIDE, SIDE, 3) and pixels.dtype == np.uint8
    from crosslayer.images import normalize

    np.testing.assert_array_equal(normalize(pixels[0], encoder.spec.mean, encoder.spec.std), encoder._prepare(paths[0]))
    assert encoder.load_pixels([]).shape == (0, SIDE, SIDE, 3)
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="bad.jpg"):
        encoder.load_pixels([tmp_path / "bad.jpg"])


def test_custom_graph_is_one_pool_codes_node(fitted):
    model = build_encoder_model(fitted[0], ops="custom")
    custom = [node for node in model.graph.node if node.domain == CUSTOM_DOMAIN]
    assert [node.op_type for node in custom] == ["PoolCodes"]
    assert list(custom[0].output) == [BITS, CHANNEL_MEAN]
    assert any(o.domain == CUSTOM_DOMAIN and o.version == 1 for o in model.opset_import)
    assert not [node for node in model.graph.node if node.op_type in ("MatMul", "BitShift") and "crosslayer" in node.name]


def _ort_ops_library():
    from _cpp_runner import ort_ops_library

    return ort_ops_library()


def test_custom_graph_gives_the_encoders_codes(fitted):
    library = _ort_ops_library()
    encoder, paths, tmp_path = fitted
    out = export_encoder_onnx(encoder, tmp_path / "custom.onnx", ops="custom")
    bits, channel_mean = _session(out, library).run(None, {"images": encoder.load_pixels(paths)})
    _check_against_encoder(encoder, paths, bits, channel_mean)


def test_custom_graph_runs_from_cpp_without_python(fitted, tmp_path_factory):
    """examples/cpp/run_encoder (onnxruntime's C API; the process holds no Python) on the exported custom-op encoder
    and real images: the encoder's codes, within the same bounds as in Python."""
    library = _ort_ops_library()
    from _cpp_runner import build_cpp_runner, run_cpp

    runner = build_cpp_runner(tmp_path_factory)
    encoder, paths, tmp_path = fitted
    model = export_encoder_onnx(encoder, tmp_path / "custom-cpp.onnx", ops="custom")
    folder = tmp_path_factory.mktemp("cpp-encoder")
    pixels = encoder.load_pixels(paths)
    result = run_cpp(runner, model, library, {"images": pixels}, folder, types={"images": "uint8"})
    assert result.returncode == 0, result.stderr
    n, dk, words = len(paths), encoder.Dk, (encoder.Dt + 63) // 64
    assert result.stdout.splitlines() == [f"bits uint64 {n}x{dk}x2x{words}", f"channel_mean float32 {n}x{dk}"]
    bits = np.fromfile(folder / "bits.bin", "<u8").reshape(n, dk, 2, words)
    channel_mean = np.fromfile(folder / "channel_mean.bin", "<f4").reshape(n, dk)
    _check_against_encoder(encoder, paths, bits, channel_mean)


@pytest.fixture(scope="module")
def int8_encoder(tmp_path_factory, backbone_cache):
    import warnings

    paths = write_block_images(tmp_path_factory.mktemp("int8-images"), 4, side=72)
    with warnings.catch_warnings():  # few fit images for the PCA: expected here, the codes are compared not judged
        warnings.simplefilter("ignore", UserWarning)
        encoder = CrossLayerEncoder(weights="random", side=64, precision="int8", pca_dim=8, batch_size=4,
                                    threads=2).fit(paths)
    return encoder, paths


@pytest.mark.parametrize("ops", ["standard", "custom"])
def test_int8_encoder_exports_the_model_it_runs(int8_encoder, tmp_path, ops):
    """The graph's backbone is the int8 model (held in memory, no file): the codes match `encode`'s."""
    encoder, paths = int8_encoder
    library = _ort_ops_library() if ops == "custom" else None
    out = export_encoder_onnx(encoder, tmp_path / f"int8-{ops}.onnx", ops=ops)
    meta = model_metadata(out)
    assert (meta["ops"], meta["precision"], meta["identity_digest"]) == (ops, "int8", encoder.identity_digest)
    bits, channel_mean = _session(out, library).run(None, {"images": encoder.load_pixels(paths)})
    _check_against_encoder(encoder, paths, bits, channel_mean)


def test_draft_encoder_graph_sees_the_pixels_encode_sees(fitted, tmp_path):
    """A draft encoder decodes large JPEGs at a reduced scale: load_pixels must too, or the graph's codes drift."""
    from PIL import Image

    from crosslayer.images import normalize

    encoder, paths, _ = fitted
    draft = CrossLayerEncoder(side=SIDE, pca_dim=16, batch_size=4, threads=2, draft=True).fit(paths)
    rng = np.random.default_rng(3)
    large = tmp_path / "large.jpg"  # over twice the side: decoded at 1/2 or 1/4 scale in draft mode
    pixels = np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((5 * SIDE // 8, 5 * SIDE // 8, 1),
                                                                              np.uint8))
    Image.fromarray(pixels + rng.integers(0, 30, pixels.shape, dtype=np.uint8)).save(large, quality=90)
    loaded = draft.load_pixels([large])
    np.testing.assert_array_equal(normalize(loaded[0], draft.spec.mean, draft.spec.std), draft._prepare(large))
    # and it is a draft decode: the full decode resized gives other pixels
    assert not np.array_equal(loaded, encoder.load_pixels([large]))
    bits, channel_mean = _session(export_encoder_onnx(draft, tmp_path / "draft.onnx")).run(None, {"images": loaded})
    _check_against_encoder(draft, [large], bits, channel_mean)


@pytest.mark.parametrize("ops", ["standard", "custom"])
def test_empty_batch_gives_empty_outputs(fitted, ops):
    """No images in, no codes out, with the trailing shapes of encode([])."""
    encoder, _, tmp_path = fitted
    library = _ort_ops_library() if ops == "custom" else None
    out = export_encoder_onnx(encoder, tmp_path / f"empty-{ops}.onnx", ops=ops)
    pixels = encoder.load_pixels([])
    assert pixels.shape == (0, SIDE, SIDE, 3)
    bits, channel_mean = _session(out, library).run(None, {"images": pixels})
    empty = encoder.encode([])
    assert bits.dtype == np.uint64 and bits.shape == empty.expanded().bits.shape == (0, encoder.Dk, 2, 2)
    assert channel_mean.dtype == np.float32 and channel_mean.shape == empty.channel_mean.shape == (0, encoder.Dk)


def test_standard_graph_runs_from_cpp_with_no_ops_library(fitted, tmp_path_factory):
    """run_encoder with an empty OPS_LIBRARY ("") registers no custom ops: a standard-ops model runs as it is."""
    from _cpp_runner import build_cpp_runner, run_cpp

    runner = build_cpp_runner(tmp_path_factory)
    encoder, paths, tmp_path = fitted
    model = export_encoder_onnx(encoder, tmp_path / "standard-cpp.onnx", ops="standard")
    folder = tmp_path_factory.mktemp("cpp-standard")
    result = run_cpp(runner, model, "", {"images": encoder.load_pixels(paths[:3])}, folder, types={"images": "uint8"})
    assert result.returncode == 0, result.stderr
    words = (encoder.Dt + 63) // 64
    assert result.stdout.splitlines() == [f"bits uint64 3x{encoder.Dk}x2x{words}", f"channel_mean float32 3x{encoder.Dk}"]
    bits = np.fromfile(folder / "bits.bin", "<u8").reshape(3, encoder.Dk, 2, words)
    channel_mean = np.fromfile(folder / "channel_mean.bin", "<f4").reshape(3, encoder.Dk)
    _check_against_encoder(encoder, paths[:3], bits, channel_mean)
