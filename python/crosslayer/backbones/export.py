"""Export a backbone's tap activations to ONNX with torch, cached on disk; onnxruntime runs the result.

Outputs, in order: the requested taps (conv taps named by their module names, (n, C, h, w); VGG's and AlexNet's
fully-connected taps "fc6"/"fc7", (n, 4096) after their ReLU), then optionally ``embedding`` (n, C: the global
average of the backbone's last tap, as the registry describes) and ``logits`` (n, 1000: torchvision's forward).
Batch, height and width are dynamic. The cache key covers architecture, taps, extra outputs, weights hash and opset;
a JSON sidecar (a `crosslayer.formats` document "crosslayer-onnx-export", written after the model, both atomically)
carries the model's size and sha256, so a partial, foreign or damaged file is never reused (it is exported again).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from crosslayer._atomic import atomic_write
from crosslayer.backbones.registry import get_backbone
from crosslayer.backbones.weights import file_sha256, resolve_weights
from crosslayer.errors import FormatError, UsageError
from crosslayer.formats import read_json, write_json

# 2: VGG/AlexNet embedding and logits start from the last conv tap (version 1 pooled after the final max-pool)
EXPORT_VERSION = 2
SIDECAR_FORMAT = "crosslayer-onnx-export"
DEFAULT_OPSET = 17
EMBEDDING = "embedding"
LOGITS = "logits"


def cache_dir() -> Path:
    """``$CROSSLAYER_CACHE`` or ``~/.cache/crosslayer``."""
    return Path(os.environ.get("CROSSLAYER_CACHE") or Path.home() / ".cache" / "crosslayer")


def _load_network(spec, weights_path, seed: int):
    import torch

    from crosslayer.backbones.architectures import build

    torch.manual_seed(seed)
    net = build(spec.architecture)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net.eval()


def _is_inner(tap: str) -> bool:
    """Whether a tap lies inside a block (``features.N.<path>``) rather than being the block's output."""
    return tap.count(".") > 1


def _tap_module(net, taps, indices, last_tap_index: int, with_embedding: bool, with_logits: bool, fc_taps=None):
    """The network truncated after the block of its last wanted tap. The embedding, the logits and the
    fully-connected taps all start from the map of the backbone's last registered tap (`last_tap_index`): modules
    after it (VGG's and AlexNet's final max-pool) belong to the classifier, which applies them itself. A tap inside a
    block (``features.16.conv.0``) is read by a forward hook on that sub-module, so any named sub-module can be tapped
    without rewriting its block.

    taps: the outputs in order, conv taps (at `indices`, in the same order; an inner tap at its block's index) and fc
    taps (names of `fc_taps`: name -> classifier index) mixed."""
    import torch

    fc_taps = {tap: fc_taps[tap] for tap in taps if fc_taps and tap in fc_taps}
    conv_taps = [tap for tap in taps if tap not in fc_taps]
    needs_last = with_embedding or with_logits or bool(fc_taps)
    last = max([*indices, last_tap_index]) if needs_last else max(indices)
    wanted = {index: tap for tap, index in zip(conv_taps, indices) if not _is_inner(tap)}
    last_tap_key = wanted.setdefault(last_tap_index, "__last_tap__")
    inner = [tap for tap in conv_taps if _is_inner(tap)]

    class TapNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.captured = {}
            for tap in inner:
                # the tapped output must not be modified later in place: in these blocks it only feeds a conv
                net.get_submodule(tap).register_forward_hook(
                    lambda module, inputs, output, tap=tap: self.captured.__setitem__(tap, output))

        def forward(self, images):
            self.captured.clear()
            outputs = {}
            x = images
            for index in range(last + 1):
                x = self.net.features[index](x)
                if index in wanted:
                    outputs[wanted[index]] = x
            outputs.update(self.captured)
            if needs_last:
                last_map = outputs[last_tap_key]
            if fc_taps:
                by_index = self.net.fully_connected(last_map, sorted(set(fc_taps.values())))
                outputs.update({tap: by_index[index] for tap, index in fc_taps.items()})
            result = [outputs[tap] for tap in taps]
            if with_embedding:
                result.append(self.net.embed(last_map))
            if with_logits:
                result.append(self.net.classify(last_map))
            return tuple(result)

    return TapNet().eval()


def _last_tap_index(spec) -> int:
    return spec.tap_index(spec.taps[-1])


def _conv_indices(spec, taps) -> list[int]:
    """Module indices of the conv taps among `taps` (fc taps have none; an unknown name is refused here)."""
    return [spec.tap_index(tap) for tap in taps if tap not in spec.fc_taps]


def output_names(taps, with_embedding: bool = False, with_logits: bool = False) -> list[str]:
    return list(taps) + ([EMBEDDING] if with_embedding else []) + ([LOGITS] if with_logits else [])


def _cache_key(spec, taps, weights_id, opset, with_embedding, with_logits) -> str:
    description = json.dumps(
        {
            "version": EXPORT_VERSION,
            "architecture": spec.architecture,
            "taps": list(taps),
            "weights": weights_id,
            "opset": opset,
            "embedding": with_embedding,
            "logits": with_logits,
        },
        sort_keys=True,
    )
    return hashlib.sha256(description.encode()).hexdigest()[:20]


def _sidecar_valid(model_path: Path, sidecar_path: Path, key: str) -> bool:
    """Whether the sidecar is a sound document describing exactly the model file beside it (else: export again)."""
    try:
        meta = read_json(sidecar_path, SIDECAR_FORMAT, EXPORT_VERSION, "crosslayer ONNX export record")
        return (meta.get("key") == key and model_path.stat().st_size == meta.get("size")
                and file_sha256(model_path) == meta.get("sha256"))
    except (FormatError, OSError):
        return False


def export(
    backbone="mobilenet_v2",
    layers=None,
    weights=None,
    with_embedding: bool = False,
    with_logits: bool = False,
    opset: int = DEFAULT_OPSET,
    cache=None,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Path of an ONNX model computing the backbone's taps (exported now, or reused from the cache).

    layers: tap names to output (default: the backbone's default pair). weights: None for the pinned packaged
    weights, a path to a state-dict file, or "random" (seeded untrained weights, for tests).
    """
    spec = get_backbone(backbone)
    taps = spec.default_pair if layers is None else tuple(str(t) for t in layers)
    if not taps:
        raise UsageError("layers: expected at least one tap")
    if len(set(taps)) != len(taps):
        raise UsageError(f"layers: each tap once, got {list(taps)}")
    indices = _conv_indices(spec, taps)
    weights_path, weights_id = resolve_weights(spec, weights)
    key = _cache_key(spec, taps, weights_id if weights_path is not None else f"random:{seed}", opset, with_embedding, with_logits)
    directory = Path(cache) if cache is not None else cache_dir()
    model_path = directory / f"{spec.name}-{key}.onnx"
    sidecar_path = model_path.with_suffix(".json")
    if not force and model_path.exists() and _sidecar_valid(model_path, sidecar_path, key):
        return model_path

    import torch

    module = _tap_module(_load_network(spec, weights_path, seed), taps, indices, _last_tap_index(spec), with_embedding,
                         with_logits, spec.fc_taps)
    names = output_names(taps, with_embedding, with_logits)
    side = max(64, spec.side_multiple * 2)
    dummy = torch.zeros(1, 3, side, side)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name in names:
        vector = name in (EMBEDDING, LOGITS) or name in spec.fc_taps
        dynamic[name] = {0: "batch"} if vector else {0: "batch", 2: "out_height", 3: "out_width"}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(model_path) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # the TorchScript exporter needs no onnxscript and handles these plain conv nets
        torch.onnx.export(
            module, (dummy,), handle, input_names=["images"], output_names=names,
            dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )
    meta = {
        "key": key,
        "backbone": spec.name,
        "architecture": spec.architecture,
        "taps": list(taps),
        "outputs": names,
        "weights": weights_id if weights_path is not None else f"random:{seed}",
        "opset": opset,
        "torch": torch.__version__,
        "size": model_path.stat().st_size,
        "sha256": file_sha256(model_path),
    }
    write_json(sidecar_path, SIDECAR_FORMAT, EXPORT_VERSION, meta)
    return model_path


def torch_reference(backbone, layers=None, weights=None, with_embedding=False, with_logits=False, seed: int = 0):
    """The same computation in torch eager (for tests and the benchmark's baseline): callable images -> list of arrays."""
    import torch

    spec = get_backbone(backbone)
    taps = spec.default_pair if layers is None else tuple(layers)
    weights_path, _ = resolve_weights(spec, weights)
    module = _tap_module(_load_network(spec, weights_path, seed), taps, _conv_indices(spec, taps),
                         _last_tap_index(spec), with_embedding, with_logits, spec.fc_taps)

    def run(images):
        with torch.inference_mode():
            return [out.numpy() for out in module(torch.from_numpy(images))]

    return run


# int8: static QDQ quantisation by onnxruntime (per-channel int8 weights, uint8 activations, MinMax ranges).
# Measured on MobileNetV2 at side 448 (benchmarks/results/extract.md): ~1.7x the fp32 session's speed, but only
# ~82-85% of code signs agree with fp32 whichever layers are kept in float, so it is an option, never the default.
CALIBRATION_BATCH = 8


def quantize_int8(model_path, calibration_inputs) -> bytes:
    """The exported model at `model_path` quantised to int8 (QDQ), its activation ranges calibrated on
    `calibration_inputs` ((n, 3, H, W) float32 network inputs: a few dozen real images); the model file's bytes.

    The same model and inputs give the same bytes (MinMax calibration has no randomness)."""
    import tempfile

    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = np.asarray(calibration_inputs)
    if inputs.dtype != np.float32 or inputs.ndim != 4 or inputs.shape[1] != 3 or len(inputs) < 1:
        raise UsageError(f"calibration_inputs: expected (n >= 1, 3, H, W) float32 network inputs, got "
                         f"{inputs.dtype} {inputs.shape}")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{"images": inputs[i : i + CALIBRATION_BATCH]}
                                  for i in range(0, len(inputs), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="crosslayer-int8-") as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared, quantised = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        quant_pre_process(str(model_path), str(prepared))
        quantize_static(str(prepared), str(quantised), Batches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
        return quantised.read_bytes()
