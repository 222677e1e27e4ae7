"""End to end on a tiny synthetic image set with an untrained (seeded) backbone: `crosslayer eval classify` writes a
record, reuses its caches on a second run, and ablation flags reach the computation."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from _tolerances import assert_normalized_within, max_pool_float32_bound  # noqa: E402

from crosslayer.commands import main  # noqa: E402
from crosslayer.eval import classify, read_record  # noqa: E402
from _images import write_two_colour_set  # noqa: E402


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return write_two_colour_set(tmp_path_factory.mktemp("tiny"))


def test_cli_classify_writes_a_record_and_reuses_the_cache(tiny_set, tmp_path, capsys):
    out = tmp_path / "record.json"
    argv = ["eval", "classify", "--data", str(tiny_set), "--method", "crosslayer", "--side", "64", "--weights", "random",
            "--cache", str(tmp_path / "cache"), "--json", str(out), "--quiet", "--folds", "2", "--fit-images", "4"]
    assert main(argv) == 0
    record = read_record(out)
    assert record["n_train"] == 8 and record["n_test"] == 4 and record["classes"] == 2
    assert 0.0 <= record["accuracy"] <= 1.0 and record["dims"] == 320 * 1280
    assert record["seconds"]["gram_cached"] is False
    assert json.loads(capsys.readouterr().out)["label"] == "crosslayer"
    assert main(argv) == 0
    assert read_record(out)["seconds"]["gram_cached"] is True


def test_ablation_without_l2_and_power_differs_and_sign_codes_run(tiny_set, tmp_path):
    common = dict(side=64, weights="random", cache_dir=tmp_path / "cache", progress=False, folds=2, fit_images=4,
                  layers=("features.16", "features.17"))
    default = classify(tiny_set, "crosslayer", **common)
    ablated = classify(tiny_set, "crosslayer", l2=False, power=False, **common)
    assert default["kernel_scale"] != pytest.approx(ablated["kernel_scale"])
    sign = classify(tiny_set, "crosslayer-sign", **common)
    assert sign["bytes_per_image"] == 320 * 2 * 3 * 8 and sign["dims"] == 160 * 320


# ---- the other methods end to end, each checked against a computation written here ---------------------------------

FIT = dict(fit_images=4, seed=0)
COMMON = dict(side=64, weights="random", progress=False, folds=2, **FIT)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the method tests below, so each backbone export is made once."""
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def scaled_weights(tmp_path_factory):
    """Untrained MobileNetV2 weights with He (fan-in) initialisation: torch's default initialisation shrinks
    activations to ~1e-8 by the last layer, below the float16 resolution of the stored region rows."""
    import torch

    from crosslayer.backbones.architectures import build

    torch.manual_seed(0)
    net = build("mobilenet_v2")
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in")
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2-scaled.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def _rows_and_directory(tiny_set, cache, config, weights="random"):
    """The stored rows of a complete store (extract finds it complete and does nothing) and its pass folder."""
    from crosslayer.eval.extract import extract, pass_directory
    from crosslayer.eval.manifest import load_manifest

    dataset = load_manifest(tiny_set)
    store = extract(dataset, [config], "mobilenet_v2", 64, cache, weights, progress=False, **FIT)[config]
    assert store.complete
    assert store.n == len(dataset) == 14  # val images are extracted too (one row per manifest image), SVM ignores them
    return dataset, store.read(), pass_directory(cache, dataset, "mobilenet_v2", 64, weights)


def _network(cache, taps, with_embedding=True, weights="random"):
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone

    return OnnxBackbone(export("mobilenet_v2", taps, weights, with_embedding=with_embedding, cache=cache / "onnx"),
                        intra_op_threads=1)


def _sane(record, dims):
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["mean_per_class_accuracy"] <= 1.0
    assert record["dims"] == dims and record["n_train"] == 8 and record["n_test"] == 4
    assert len(record["test_predictions"]) == 4


def test_crosslayer_max_rows_are_the_max_pooling_reference(tiny_set, shared_cache, scaled_weights):
    from crosslayer import reference
    from crosslayer.backbones import get_backbone
    from crosslayer.eval.extract import pca_path, read_pca
    from crosslayer.eval.methods import MethodConfig
    from crosslayer.images import prepare

    record = classify(tiny_set, "crosslayer-max", cache_dir=shared_cache, **dict(COMMON, weights=scaled_weights))
    _sane(record, 1280 * 320)
    assert record["layers"] == ["features.17", "features.18"]
    config = MethodConfig("crosslayer-max", **FIT)
    dataset, rows, directory = _rows_and_directory(tiny_set, shared_cache, config, scaled_weights)
    spec = get_backbone("mobilenet_v2")
    image = prepare(dataset.paths[5], 64, "square", spec.mean, spec.std)[None]
    outputs = _network(shared_cache, ["features.17", "features.18"], weights=scaled_weights).run(image)
    pca = read_pca(pca_path(directory, "features.17", **FIT), **FIT)
    pooled = reference.cross_layer_max_pool(outputs["features.17"], outputs["features.18"], pca)
    bound = max_pool_float32_bound(outputs["features.17"], outputs["features.18"], pca)
    # rows are float16: the stored square root is rounded by 2^-11 relative, its square by 2^-10 = 2^14 u (first
    # order; float16 subnormals err by less than the float32 bound there); the float32 norm and division (Dt + 2) u
    dt = pca[1].shape[1]
    assert_normalized_within(rows[5].astype(np.float64).reshape(1, -1, dt), pooled, bound, 2**14 + dt + 4)


def test_jitter_row_is_the_mean_embedding_of_ten_crops(tiny_set, shared_cache, scaled_weights):
    from crosslayer.backbones import get_backbone
    from crosslayer.eval.methods import MethodConfig
    from crosslayer.images import load_image, normalize, resize

    record = classify(tiny_set, "jitter", cache_dir=shared_cache, **dict(COMMON, weights=scaled_weights))
    _sane(record, 1280)
    dataset, rows, _ = _rows_and_directory(tiny_set, shared_cache, MethodConfig("jitter", **FIT), scaled_weights)
    spec = get_backbone("mobilenet_v2")
    # each crop reaches the network at its side (64), as 224 crops of a 256 image do: the image is enlarged to
    # 64 / 0.875 = 73 first (crops of 56 of a 64 image were fed at 56 before)
    image = resize(load_image(dataset.paths[2]), 73, "square")
    crop = 64
    windows = [image[top : top + crop, left : left + crop] for top, left in ((0, 0), (0, 9), (9, 0), (9, 9), (4, 4))]
    crops = windows + [window[:, ::-1] for window in windows]  # and their mirror images
    batch = np.stack([normalize(np.ascontiguousarray(c), spec.mean, spec.std) for c in crops])
    mean = _network(shared_cache, ["features.18"], weights=scaled_weights).run(batch)["embedding"].mean(axis=0)
    np.testing.assert_allclose(rows[2], mean / np.linalg.norm(mean), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["aconv", "aconv-fast"])
def test_aconv_regions_are_the_embeddings_of_the_crops_and_guidance_trains(tiny_set, shared_cache, scaled_weights,
                                                                             method):
    from PIL import Image

    from crosslayer.backbones import get_backbone
    from crosslayer.eval.extract import pca_path, read_pca
    from crosslayer.eval.methods import MethodConfig
    from crosslayer.images import load_image, normalize, resize

    aconv = dict(aconv_side=64, aconv_region=32, aconv_stride=32, aconv_region_side=64, aconv_pca_dim=8,
                 aconv_filters=4, aconv_epochs=2)
    record = classify(tiny_set, method, cache_dir=shared_cache, **dict(COMMON, weights=scaled_weights), **aconv)
    _sane(record, 4 * 8)  # filters x PCA dimensions
    assert len(record["losses_first_last"]) == 2 and record["seconds"]["aconv_train"] > 0
    config = MethodConfig(method, **aconv, **FIT)
    dataset, rows, directory = _rows_and_directory(tiny_set, shared_cache, config, scaled_weights)
    assert rows.shape == (len(dataset), 4, 8)  # 2x2 regions of 32 px in a 64 px image
    spec = get_backbone("mobilenet_v2")
    image = resize(load_image(dataset.paths[7]), 64, "square")
    corners = ((0, 0), (0, 32), (32, 0), (32, 32))  # row-major
    if method == "aconv":  # every region cropped, resized to the network side, embedded
        crops = [np.asarray(Image.fromarray(image[t : t + 32, l : l + 32]).resize((64, 64), Image.BILINEAR))
                 for t, l in corners]
        batch = np.stack([normalize(c, spec.mean, spec.std) for c in crops])
        embeddings = _network(shared_cache, ["features.18"], weights=scaled_weights).run(batch)["embedding"]
    else:  # one pass; at stride 32 a 32 px region is one cell of the 2x2 last map
        network = _network(shared_cache, ["features.18"], with_embedding=False, weights=scaled_weights)
        maps = network.run(normalize(image, spec.mean, spec.std)[None])
        embeddings = maps["features.18"][0].reshape(1280, 4).T
    mean, projection = read_pca(pca_path(directory, config.key(), **FIT), **FIT)
    want = (embeddings - mean) @ projection
    # rows are float16: one rounding of what `want` computes in float32 (whose own errors are far below a float16 ulp)
    assert np.all(np.abs(rows[7].astype(np.float64) - want) <= np.spacing(np.abs(want).astype(np.float16)))


# ---- arguments are checked before any work ---------------------------------------------------------------------

@pytest.mark.parametrize("method,options,name", [
    ("aconv-fast", dict(aconv_stride=0), "aconv_stride"),
    ("aconv", dict(aconv_epochs=-1), "aconv_epochs"),
    ("aconv-fast", dict(aconv_pca_dim=1281), "aconv_pca_dim"),
    ("crosslayer", dict(folds=1), "folds"),
    ("crosslayer", dict(c_grid=(1.0, -1.0)), "c_grid"),
    ("crosslayer", dict(fit_images=0), "fit_images"),
])
def test_bad_options_fail_before_extraction(tiny_set, tmp_path, method, options, name):
    arguments = {**COMMON, **options}
    with pytest.raises(ValueError, match=name):
        classify(tiny_set, method, cache_dir=tmp_path / "cache", **arguments)
    assert not (tmp_path / "cache").exists()


def test_cli_reports_a_bad_aconv_stride_in_one_line(tiny_set, tmp_path, capsys):
    argv = ["eval", "classify", "--data", str(tiny_set), "--method", "aconv-fast", "--aconv-stride", "0",
            "--weights", "random", "--cache", str(tmp_path / "cache"), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "aconv_stride" in capsys.readouterr().err and not (tmp_path / "cache").exists()


def test_cli_layers_take_two_names_or_the_comma_form_and_backbones_are_choices():
    from crosslayer.commands import build_parser
    from crosslayer.errors import UsageError

    parser = build_parser()
    base = ["eval", "classify", "--data", "d", "--method", "crosslayer"]
    assert parser.parse_args(base + ["--layers", "features.16", "features.17"]).layers == ("features.16", "features.17")
    assert parser.parse_args(base + ["--layers", "features.16,features.17"]).layers == ("features.16", "features.17")
    assert parser.parse_args(base + ["--backbone", "vgg16"]).backbone == "vgg16"
    for bad in (["--layers", "features.16"], ["--layers", "a", "b", "c"], ["--backbone", "resnet50"]):
        with pytest.raises(UsageError):
            parser.parse_args(base + bad)


def test_fit_images_and_seed_are_keyed_and_recorded(tiny_set, tmp_path):
    common = dict(COMMON, cache_dir=tmp_path / "cache", layers=("features.16", "features.17"))
    first = classify(tiny_set, "crosslayer", **common)
    assert (first["fit_images"], first["seed"]) == (4, 0)
    assert (first["config"]["fit_images"], first["config"]["seed"]) == (4, 0)
    other = classify(tiny_set, "crosslayer", **dict(common, fit_images=6))
    assert other["fit_images"] == 6 and other["seconds"]["gram_cached"] is False  # a new store, not the first one
    assert other["kernel_scale"] != pytest.approx(first["kernel_scale"])
    reseeded = classify(tiny_set, "crosslayer", **dict(common, seed=1))
    assert reseeded["seed"] == 1 and reseeded["seconds"]["gram_cached"] is False
    assert classify(tiny_set, "crosslayer", **common)["seconds"]["gram_cached"] is True


def test_cli_classify_with_its_progress_bars_on(tiny_set, tmp_path, capsys):
    """The command as a user types it (no --quiet): the Gram's progress bar once crashed it (bool() of a tqdm)."""
    argv = ["eval", "classify", "--data", str(tiny_set), "--method", "crosslayer", "--side", "64", "--weights",
            "random", "--cache", str(tmp_path / "cache"), "--folds", "2", "--fit-images", "4"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "fit PCA" in captured.err and "Gram crosslayer" in captured.err
    assert json.loads(captured.out[captured.out.index("{"):])["label"] == "crosslayer"
