"""Taps inside MobileNetV2's inverted-residual blocks (post-ReLU6 expansion / depthwise outputs) as guidance layers."""

import numpy as np
import pytest

from crosslayer.backbones import get_backbone
from crosslayer.errors import UsageError


def test_inner_taps_are_ordered_checked_and_paired_by_stride():
    spec = get_backbone("mobilenet_v2")
    assert spec.channels["features.16.conv.0"] == 960 and spec.channels["features.16.conv.1"] == 960
    assert spec.channels["features.14.conv.0"] == 576 and spec.channels["features.1.conv.0"] == 32
    assert spec.stride["features.14.conv.0"] == 16 and spec.stride["features.14.conv.1"] == 32
    order = spec.all_taps
    assert order.index("features.15") < order.index("features.16.conv.0") < order.index("features.16.conv.1") \
        < order.index("features.16") < order.index("features.17.conv.0")
    assert "features.1.conv.1" not in order  # block 1 has no expansion: its only inner point is the depthwise conv.0
    for pair in (("features.15", "features.16.conv.0"), ("features.16", "features.17.conv.1"),
                 ("features.16.conv.0", "features.16.conv.1"), ("features.16.conv.1", "features.16")):
        assert spec.check_pair(pair) == pair
    with pytest.raises(UsageError, match="before"):
        spec.check_pair(("features.16.conv.1", "features.16.conv.0"))
    with pytest.raises(UsageError, match="before"):
        spec.check_pair(("features.16", "features.16.conv.0"))
    with pytest.raises(UsageError, match="spatial layout"):
        spec.check_pair(("features.14.conv.0", "features.14.conv.1"))
    with pytest.raises(UsageError, match="not a tap.*features.16.conv.0"):
        spec.check_pair(("features.15", "features.16.conv.7"))
    # the other backbones have no inner taps, and their block taps are unchanged
    assert get_backbone("vgg16").all_taps == get_backbone("vgg16").taps


def test_reproduce_classification_guidance_group_pairs_each_local_layer_with_the_next_blocks_inner_taps():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_classification.py"
    module_spec = importlib.util.spec_from_file_location("reproduce_classification", path)
    script = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(script)
    spec = get_backbone("mobilenet_v2")
    rows = script.table_rows(spec, script.parse_groups("guidance,aconv-exact"))
    pairs = [kwargs["layers"] for group, kwargs in rows if group == "Table 6 non-negative guidance"]
    assert pairs == [("features.16", "features.17.conv.0"), ("features.16", "features.17.conv.1"),
                     ("features.15", "features.16.conv.0"), ("features.15", "features.16.conv.1")]
    assert ("AConv", {"method": "aconv"}) in rows
    # the signed pairs they stand beside are still there
    assert {kwargs.get("layers") for group, kwargs in rows if group == "Table 6"} == {
        ("features.16", "features.17"), ("features.15", "features.16")}
    assert script.config_of(dict(method="crosslayer", layers=pairs[0]), 64).fit_images == 64
    assert script.guidance_rows(get_backbone("vgg16"), get_backbone("vgg16").default_pair) == []  # no inner taps


torch = pytest.importorskip("torch")


def test_inner_tap_channels_match_the_modules():
    from crosslayer.backbones.architectures import build

    spec = get_backbone("mobilenet_v2")
    net = build(spec.architecture).eval()
    seen = {}
    for tap in spec.all_taps:
        net.get_submodule(tap).register_forward_hook(lambda m, i, o, tap=tap: seen.__setitem__(tap, o.shape))
    with torch.inference_mode():
        net.features(torch.zeros(1, 3, 64, 64))
    for tap in spec.all_taps:
        assert seen[tap][1] == spec.channels[tap], tap
        assert 64 // seen[tap][2] == spec.stride[tap], tap


def test_exported_inner_taps_match_the_block_computed_by_hand(backbone_cache, rng):
    """The ONNX outputs of inner taps equal the block's sub-modules run by hand in torch, and are non-negative
    (post-ReLU6), while the block's own output (a linear bottleneck) is signed."""
    from crosslayer.backbones.architectures import build
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone

    layers = ("features.15", "features.16.conv.0", "features.16.conv.1", "features.16")
    path = export("mobilenet_v2", layers, weights="random", seed=0)
    images = rng.standard_normal((2, 3, 96, 64), dtype=np.float32)
    got = OnnxBackbone(path, intra_op_threads=1).run(images)
    assert list(got) == list(layers)
    torch.manual_seed(0)
    net = build("mobilenet_v2").eval()
    with torch.inference_mode():
        x = net.features[:16](torch.from_numpy(images))
        block = net.features[16]
        expanded = block.conv[0](x)
        depthwise = block.conv[1](expanded)
        want = {"features.15": x, "features.16.conv.0": expanded, "features.16.conv.1": depthwise,
                "features.16": x + block.conv[3](block.conv[2](depthwise))}
    for tap in layers:
        expected = want[tap].numpy()
        np.testing.assert_allclose(got[tap], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert got["features.16.conv.0"].min() >= 0 and got["features.16.conv.1"].max() <= 6
    assert got["features.16"].min() < 0


def test_encoder_pools_with_an_inner_guidance_tap(backbone_cache, tmp_path):
    from crosslayer.encoder import CrossLayerEncoder
    from tests._images import write_block_images

    paths = write_block_images(tmp_path / "images", 4, side=64)
    encoder = CrossLayerEncoder("mobilenet_v2", layers=("features.16", "features.17.conv.0"), side=64,
                                weights="random", pca_dim=1)  # 4 fit images: one component (the fit-set trap)
    codes = encoder.fit(paths).encode(paths)
    assert (encoder.Dk, encoder.Dt) == (960, 1)
    assert codes.channel_mean.shape == (4, 960) and codes.channel_mean.min() >= 0


def test_guidance_stats_measures_cancellation_and_linear_dependence(rng):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "guidance_stats.py"
    module_spec = importlib.util.spec_from_file_location("guidance_stats", path)
    stats = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(stats)
    local = rng.standard_normal((3, 5, 4, 4))
    weights = rng.standard_normal((5, 6))
    linear = np.einsum("nchw,ck->nkhw", local - local.mean(axis=(0, 2, 3), keepdims=True), weights)
    exact = stats.pair_stats(local, linear)
    assert (exact["Dt"], exact["Dk"], exact["dims"]) == (5, 6, 30)
    assert exact["explained"] == pytest.approx(1.0, abs=1e-9)
    noise = stats.pair_stats(local, rng.random((3, 6, 4, 4)))
    assert noise["explained"] < 0.5 and noise["negative_channel_means"] == 0.0
    # one position only: nothing to cancel
    single = stats.pair_stats(local[:, :, :1, :1], np.abs(linear[:, :, :1, :1]))
    assert single["cancellation"] == pytest.approx(1.0)
    # a guidance of both signs at two positions whose local vectors are equal: the contributions cancel exactly
    twin = np.repeat(local[:, :, :1, :1], 2, axis=3)
    signed = np.concatenate([np.ones((3, 6, 1, 1)), -np.ones((3, 6, 1, 1))], axis=3)
    assert stats.pair_stats(twin, signed)["cancellation"] == pytest.approx(0.0, abs=1e-12)
