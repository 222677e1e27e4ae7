"""precision "bf16": the fp32 export run by OpenVINO with bfloat16 convolutions (crosslayer.backbones.runtime), an
encoder that may share an fp32 encoder's PCA (`with_precision`), codes never mixed with fp32 codes; and the clear
error when OpenVINO is missing (that test runs without it)."""

import json
import sys

import numpy as np
import pytest

from _cli import ok, one_line_error, run_cli
from _images import write_block_images
from test_cli_commands import SIDE, TINY

from crosslayer.errors import CrossLayerError, UsageError
from crosslayer.pooling import finish_pooled

SETTINGS = dict(weights="random", side=SIDE, pca_dim=4, fit_images=6, batch_size=4, threads=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_block_images(tmp_path_factory.mktemp("bf16") / "photos", 6, side=SIDE)


@pytest.fixture(scope="module")
def fp32_encoder(photos, backbone_cache):
    from crosslayer.encoder import CrossLayerEncoder

    with pytest.warns(UserWarning, match="fit: 6 images"):  # the fit-set trap: these codes are compared, not searched
        return CrossLayerEncoder(**SETTINGS).fit([str(p) for p in photos])


def test_missing_openvino_is_a_clear_error_naming_the_extra(monkeypatch, backbone_cache):
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import MissingRuntimeError, backbone_runner

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    path = export("mobilenet_v2", weights="random", with_embedding=True)
    with pytest.raises(MissingRuntimeError, match=r"crosslayer\[openvino\]") as error:
        backbone_runner(path, "bf16", threads=1)
    assert isinstance(error.value, CrossLayerError)
    backbone_runner(path, "fp32", threads=1)  # fp32 never needs it
    with pytest.raises(UsageError, match="precision"):
        backbone_runner(path, "fp16", threads=1)


def test_openvino_runner_matches_onnxruntime_at_fp32_and_approximates_it_at_bf16(backbone_cache):
    pytest.importorskip("openvino")
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone, OpenVinoBackbone, backbone_runner

    path = export("mobilenet_v2", weights="random", with_embedding=True)
    images = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    want = OnnxBackbone(path, intra_op_threads=1).run(images)
    fp32 = OpenVinoBackbone(path, threads=1, precision="fp32").run(images)
    bf16_runner = backbone_runner(path.read_bytes(), "bf16", threads=1)  # bytes, as a worker receives the model
    assert isinstance(bf16_runner, OpenVinoBackbone) and bf16_runner.model_path == "<in memory>"
    bf16 = bf16_runner.run(images)
    assert set(fp32) == set(bf16) == set(want)
    for name in want:
        scale = np.abs(want[name]).max()
        assert fp32[name].shape == bf16[name].shape == want[name].shape
        np.testing.assert_allclose(fp32[name], want[name], atol=1e-4 * scale, err_msg=name)
        # bfloat16 keeps 8 bits of mantissa: close to fp32, but not equal to it
        error = np.abs(bf16[name] - want[name]).max() / scale
        assert 1e-5 < error < 0.1, (name, error)
    again = bf16_runner.run(images)  # the outputs are copies, not views of the request's reused buffers
    assert all(np.array_equal(again[name], bf16[name]) for name in bf16)
    with pytest.raises(UsageError, match="images"):
        bf16_runner.run(images[:, :2])
    with pytest.raises(UsageError, match="threads"):
        OpenVinoBackbone(path, threads=-1)
    with pytest.raises(UsageError, match="precision"):
        OpenVinoBackbone(path, precision="int8")


def test_bf16_encoder_shares_the_fp32_pca_and_never_mixes_codes_with_fp32(photos, fp32_encoder, tmp_path):
    pytest.importorskip("openvino")
    from crosslayer.encoder import CrossLayerEncoder, EncoderMismatchError, Pass

    sources = [str(p) for p in photos]
    bf16 = fp32_encoder.with_precision("bf16")
    assert bf16.precision == "bf16" and bf16.pca_ is fp32_encoder.pca_
    assert bf16.identity["precision"] == "bf16" and bf16.identity_digest != fp32_encoder.identity_digest
    want, codes = fp32_encoder.encode(sources), bf16.encode(sources)
    agreement = (codes.signs() == want.signs()).mean()
    assert 0.8 < agreement < 1.0, agreement  # the same PCA: comparable sign by sign, and not the fp32 computation
    assert codes.identity == bf16.identity_digest
    path = tmp_path / "bf16.xle"
    bf16.save(path)
    loaded = CrossLayerEncoder.load(path)
    assert loaded.precision == "bf16" and loaded.identity_digest == bf16.identity_digest
    assert np.array_equal(loaded.encode(sources).signs(), codes.signs())
    with pytest.raises(EncoderMismatchError, match="precision 'bf16' \\(requested 'fp32'\\)"):
        CrossLayerEncoder.load_for_resume(path, CrossLayerEncoder(**SETTINGS))
    # other taps run at bf16 too (no calibration ties bf16 to the layer pair)
    batch = next(iter(loaded.activations(sources[:2], pass_=Pass(taps=("features.18",), embedding=False))))
    assert list(batch.outputs) == ["features.18"]
    # a worker given the model bytes runs it at the encoder's precision
    worker = CrossLayerEncoder.load(path)
    worker.use_backbone_model(loaded.backbone_model())
    assert np.array_equal(worker.encode(sources).signs(), codes.signs())
    assert np.array_equal(bf16.with_precision("fp32").encode(sources).signs(), want.signs())


def test_with_precision_refuses_int8_and_unfitted_encoders(fp32_encoder):
    from crosslayer.encoder import CrossLayerEncoder, NotFittedError

    with pytest.raises(UsageError, match="with_precision converts between 'fp32' and 'bf16'"):
        fp32_encoder.with_precision("int8")
    with pytest.raises(NotFittedError):
        CrossLayerEncoder(**SETTINGS).with_precision("bf16")


def test_onnx_export_refuses_a_bf16_encoder(fp32_encoder):
    from crosslayer.onnx_encoder import build_encoder_model

    with pytest.raises(UsageError, match="bf16 runs on OpenVINO"):
        build_encoder_model(fp32_encoder.with_precision("bf16"))


def test_index_build_precision_bf16_on_the_command_line_refuses_fp32_on_resume(photos, backbone_cache, tmp_path):
    pytest.importorskip("openvino")
    db = tmp_path / "db"
    done = ok(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--precision", "bf16", "--quiet"))
    assert "indexed 6 images" in done.stdout
    one_line_error(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--quiet"),
                   "precision 'bf16' (requested 'fp32')")
    resumed = ok(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--precision", "bf16", "--quiet"))
    assert "6 already there" in resumed.stdout
    # query images are encoded like the indexed ones (pooled in OpenVINO's graph): each finds itself first
    found = json.loads(ok(run_cli("search", db, *map(str, photos), "--top", "1", "--channels", "all", "--json",
                                  "--threads", "1")).stdout)
    assert [query["hits"][0]["key"] for query in found["queries"]] == [photo.name for photo in photos]


def test_graph_pooling_computes_the_pooling_of_the_layers_it_replaces(fp32_encoder):
    """OpenVINO at fp32 with the pooling appended gives the kernel's P of its own maps (to float32 rounding); at bf16,
    close to it. The two layers' maps are no longer outputs."""
    pytest.importorskip("openvino")
    from crosslayer import reference
    from crosslayer.backbones.runtime import CHANNEL_MEAN, POOLED, GraphPooling, OpenVinoBackbone, backbone_runner

    model, (local, guidance) = fp32_encoder.backbone_model(), fp32_encoder.layers
    pooling = GraphPooling(local, guidance, *fp32_encoder.pca_)
    images = np.random.default_rng(2).standard_normal((3, 3, SIDE, SIDE)).astype(np.float32)
    maps = OpenVinoBackbone(model, threads=1, precision="fp32").run(images)
    want = reference.cross_layer_pool(maps[local], maps[guidance], fp32_encoder.pca_)
    for precision, tolerance in (("fp32", 1e-5), ("bf16", 0.05)):
        outputs = OpenVinoBackbone(model, threads=1, precision=precision, pooling=pooling).run(images)
        assert set(outputs) == {POOLED, CHANNEL_MEAN, "embedding"}
        assert outputs[POOLED].shape == want.shape and outputs[POOLED].dtype == np.float32
        error = np.abs(outputs[POOLED] - want).max() / np.abs(want).max()
        assert error < tolerance, (precision, error)
        np.testing.assert_allclose(outputs[CHANNEL_MEAN], reference.channel_mean(maps[guidance]),
                                   rtol=tolerance, atol=tolerance * np.abs(maps[guidance]).max())
    with pytest.raises(UsageError, match="pooling: the pooling runs in the graph at precision 'bf16' only"):
        backbone_runner(model, "fp32", threads=1, pooling=pooling)
    wrong = GraphPooling(local, guidance, np.zeros(3, np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(UsageError, match="the projection has 3 rows"):
        OpenVinoBackbone(model, threads=1, pooling=wrong)
    with pytest.raises(UsageError, match="the model has no output 'features.3'"):
        OpenVinoBackbone(model, threads=1, pooling=GraphPooling("features.3", guidance, *fp32_encoder.pca_))


def test_bf16_encode_pools_in_the_graph_like_the_kernel_on_the_same_activations(photos, fp32_encoder):
    pytest.importorskip("openvino")
    from crosslayer.codes import Codes

    sources = [str(p) for p in photos]
    bf16 = fp32_encoder.with_precision("bf16")
    graph = next(iter(bf16.activations(sources, for_pooling=True)))
    assert {"pooled", "channel_mean", "embedding"} <= set(graph.outputs)
    assert not set(fp32_encoder.layers) & set(graph.outputs)
    # compact codes packed by the kernel: bit for bit the 2-plane codes of the same P converted (lossy=True)
    two_plane = finish_pooled(graph.outputs["pooled"], graph.outputs["channel_mean"], "codes", num_threads=2)
    assert np.array_equal(bf16.pool_batch(graph.outputs, "codes").bits, two_plane.compact(lossy=True).bits)
    maps = list(bf16.activations(sources))  # the layers' bf16 maps, pooled by the fp32 kernel
    kernel = Codes.concatenate([bf16.pool_batch(batch.outputs, "codes") for batch in maps])
    codes = bf16.encode(sources)
    assert codes.identity == kernel.identity == bf16.identity_digest
    agreement = (codes.signs() == kernel.signs()).mean()
    assert 0.97 < agreement, agreement
    np.testing.assert_allclose(codes.channel_mean, kernel.channel_mean, rtol=1e-2, atol=1e-3)
    floats = bf16.transform(sources)
    kernel_floats = np.concatenate([bf16.pool_batch(batch.outputs, "float") for batch in maps])
    assert floats.shape == kernel_floats.shape
    # compared before the signed square root (which magnifies differences near zero): unit vectors per channel of
    # Dt 4, whose bfloat16 operands (8-bit mantissa) and cancelling centred values move them by a few hundredths
    assert np.abs(np.sign(floats) * floats**2 - np.sign(kernel_floats) * kernel_floats**2).max() < 0.05
    # fp32 never pools in the graph
    assert set(fp32_encoder.layers) <= set(next(iter(fp32_encoder.activations(sources, for_pooling=True))).outputs)
    # a new PCA (a new fit) makes a new graph
    runner = bf16._pooling_backbone()
    assert bf16._pooling_backbone() is runner
    bf16.pca_ = (bf16.pca_[0].copy(), bf16.pca_[1].copy())
    assert bf16._pooling_backbone() is not runner
    with pytest.raises(UsageError, match="for_pooling"):
        next(iter(bf16.activations(sources, for_pooling="yes")))


def test_openvino_streams_split_a_batch_and_compute_the_same(fp32_encoder):
    pytest.importorskip("openvino")
    from crosslayer.backbones.runtime import GraphPooling, OpenVinoBackbone, backbone_runner

    model = fp32_encoder.backbone_model()
    images = np.random.default_rng(3).standard_normal((5, 3, SIDE, SIDE)).astype(np.float32)
    pooling = GraphPooling(*fp32_encoder.layers, *fp32_encoder.pca_)
    for extra in ({}, {"pooling": pooling}):
        one = OpenVinoBackbone(model, threads=2, precision="fp32", streams=1, **extra)
        two = OpenVinoBackbone(model, threads=2, precision="fp32", streams=2, **extra)
        assert (one.streams, two.streams) == (1, 2)
        want, got = one.run(images), two.run(images)  # 5 images: one a request, over 1 or 2 streams
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4 * np.abs(want[name]).max())
        again = two.run(images[:1])  # fewer images than streams: one request
        np.testing.assert_allclose(again[two.output_names[0]], want[two.output_names[0]][:1], rtol=1e-4,
                                   atol=1e-4 * np.abs(want[two.output_names[0]]).max())
    assert OpenVinoBackbone(model, threads=1, streams=2).streams == 1  # at most one stream per thread
    with pytest.raises(UsageError, match="streams: expected an integer >= 1"):
        OpenVinoBackbone(model, threads=1, streams=0)
    with pytest.raises(UsageError, match="streams: OpenVINO's streams apply at precision 'bf16' only"):
        backbone_runner(model, "fp32", threads=1, streams=2)


def test_openvino_requests_of_any_size_fill_the_rows_in_order_and_finish_each_request(fp32_encoder, monkeypatch):
    pytest.importorskip("openvino")
    from crosslayer.backbones import runtime
    from crosslayer.backbones.runtime import OpenVinoBackbone

    model = fp32_encoder.backbone_model()
    images = np.random.default_rng(4).standard_normal((5, 3, SIDE, SIDE)).astype(np.float32)
    runner = OpenVinoBackbone(model, threads=2, precision="fp32", streams=2)
    monkeypatch.setattr(runtime, "IMAGES_PER_REQUEST", 5)
    whole = runner.run(images)  # the batch as one request
    for per_request in (1, 2, 3):  # requests of 2, 2, 1 and of 3, 2: rows must land in place
        monkeypatch.setattr(runtime, "IMAGES_PER_REQUEST", per_request)
        got = runner.run(images)
        assert list(got) == list(whole)
        for name in whole:
            np.testing.assert_allclose(got[name], whole[name], rtol=1e-4, atol=1e-4 * np.abs(whole[name]).max())
        sizes = []

        def finish(outputs):  # keeps one derived output per request, computed from its views
            sizes.append(len(outputs["embedding"]))
            return {"first": outputs["embedding"][:, :1] * 2}

        finished = runner.run(images, finish=finish)
        assert set(finished) == {"first"} and sorted(sizes) == sorted([min(per_request, 5 - i)
                                                                       for i in range(0, 5, per_request)])
        np.testing.assert_allclose(finished["first"], got["embedding"][:, :1] * 2, rtol=1e-6)
    empty = runner.run(images[:0], finish=finish)
    assert empty["first"].shape == (0, 1)
    assert {name: array.shape[1:] for name, array in runner.run(images[:0]).items()} == \
        {name: array.shape[1:] for name, array in whole.items()}

    monkeypatch.setattr(runtime, "IMAGES_PER_REQUEST", 1)
    first, second = runner.start(images), runner.start(images[::-1].copy())  # two runs in flight at once
    for name in whole:
        scale = 1e-4 * np.abs(whole[name]).max()
        np.testing.assert_allclose(second.result()[name], whole[name][::-1], rtol=1e-4, atol=scale)
        np.testing.assert_allclose(first.result()[name], whole[name], rtol=1e-4, atol=scale)

    def broken(outputs):
        raise ValueError("finish failed")

    with pytest.raises(ValueError, match="finish failed"):  # raised by run, not lost in OpenVINO's thread
        runner.run(images, finish=broken)
    np.testing.assert_allclose(runner.run(images)["embedding"], whole["embedding"], rtol=1e-4, atol=1e-4)  # still usable


def test_bf16_codes_finished_in_each_request_are_the_codes_of_the_graphs_pooled_values(photos, fp32_encoder):
    pytest.importorskip("openvino")
    from crosslayer.codes import Codes

    sources = [str(p) for p in photos]
    bf16 = fp32_encoder.with_precision("bf16")
    batches = list(bf16.activations(sources, for_pooling="codes"))
    assert all("code_bits" in b.outputs and "pooled" not in b.outputs for b in batches)
    finished = Codes.concatenate([bf16.pool_batch(b.outputs, "codes") for b in batches])
    pooled = Codes.concatenate([bf16.pool_batch(b.outputs, "codes") for b in bf16.activations(sources, for_pooling=True)])
    assert finished.layout == pooled.layout == "compact"
    np.testing.assert_array_equal(finished.bits, pooled.bits)
    np.testing.assert_array_equal(finished.channel_mean, pooled.channel_mean)
    np.testing.assert_array_equal(bf16.encode(sources).bits, finished.bits)
    with pytest.raises(UsageError, match="only 'codes' can come out of them"):
        bf16.pool_batch(batches[0].outputs, "float")
    # fp32 has no graph: "codes" yields the layers' maps, as True does
    assert set(fp32_encoder.layers) <= set(next(iter(fp32_encoder.activations(sources, for_pooling="codes"))).outputs)
