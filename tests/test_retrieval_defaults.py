"""The retrieval defaults (issue 16, benchmarks/results/code_size.md): `index build` / `extract` encode MobileNetV2
with the retrieval pair and pca_dim when --layers / --pca-dim are not given, while `CrossLayerEncoder()` and the
classification eval keep the paper's pair; an index built with the old defaults still resumes, opens and searches."""

import json

import pytest

from _cli import ok, run_cli
from _images import write_block_images
from crosslayer.commands import build_parser
from crosslayer.commands.options import encoder_config
from crosslayer.config import ENCODER_DEFAULTS, RETRIEVAL_DEFAULTS

SIDE = 64
TINY = ["--weights", "random", "--side", SIDE, "--fit-images", "6", "--batch-size", "4", "--threads", "1"]


def _config(*arguments):
    return encoder_config(build_parser().parse_args(["index", "build", "db", "--images", "x", *arguments]))


def test_the_retrieval_defaults_are_the_measured_choice():
    chosen = RETRIEVAL_DEFAULTS["mobilenet_v2"]
    assert (chosen.layers, chosen.pca_dim, chosen.channels) == (("features.16", "features.17"), 128, None)
    # the encoder itself (and the classification eval) keep the paper's pair and full rotation
    assert ENCODER_DEFAULTS.layers is None and ENCODER_DEFAULTS.pca_dim is None


@pytest.mark.parametrize("arguments, layers, pca_dim", [
    ([], ("features.16", "features.17"), 128),
    (["--pca-dim", "64"], ("features.16", "features.17"), 64),
    (["--pca-dim", "full"], ("features.16", "features.17"), None),
    # another pair keeps the encoder's pca_dim: a pca_dim is measured for one pair
    (["--layers", "features.17", "features.18"], ("features.17", "features.18"), None),
    (["--layers", "features.17,features.18", "--pca-dim", "128"], ("features.17", "features.18"), 128),
    (["--layers", "features.16", "features.17"], ("features.16", "features.17"), 128),
    # a backbone without retrieval defaults: its own pair, full rotation
    (["--backbone", "vgg16", "--side", "224"], None, None),
])
def test_index_build_options_resolve_to_the_retrieval_defaults(arguments, layers, pca_dim):
    config = _config(*arguments)
    assert (config.layers, config.pca_dim) == (layers, pca_dim)
    extract = encoder_config(build_parser().parse_args(["extract", "photos", "db", *arguments]))
    assert (extract.layers, extract.pca_dim) == (layers, pca_dim)


def test_eval_retrieve_keeps_the_encoder_defaults():
    args = build_parser().parse_args(["eval", "retrieve", "--data", "d"])
    assert args.layers is None and args.pca_dim is None


@pytest.fixture(scope="module")
def photos(tmp_path_factory, backbone_cache):
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("photos")
    return root, write_block_images(root / "db", 6, side=SIDE)


def _encoder_of(db):
    return json.loads(ok(run_cli("info", db)).stdout)["encoder"]


def test_index_build_encodes_with_the_retrieval_defaults(photos, tmp_path):
    root, images = photos
    db = tmp_path / "new"
    ok(run_cli("index", "build", db, "--images", root / "db", *TINY))
    encoder = _encoder_of(db)
    assert encoder["layers"] == ["features.16", "features.17"] and encoder["Dt"] == 128 and encoder["Dk"] == 320
    done = ok(run_cli("search", db, images[2], "--top", "2", "--threads", "1", "--json"))
    assert json.loads(done.stdout)["channels"] is None  # all channels: the retrieval default
    hits = json.loads(done.stdout)["queries"][0]["hits"]
    assert hits[0]["path"] == str(images[2].resolve())


def test_an_index_built_with_the_old_defaults_resumes_opens_and_searches(photos, tmp_path):
    root, images = photos
    db = tmp_path / "old"
    ok(run_cli("index", "build", db, "--images", *images[:4], "--layers", "features.17", "features.18",
               "--pca-dim", "full", *TINY))
    # resumed with no layer options: the index's own settings, not the new defaults (which would be refused)
    done = ok(run_cli("index", "build", db, "--images", root / "db", *TINY))
    assert "indexed 2 images (4 already there" in done.stdout
    encoder = _encoder_of(db)
    assert encoder["layers"] == ["features.17", "features.18"] and encoder["Dt"] == 320 and encoder["Dk"] == 1280
    done = ok(run_cli("search", db, images[1], "--top", "2", "--threads", "1", "--json"))
    found = json.loads(done.stdout)
    # the old pair keeps the old channel count (50 of its 1280)
    assert found["channels"] == 50 and found["queries"][0]["hits"][0]["path"] == str(images[1].resolve())
