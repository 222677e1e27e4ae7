"""The paper's networks (VGG-16/19, AlexNet): their fully-connected taps fc6/fc7 (after ReLU) are exported like the
conv taps, and CNN-Global, CNN-Jitter and exact AConv read the fc layer the registry names for each method.

The classifiers are narrowed to 48 units (same structure) in the end-to-end tests so exports stay small and fast: a
full AlexNet fc export is 228 MB and takes ~14 s; the wiring is what is under test."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from crosslayer.backbones import get_backbone  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402
from _images import write_two_colour_set  # noqa: E402

WIDTH = 48  # narrowed fc6/fc7 width


def _narrow(net, flat):
    """Replaces the classifier by one of the same layout (torchvision indices) with WIDTH-unit fc6/fc7."""
    if isinstance(net.classifier[0], torch.nn.Dropout):  # AlexNet: Dropout Linear ReLU Dropout Linear ReLU Linear
        net.classifier = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(flat, WIDTH), torch.nn.ReLU(True),
                                             torch.nn.Dropout(), torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(True),
                                             torch.nn.Linear(WIDTH, 10))
    else:  # VGG: Linear ReLU Dropout Linear ReLU Dropout Linear
        net.classifier = torch.nn.Sequential(torch.nn.Linear(flat, WIDTH), torch.nn.ReLU(True), torch.nn.Dropout(),
                                             torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(True), torch.nn.Dropout(),
                                             torch.nn.Linear(WIDTH, 10))
    return net


@pytest.fixture
def narrow_networks(monkeypatch):
    """architectures.build makes narrowed VGG/AlexNet networks, and the registry says their fc taps have WIDTH
    channels; a network's fc biases are made positive so about half the ReLU outputs are non-zero."""
    import dataclasses

    from crosslayer.backbones import architectures, registry

    real_build = architectures.build

    def build(architecture):
        net = real_build(architecture)
        if architecture == "mobilenet_v2" or architecture == "efficientnet_lite0":
            return net
        flat = 256 * 36 if architecture == "alexnet" else 512 * 49
        return _narrow(net, flat)

    monkeypatch.setattr(architectures, "build", build)
    for name in ("alexnet", "vgg16"):
        spec = registry.BACKBONES[name]
        monkeypatch.setitem(registry.BACKBONES, name, dataclasses.replace(
            spec, channels={**spec.channels, "fc6": WIDTH, "fc7": WIDTH}))
    return build


def test_registry_names_the_fc_layer_of_each_method_on_the_paper_networks():
    for name in ("vgg16", "vgg19", "alexnet"):
        spec = get_backbone(name)
        assert set(spec.fc_taps) == {"fc6", "fc7"} and spec.channels["fc6"] == spec.channels["fc7"] == 4096
        assert (spec.output_for("global"), spec.output_for("jitter"), spec.output_for("aconv")) == ("fc7", "fc7", "fc6")
        assert spec.output_for("aconv-fast") == "embedding"  # windows of one conv map: no fc counterpart
        with pytest.raises(UsageError, match="fc6"):  # an fc tap is one vector per image, never a pooling pair
            spec.check_pair(("fc6", "fc7"))
    spec = get_backbone("mobilenet_v2")
    assert not spec.fc_taps and spec.output_for("global") == "embedding"


@pytest.mark.parametrize("name,side", [("alexnet", 96), ("vgg16", 64)])
def test_fc_taps_are_the_relu_outputs_of_the_torchvision_classifier(tmp_path, rng, narrow_networks, name, side):
    """fc6/fc7 against torchvision's forward written out here: features (with its final max-pool), adaptive average
    pool, flatten, then the classifier up to the ReLU after fc6 / fc7; on inputs of another size than the export's."""
    from crosslayer.backbones.export import export, torch_reference
    from crosslayer.backbones.runtime import OnnxBackbone

    spec = get_backbone(name)
    taps = ("fc7", spec.taps[-1], "fc6")  # mixed and out of order: outputs follow the request
    path = export(name, taps, weights="random", with_embedding=True, cache=tmp_path, seed=2)
    images = rng.standard_normal((2, 3, side, side + 32), dtype=np.float32)
    got = OnnxBackbone(path, intra_op_threads=1).run(images)
    assert list(got) == [*taps, "embedding"]
    torch.manual_seed(2)
    net = narrow_networks(spec.architecture).eval()
    relu_after = {"fc6": spec.fc_taps["fc6"], "fc7": spec.fc_taps["fc7"]}
    with torch.inference_mode():
        pooled = torch.nn.functional.adaptive_avg_pool2d(net.features(torch.from_numpy(images)),
                                                         {"alexnet": 6, "vgg16": 7}[name])
        x = torch.flatten(pooled, 1)
        want = {}
        for index, module in enumerate(net.classifier):
            x = module(x)
            for tap, at in relu_after.items():
                if index == at:
                    want[tap] = x.clone().numpy()
    for tap in ("fc6", "fc7"):
        assert got[tap].shape == (2, WIDTH) and (got[tap] >= 0).all() and (got[tap] > 0).any()
        np.testing.assert_allclose(got[tap], want[tap], rtol=0, atol=1e-5 * np.abs(want[tap]).max())
    eager = torch_reference(name, taps, weights="random", with_embedding=True, seed=2)(images)
    for (tap, value), expected in zip(got.items(), eager):
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_export_refuses_a_tap_asked_twice():
    from crosslayer.backbones.export import export

    with pytest.raises(UsageError, match="each tap once"):
        export("alexnet", ("fc6", "fc6"), weights="random")


@pytest.fixture
def tiny_set(tmp_path):
    return write_two_colour_set(tmp_path, per_class=5, train=3, test=2, noise=30, side=48, seed=1)


def test_eval_on_alexnet_with_user_weights_reads_fc7_and_fc6(tiny_set, tmp_path, narrow_networks, capsys):
    """`crosslayer eval classify --backbone alexnet --weights FILE.pth --method global` as a user types it: the row
    of an image is its L2-normalised fc7; CNN-Jitter averages fc7 over the 10 crops; exact AConv's regions are fc6."""
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone
    from crosslayer.commands import main
    from crosslayer.eval import classify, read_record
    from crosslayer.eval.extract import extract, jitter_crops
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.methods import MethodConfig
    from crosslayer.images import prepare

    torch.manual_seed(5)
    weights = tmp_path / "alexnet-user.pth"
    torch.save(narrow_networks("alexnet").state_dict(), weights)
    cache, side = tmp_path / "cache", 96
    out = tmp_path / "global.json"
    argv = ["eval", "classify", "--data", str(tiny_set), "--backbone", "alexnet", "--method", "global", "--side",
            str(side), "--weights", str(weights), "--cache", str(cache), "--json", str(out), "--quiet", "--folds", "2"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["dims"] == WIDTH
    record = read_record(out)
    assert record["dims"] == WIDTH and 0.0 <= record["accuracy"] <= 1.0 and record["n_test"] == 4

    spec = get_backbone("alexnet")
    dataset = load_manifest(tiny_set)
    aconv = dict(aconv_side=96, aconv_region=64, aconv_stride=32, aconv_region_side=96, aconv_pca_dim=8,
                 aconv_filters=3, aconv_epochs=2)
    configs = [MethodConfig("global"), MethodConfig("jitter"), MethodConfig("aconv", **aconv)]
    stores = extract(dataset, configs, "alexnet", side, cache, str(weights), progress=False)
    network = OnnxBackbone(export("alexnet", ("fc6", "fc7"), str(weights), cache=tmp_path / "onnx"), intra_op_threads=1)
    image = 3
    fc7 = network.run(prepare(dataset.paths[image], side, "square", spec.mean, spec.std)[None])["fc7"][0]
    np.testing.assert_allclose(stores[configs[0]].read()[image], fc7 / np.linalg.norm(fc7), rtol=0, atol=1e-5)
    crops = jitter_crops(dataset.paths[image], side, 0.875, spec)
    assert crops.shape == (10, 3, side, side)  # every crop at the network's side
    mean = network.run(crops)["fc7"].mean(axis=0)
    np.testing.assert_allclose(stores[configs[1]].read()[image], mean / np.linalg.norm(mean), rtol=0, atol=1e-5)
    assert stores[configs[2]].row_shape == (4, 8)  # 2x2 regions of the fc6 (WIDTH) features, PCA to 8
    record = classify(tiny_set, "aconv", backbone="alexnet", side=side, weights=str(weights), cache_dir=cache,
                      progress=False, folds=2, **aconv)
    assert record["dims"] == 3 * 8


def test_jitter_crops_reach_the_network_at_its_side(tmp_path):
    from crosslayer.eval.extract import jitter_crops
    from crosslayer.images import load_resized

    spec = get_backbone("efficientnet_lite0")  # sides must be multiples of 32: the enlarged image is rounded up
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    crops = jitter_crops(image, 64, 0.875, spec)  # per window (4 corners, centre): the crop, then its mirror
    assert crops.shape == (10, 3, 64, 64)
    enlarged = load_resized(image, 96, "square")  # 64 / 0.875 = 73 -> 96
    from crosslayer.images import normalize

    np.testing.assert_array_equal(crops[6], normalize(np.ascontiguousarray(enlarged[32:, 32:]), spec.mean, spec.std))
    np.testing.assert_array_equal(crops[9], normalize(np.ascontiguousarray(enlarged[16:80, 16:80][:, ::-1]),
                                                      spec.mean, spec.std))


def test_cli_export_of_the_fc_taps(tmp_path, monkeypatch, narrow_networks, capsys):
    """`crosslayer export --backbone alexnet --weights random --layers fc6 fc7` as a user types it."""
    from crosslayer.backbones.runtime import OnnxBackbone
    from crosslayer.commands import main

    monkeypatch.setenv("CROSSLAYER_CACHE", str(tmp_path))
    assert main(["export", "--backbone", "alexnet", "--weights", "random", "--layers", "fc6", "fc7"]) == 0
    path = capsys.readouterr().out.strip()
    outputs = OnnxBackbone(path, intra_op_threads=1).run(np.zeros((1, 3, 96, 96), np.float32))
    assert list(outputs) == ["fc6", "fc7", "embedding"] and outputs["fc7"].shape == (1, WIDTH)


def _reproduce_classification():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_classification.py"
    spec = importlib.util.spec_from_file_location("reproduce_classification", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_reproduce_classification_table_rows_on_the_paper_networks():
    """Their taps are module indices with gaps (VGG-16: features.1, 3, 6, ...): the layer pairs before the default
    one are the taps listed before it, and only pairs at one stride are Table 6 rows."""
    script = _reproduce_classification()
    pairs = {}
    for name in ("vgg16", "vgg19", "alexnet"):
        rows = script.table_rows(get_backbone(name), script.parse_groups("max,ablations,ovr"))
        pairs[name] = [tuple(kwargs["layers"]) for table, kwargs in rows if table == "Table 6"]
        assert [kwargs["layers"] for table, kwargs in rows if table == "max vs sum"] == [pairs[name][0]]
    # conv5_2 x conv5_3 (conv4_3 -> conv5_1 changes stride); AlexNet conv3 x conv4 (conv2 -> conv3 too)
    assert pairs == {"vgg16": [("features.25", "features.27")], "vgg19": [("features.31", "features.33"),
                                                                          ("features.29", "features.31")],
                     "alexnet": [("features.7", "features.9")]}


def test_reproduce_classification_runs_on_alexnet_with_user_weights(tiny_set, tmp_path, narrow_networks, monkeypatch):
    """`python benchmarks/reproduce_classification.py --backbone alexnet --weights FILE.pth ...` end to end (the
    headline rows only): the global row reads fc7, the Table 6 row is conv3 x conv4."""
    script = _reproduce_classification()
    monkeypatch.setattr(script, "RESULTS", tmp_path / "results")
    torch.manual_seed(5)
    weights = tmp_path / "alexnet-user.pth"
    torch.save(narrow_networks("alexnet").state_dict(), weights)
    skip = [f"{method} L{levels}-{layer}" for method in ("sum-spm", "max-spm") for layer in ("t", "t1", "both")
            for levels in ("0", "01", "012")]
    argv = ["--data", str(tiny_set.parent), "--set", tiny_set.name, "--backbone", "alexnet", "--weights", str(weights),
            "--side", "96", "--groups", "", "--cache", str(tmp_path / "cache"), "--fit-images", "4", "--jobs", "1",
            "--skip", ",".join(skip), "--name", "alexnet"]
    assert script.main(argv) == 0
    body = script.read_results(tmp_path / "results" / "alexnet.json")
    rows = {record["label"]: record for record in body["records"]}
    assert set(rows) == {"global", "crosslayer", "crosslayer-sign", "crosslayer features.7xfeatures.9"}
    assert rows["global"]["dims"] == WIDTH and rows["crosslayer"]["dims"] == 256 * 256
    assert all(len(record["test_predictions"]) == 4 for record in rows.values())
