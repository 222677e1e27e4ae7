"""CNN architectures in plain torch whose state-dict keys match torchvision's (torchvision is not a dependency).

Every network exposes ``features`` (an ``nn.Sequential`` whose children are the tap points ``features.N``),
``embed(last_tap_map)`` (the pooled embedding) and ``classify(last_tap_map)`` (ImageNet logits), both taking the map
of the backbone's last registered tap. For MobileNetV2 and EfficientNet that is the last module of ``features``; VGG
and AlexNet end ``features`` with a max-pool after their last conv (the last tap), which only the classifier uses, so
``classify`` equals torchvision's ``classifier(flatten(avgpool(features(x))))``. Importing this module needs torch;
only export uses it.
"""

from __future__ import annotations

import torch
from torch import nn

from crosslayer.errors import UsageError


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _adaptive_bins(size, out: int):
    """(out, size) averaging matrix of adaptive average pooling: bin i spans floor(i*size/out) to
    ceil((i+1)*size/out), as in torch."""
    index = torch.arange(out)
    start = torch.div(index * size, out, rounding_mode="floor")
    end = torch.div((index + 1) * size + out - 1, out, rounding_mode="floor")
    position = torch.arange(size)
    inside = (position[None, :] >= start[:, None]) & (position[None, :] < end[:, None])
    return inside.to(torch.float32) / (end - start)[:, None].to(torch.float32)


class _AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """torch's adaptive average pooling; under ONNX export, the same bins as two matrix products, because the
    TorchScript exporter cannot export adaptive_avg_pool2d when height and width are dynamic."""

    def forward(self, x):
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        out_h, out_w = self.output_size
        return _adaptive_bins(x.shape[2], out_h) @ x @ _adaptive_bins(x.shape[3], out_w).transpose(0, 1)


class _ConvBNReLU6(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_ConvBNReLU6(c_in, hidden, kernel=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 (width 1.0): features.0 .. features.18, classifier.1."""

    # expansion t, channels c, repeats n, stride s
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        c_in = 32
        last = 1280
        layers: list[nn.Module] = [_ConvBNReLU6(3, c_in, stride=2)]
        for t, c, n, s in self.SETTINGS:
            c_out = _make_divisible(c)
            for i in range(n):
                layers.append(_InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        layers.append(_ConvBNReLU6(c_in, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def embed(self, last_map):
        return last_map.mean(dim=(2, 3))

    def classify(self, last_map):
        return self.classifier(self.embed(last_map))


_VGG_CONFIGS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class _ConvStackThenClassifier(nn.Module):
    """VGG and AlexNet: `features` ending in a max-pool, `avgpool`, `classifier`. The last tap is conv5's ReLU."""

    def embed(self, last_conv_map):
        return last_conv_map.mean(dim=(2, 3))

    def classify(self, last_conv_map):
        # the tap (conv5's ReLU) stops before features' final max-pool, which torchvision's forward applies
        pooled = self.features[-1](last_conv_map)
        return self.classifier(torch.flatten(self.avgpool(pooled), 1))

    def fully_connected(self, last_conv_map, indices) -> dict:
        """{classifier index: its output} for the wanted `indices` (the ReLUs after fc6/fc7), from the map of the
        last conv tap through the same max-pool, adaptive average pool and flatten as `classify`."""
        x = torch.flatten(self.avgpool(self.features[-1](last_conv_map)), 1)
        outputs = {}
        for index, module in enumerate(self.classifier):
            if index > max(indices):
                break
            x = module(x)
            if index in indices:
                # the next Linear makes a new tensor, but a later in-place ReLU must not reach this one
                outputs[index] = x.clone()
        return outputs


class VGG(_ConvStackThenClassifier):
    """torchvision.models.vgg16 / vgg19 (no batch norm): features.N (conv, ReLU, pool), avgpool, classifier.{0,3,6}."""

    def __init__(self, config: str, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in _VGG_CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = item
        self.features = nn.Sequential(*layers)
        self.avgpool = _AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )


class AlexNet(_ConvStackThenClassifier):
    """torchvision.models.alexnet: features.0..12, avgpool, classifier.{1,4,6}."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = _AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, num_classes),
        )


class _EfficientNetStage(nn.Module):
    """One step of EfficientNet-Lite's forward, so its blocks become ``features.N`` taps."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, x):
        return self.run(x)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 from the `efficientnet_lite_pytorch` package (its own code needs torch only), with its
    stem, 16 blocks and head exposed as features.0 (stem), features.1..16 (blocks), features.17 (head, 1280 ch).

    The package uses TensorFlow "same" padding fixed for even spatial sizes, so input sides should be multiples of 32.
    State-dict keys are the package's (``_conv_stem.weight`` ...), loaded into ``self.net``.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
        self.net = net
        stages = [_EfficientNetStage(lambda x: net._swish(net._bn0(net._conv_stem(x))))]
        for block in net._blocks:
            # drop-connect is training-only; eval() makes it the identity
            stages.append(_EfficientNetStage(lambda x, block=block: block(x, drop_connect_rate=None)))
        stages.append(_EfficientNetStage(lambda x: net._swish(net._bn1(net._conv_head(x)))))
        self.features = nn.Sequential(*stages)

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.net.load_state_dict(state_dict, strict=strict)

    def embed(self, last_map):
        return last_map.mean(dim=(2, 3))

    def classify(self, last_map):
        return self.net._fc(self.embed(last_map))


def build(architecture: str) -> nn.Module:
    """An untrained network of the named architecture (weights are loaded by the caller)."""
    if architecture == "mobilenet_v2":
        return MobileNetV2()
    if architecture in _VGG_CONFIGS:
        return VGG(architecture)
    if architecture == "alexnet":
        return AlexNet()
    if architecture == "efficientnet_lite0":
        return EfficientNetLite0()
    raise UsageError(f"architecture: unknown {architecture!r}")
