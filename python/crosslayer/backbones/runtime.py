"""Execution of an exported backbone on the CPU: onnxruntime (fp32 and int8) or OpenVINO (bf16), one interface.

`backbone_runner(model, precision, threads)` is the one place that chooses the runtime for a precision; both runners
take a model file path or the model's bytes and have ``run(images (n, 3, H, W) float32)`` -> {output name: array}.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import CrossLayerError, UsageError


class MissingRuntimeError(CrossLayerError, ImportError):
    """The optional package a precision runs on is not installed."""


def _check_images(images) -> np.ndarray:
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise UsageError(f"images: expected (n, 3, H, W) float32, got shape {images.shape}")
    return images


def _check_threads(threads, name: str) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise UsageError(f"{name}: expected an integer >= 0 (0 = all cores), got {threads!r}")
    return int(threads)


class OnnxBackbone:
    """Runs an exported model (a file path, or the model's bytes) in onnxruntime.

    allow_spinning: whether onnxruntime's idle intra-op threads busy-wait for work. Off by default: the decode
    workers run beside inference on the same cores, and spinning threads take their time (measured on 2 shared
    cores, MobileNetV2 at side 448, batch 16: 6.9 images/s spinning, 15.5 not; benchmarks/results/extract.md).
    """

    def __init__(self, model_path, intra_op_threads: int = 0, inter_op_threads: int = 1, allow_spinning: bool = False):
        import onnxruntime as ort

        intra_op_threads = _check_threads(intra_op_threads, "intra_op_threads")
        if not isinstance(allow_spinning, bool):
            raise UsageError(f"allow_spinning: expected True or False, got {allow_spinning!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        in_memory = isinstance(model_path, (bytes, bytearray))
        self.model_path = "<in memory>" if in_memory else str(model_path)
        self.allow_spinning = allow_spinning
        self.session = ort.InferenceSession(bytes(model_path) if in_memory else self.model_path, options,
                                            providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> dict:
        outputs = self.session.run(self.output_names, {self.input_name: _check_images(images)})
        return dict(zip(self.output_names, outputs))


# OpenVINO's names for the arithmetic it runs an fp32 model in (INFERENCE_PRECISION_HINT)
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackbone:
    """Runs an exported fp32 ONNX model (a file path, or the model's bytes) in OpenVINO's CPU plugin, its
    convolutions in `precision` ("bf16": bfloat16 inputs with float32 accumulation, on AVX512_BF16 or AMX; "fp32").

    One stream of `threads` threads (0: the plugin's choice), not pinned to cores: the decode workers share them.
    """

    def __init__(self, model_path, threads: int = 0, precision: str = "bf16"):
        ov = _import_openvino(precision)
        threads = _check_threads(threads, "threads")
        if precision not in OPENVINO_PRECISIONS:
            raise UsageError(f"precision: expected one of {tuple(OPENVINO_PRECISIONS)}, got {precision!r}")
        core = ov.Core()
        in_memory = isinstance(model_path, (bytes, bytearray))
        self.model_path = "<in memory>" if in_memory else str(model_path)
        self.precision = precision
        model = core.read_model(bytes(model_path), b"") if in_memory else core.read_model(self.model_path)
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], "NUM_STREAMS": 1,
                  "ENABLE_CPU_PINNING": False, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]
        self.input_name = self.compiled.input(0).get_any_name()
        self._request = self.compiled.create_infer_request()

    def run(self, images: np.ndarray) -> dict:
        # the batch is read in place (no copy of its ~38 MB at batch 16, side 448); the outputs are copies, since
        # the request's output tensors are overwritten by the next run
        results = self._request.infer({0: _check_images(images)}, share_inputs=True, share_outputs=False)
        return {name: results[output] for name, output in zip(self.output_names, self.compiled.outputs)}


def _import_openvino(precision):
    try:
        import openvino
    except ImportError:
        raise MissingRuntimeError(f"precision {precision!r} runs on OpenVINO, which is not installed: "
                                  f"pip install 'crosslayer[openvino]' (or openvino)") from None
    return openvino


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def backbone_runner(model, precision: str, threads: int = 0):
    """The runner of an exported model at a precision: "fp32" and "int8" (a QDQ model) in onnxruntime, "bf16" (the
    fp32 model) in OpenVINO. Measured on 2 cores of an AMD EPYC with AVX512_BF16 and no AMX, MobileNetV2 at side
    448 (benchmarks/results/extract.md): OpenVINO bf16 ~1.6x onnxruntime fp32 with ~96% of code signs unchanged;
    OpenVINO at fp32 is slower than onnxruntime's, so fp32 stays on onnxruntime."""
    if precision == "bf16":
        return OpenVinoBackbone(model, threads=threads, precision="bf16")
    if precision in ("fp32", "int8"):
        return OnnxBackbone(model, intra_op_threads=threads)
    raise UsageError(f"precision: expected 'fp32', 'bf16' or 'int8', got {precision!r}")
