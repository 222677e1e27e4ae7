"""Execution of an exported backbone on the CPU: onnxruntime (fp32 and int8) or OpenVINO (bf16), one interface.

`backbone_runner(model, precision, threads)` is the one place that chooses the runtime for a precision; both runners
take a model file path or the model's bytes and have ``run(images (n, 3, H, W) float32)`` -> {output name: array}.

At bf16 the cross-layer pooling can run inside OpenVINO's graph (`GraphPooling`): the PCA projection and the pooling
P = A^T X' are appended to the backbone as MatMuls, so they run in bfloat16 with float32 accumulation in the compiled
model, and the graph outputs P (n, Dk, Dt) and the guidance's channel means instead of the two layers' maps; the
core only finishes P (`crosslayer.pooling.finish_pooled`: L2 + signed square root, or sign packing).
"""

from __future__ import annotations

from dataclasses import dataclass

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


# the graph outputs that replace the two layers' maps when the pooling runs in the graph
POOLED = "pooled"
CHANNEL_MEAN = "channel_mean"


@dataclass(frozen=True)
class GraphPooling:
    """Cross-layer pooling appended to the backbone's graph: layer `local` (n, Dt_in, H, W) centred by `mean` (Dt_in,)
    and projected by `projection` (Dt_in, Dt), pooled by layer `guidance` (n, Dk, H, W) into POOLED (n, Dk, Dt), with
    CHANNEL_MEAN (n, Dk), the mean of each guidance channel over the positions."""

    local: str
    guidance: str
    mean: np.ndarray
    projection: np.ndarray

    def append_to(self, model):
        """`model` (an openvino.Model) with the two layers' outputs replaced by POOLED and CHANNEL_MEAN."""
        import openvino as ov
        import openvino.opset13 as ops

        results = {result.output(0).get_any_name(): result for result in model.get_results()}
        missing = [name for name in (self.local, self.guidance) if name not in results]
        if missing:
            raise UsageError(f"pooling: the model has no output {missing[0]!r} (outputs: {sorted(results)})")
        mean = np.ascontiguousarray(self.mean, np.float32)
        projection = np.ascontiguousarray(self.projection, np.float32)
        if projection.ndim != 2 or mean.shape != (projection.shape[0],):
            raise UsageError(f"pooling: expected mean (Dt_in,) and projection (Dt_in, Dt), got {mean.shape} and "
                             f"{projection.shape}")
        dt_in = projection.shape[0]
        channels = results[self.local].get_input_partial_shape(0)[1]
        if channels.is_static and channels.get_length() != dt_in:
            raise UsageError(f"pooling: the projection has {dt_in} rows, layer {self.local!r} {channels.get_length()} "
                             f"channels")
        local = results[self.local].input_value(0)
        guidance = results[self.guidance].input_value(0)
        flat = ops.constant(np.array([0, 0, -1], np.int64))  # (n, C, H, W) -> (n, C, H*W)
        local = ops.reshape(local, flat, special_zero=True)
        guidance = ops.reshape(guidance, flat, special_zero=True)
        # centred before the projection (not mean @ W subtracted after): post-ReLU layers have a large mean
        centred = ops.subtract(local, ops.constant(mean.reshape(1, dt_in, 1)))
        projected = ops.matmul(centred, ops.constant(projection), transpose_a=True, transpose_b=False)  # (n, HW, Dt)
        pooled = ops.matmul(guidance, projected, transpose_a=False, transpose_b=False)  # (n, Dk, Dt)
        channel_mean = ops.reduce_mean(guidance, ops.constant(np.array([2], np.int64)), keep_dims=False)
        outputs = []
        for name, node in ((POOLED, pooled), (CHANNEL_MEAN, channel_mean)):
            result = ops.result(node)
            result.output(0).set_names({name})
            outputs.append(result)
        kept = [result for name, result in results.items() if name not in (self.local, self.guidance)]
        return ov.Model(outputs + kept, model.get_parameters(), f"{model.get_friendly_name()}+pooling")


# OpenVINO streams a bf16 runner splits its threads into (at most one per thread): see OpenVinoBackbone. Two streams
# of one thread on 2 shared cores, MobileNetV2 at side 448, batch 16 (benchmarks/results/extract.md, run G): the bare
# session 30.1 vs 28.6 images/s and 22.5 vs 26.5 core-ms an image; the pipeline 20.9 vs 19.3 images/s. A batch of one
# image (a search query) then runs on one stream's thread.
OPENVINO_STREAMS = 2
# OpenVINO's names for the arithmetic it runs an fp32 model in (INFERENCE_PRECISION_HINT)
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackbone:
    """Runs an exported fp32 ONNX model (a file path, or the model's bytes) in OpenVINO's CPU plugin, its
    convolutions in `precision` ("bf16": bfloat16 inputs with float32 accumulation, on AVX512_BF16 or AMX; "fp32").

    `streams` streams (OpenVINO's NUM_STREAMS) share `threads` threads (0: the plugin's choice), not pinned to cores:
    the decode workers share them. With several streams `run` splits each batch between them, one inference request
    each, run concurrently: streams of one thread never wait for each other inside a layer (measured in
    benchmarks/results/extract.md, "OpenVINO configuration"). At most one stream per thread.
    pooling: a `GraphPooling` to run the cross-layer pooling in the graph (its outputs replace the two layers').
    """

    def __init__(self, model_path, threads: int = 0, precision: str = "bf16", pooling: GraphPooling | None = None,
                 streams: int = 1):
        ov = _import_openvino(precision)
        threads = _check_threads(threads, "threads")
        if precision not in OPENVINO_PRECISIONS:
            raise UsageError(f"precision: expected one of {tuple(OPENVINO_PRECISIONS)}, got {precision!r}")
        if isinstance(streams, bool) or not isinstance(streams, (int, np.integer)) or streams < 1:
            raise UsageError(f"streams: expected an integer >= 1, got {streams!r}")
        streams = int(min(streams, threads)) if threads else int(streams)
        core = ov.Core()
        in_memory = isinstance(model_path, (bytes, bytearray))
        self.model_path = "<in memory>" if in_memory else str(model_path)
        self.precision = precision
        model = core.read_model(bytes(model_path), b"") if in_memory else core.read_model(self.model_path)
        if pooling is not None:
            model = pooling.append_to(model)
        self.pooling = pooling
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], "NUM_STREAMS": streams,
                  "ENABLE_CPU_PINNING": False, "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.streams = streams
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]
        self.input_name = self.compiled.input(0).get_any_name()
        self._requests = [self.compiled.create_infer_request() for _ in range(streams)]

    def run(self, images: np.ndarray) -> dict:
        images = _check_images(images)
        if self.streams == 1 or len(images) < 2:
            # the batch is read in place (no copy of its ~38 MB at batch 16, side 448); the outputs are copies, since
            # the request's output tensors are overwritten by the next run
            results = self._requests[0].infer({0: images}, share_inputs=True, share_outputs=False)
            return {name: results[output] for name, output in zip(self.output_names, self.compiled.outputs)}
        parts = [part for part in np.array_split(images, self.streams) if len(part)]  # views: read in place
        requests = self._requests[: len(parts)]
        for request, part in zip(requests, parts):
            request.start_async({0: part}, share_inputs=True)
        for request in requests:
            request.wait()
        # joined into new arrays: the requests' output tensors are overwritten by the next run
        return {name: np.concatenate([request.get_output_tensor(i).data for request in requests])
                for i, name in enumerate(self.output_names)}


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


def backbone_runner(model, precision: str, threads: int = 0, pooling: GraphPooling | None = None,
                    streams: int | None = None):
    """The runner of an exported model at a precision: "fp32" and "int8" (a QDQ model) in onnxruntime, "bf16" (the
    fp32 model) in OpenVINO. Measured on 2 cores of an AMD EPYC with AVX512_BF16 and no AMX, MobileNetV2 at side
    448 (benchmarks/results/extract.md): OpenVINO bf16 ~1.6x onnxruntime fp32 with ~96% of code signs unchanged;
    OpenVINO at fp32 is slower than onnxruntime's, so fp32 stays on onnxruntime.
    pooling: a `GraphPooling` run in the graph (bf16 only). streams: OpenVINO's streams (bf16 only; None: the
    measured default, OPENVINO_STREAMS)."""
    if pooling is not None and precision != "bf16":
        raise UsageError(f"pooling: the pooling runs in the graph at precision 'bf16' only, not {precision!r}")
    if streams is not None and precision != "bf16":
        raise UsageError(f"streams: OpenVINO's streams apply at precision 'bf16' only, not {precision!r}")
    if precision == "bf16":
        return OpenVinoBackbone(model, threads=threads, precision="bf16", pooling=pooling,
                                streams=OPENVINO_STREAMS if streams is None else streams)
    if precision in ("fp32", "int8"):
        return OnnxBackbone(model, intra_op_threads=threads)
    raise UsageError(f"precision: expected 'fp32', 'bf16' or 'int8', got {precision!r}")
