"""Execution of an exported backbone on the CPU: onnxruntime (fp32 and int8) or OpenVINO (bf16), one interface.

`backbone_runner(model, precision, threads)` is the one place that chooses the runtime for a precision; both runners
take a model file path or the model's bytes and have ``run(images (n, 3, H, W) float32)`` -> {output name: array}.

At bf16 the cross-layer pooling can run inside OpenVINO's graph (`GraphPooling`): the PCA projection and the pooling
P = A^T X' are appended to the backbone as MatMuls, so they run in bfloat16 with float32 accumulation in the compiled
model, and the graph outputs P (n, Dk, Dt) and the guidance's channel means instead of the two layers' maps; the
core only finishes P (`crosslayer.pooling.finish_pooled`: L2 + signed square root, or sign packing).
"""

from __future__ import annotations

import threading
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
# POOLED finished into compact sign codes as each request completes: (n, compact words) uint64 (compact_codes.h)
CODE_BITS = "code_bits"


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
# Images in one OpenVINO request (see OpenVinoBackbone.run): one keeps an image's activations in the core's cache.
IMAGES_PER_REQUEST = 1
# Whether an OpenVinoBackbone compiles the model for each request shape (True) or once as exported, with dynamic
# batch and sides (False: ~8% more time an image, benchmarks/results/extract.md run Q); its `static_shapes`.
STATIC_SHAPES = True
# Request shapes an OpenVinoBackbone keeps compiled models for (each holds its own weights and buffers).
COMPILED_SHAPES = 4
# Inference requests queued a stream (OpenVinoBackbone.start): beyond them start() waits for one to free; each holds
# its own output tensors (~1.7 MB an image with the pooling in the graph).
REQUESTS_PER_STREAM = 4
# OpenVINO's names for the arithmetic it runs an fp32 model in (INFERENCE_PRECISION_HINT)
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackbone:
    """Runs an exported fp32 ONNX model (a file path, or the model's bytes) in OpenVINO's CPU plugin, its
    convolutions in `precision` ("bf16": bfloat16 inputs with float32 accumulation, on AVX512_BF16 or AMX; "fp32").

    `streams` streams (OpenVINO's NUM_STREAMS) share `threads` threads (0: the plugin's choice), not pinned to cores:
    the decode workers share them. `run` sends each batch as requests of IMAGES_PER_REQUEST images, one request a
    stream at a time, the next to whichever stream frees first: streams of one thread never wait for each other
    inside a layer (measured in benchmarks/results/extract.md, "OpenVINO configuration"). At most one stream per
    thread.
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
        self.streams = streams
        self.output_names = [output.get_any_name() for output in model.outputs]
        self.input_name = model.input(0).get_any_name()
        self._ov, self._core, self._model, self._config = ov, core, model, config
        self._queues: dict = {}  # request shape (None: any) -> AsyncInferQueue of the model compiled for it
        self.static_shapes = STATIC_SHAPES
        self._running = threading.Lock()  # one run at a time: the queues' callbacks are per run

    def _queue_for(self, shape: tuple):
        """The requests of the model compiled for inputs of exactly `shape` (compiled on first use): a static shape
        lets the plugin plan every layer's memory and kernels once (measured on 2 cores with AMX, MobileNetV2 at
        side 448, one image a request: 9.9 core-ms an image against 10.7 for the model as exported, with dynamic
        batch and sides)."""
        key = shape if self.static_shapes else None
        queue = self._queues.get(key)
        if queue is None:
            if len(self._queues) >= COMPILED_SHAPES:  # other sides come and go (crops, passes): keep the newest
                self._queues.pop(next(iter(self._queues)))
            model = self._model
            if key is not None:
                model = self._model.clone()
                try:
                    model.reshape(list(shape))
                except RuntimeError:  # a graph that cannot take this shape statically runs as it is (still correct)
                    model = self._model
            compiled = self._core.compile_model(model, "CPU", self._config)
            # a few requests queued behind each stream's running one, so the next batch's first images are waiting
            # when this one's last completes (the plugin runs them `streams` at a time, in order)
            queue = self._ov.AsyncInferQueue(compiled, self.streams * REQUESTS_PER_STREAM)
            queue.set_callback(_request_completed)
            self._queues[key] = queue
        return queue

    def run(self, images: np.ndarray, finish=None) -> dict:
        """{output name: (n, ...) array} of images (n, 3, H, W) float32.

        finish: optional; called with each request's outputs ({name: array of its images}, views valid only during
        the call, on one of OpenVINO's threads) and returning {name: array with as many rows} to keep instead: work
        on an image's outputs while they are still in the core's cache, and no copy of what is finished away."""
        return self.start(images, finish).result()

    def start(self, images: np.ndarray, finish=None) -> "PendingRun":
        """`run` without waiting: its `PendingRun.result()` waits and returns the outputs. Runs started one after
        the other overlap (the next batch's first images queue behind this one's last, so no stream idles at the end
        of a batch). The requests read `images` in place (the run keeps a reference): do not write into it until
        the result is in."""
        images = _check_images(images)
        n = len(images)
        if n == 0:
            return PendingRun.done(self._empty_outputs(images, finish))
        # One image a request, the requests spread over the streams as they free up: an image's activations stay in
        # the core's cache from layer to layer, where a request of 8 images streams them through memory (measured
        # on 2 cores with AMX, MobileNetV2 at side 448: 9.8 core-ms an image at 1 image a request, 11.6 at 8, 13.0
        # at 16; benchmarks/results/extract.md). Each image is read in place; its outputs are copied straight into
        # rows of the returned arrays, since a request's output tensors are overwritten by its next run.
        starts = range(0, n, IMAGES_PER_REQUEST)
        pending = PendingRun(n, len(starts), self.output_names, finish)
        with self._running:
            for row in starts:
                rows = min(IMAGES_PER_REQUEST, n - row)  # requests of IMAGES_PER_REQUEST images, and one of the rest
                queue = self._queue_for((rows,) + images.shape[1:])
                # the requests read `images` in place, and a queue evicted from the cache must outlive its requests:
                # the run holds both until its last request has completed
                pending.keep(images, queue)
                queue.start_async({0: images[row : row + rows]}, (pending, row), share_inputs=True)
        return pending

    def _empty_outputs(self, images, finish):
        """The outputs of no image: the shapes one image gives, with 0 rows (one image of zeros is run to learn them;
        through `start`, since a request of the queues must not be run outside them: its completion would be
        reported as that of the run it last served)."""
        one = self.start(np.zeros((1,) + images.shape[1:], np.float32), finish).result()
        return {name: np.empty((0,) + data.shape[1:], data.dtype) for name, data in one.items()}


def _request_completed(request, userdata) -> None:
    pending, row = userdata
    pending.completed(request, row)


class PendingRun:
    """The outputs of a run `OpenVinoBackbone.start` started, filled in as its requests complete; `result()` waits."""

    def __init__(self, n: int, requests: int, output_names, finish=None):
        self._n, self._left, self._names, self._finish = n, requests, output_names, finish
        self._kept: dict = {}  # alive while requests use them (OpenVINO's tensors do not hold their numpy arrays)
        self._outputs: dict = {}
        self._failures: list = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        if requests == 0:
            self._done.set()

    def keep(self, *objects) -> None:
        for item in objects:
            self._kept[id(item)] = item

    @classmethod
    def done(cls, outputs: dict) -> "PendingRun":
        pending = cls(0, 0, list(outputs))
        pending._outputs = outputs
        return pending

    def completed(self, request, row: int) -> None:
        """Called on OpenVINO's thread when the request holding rows row.. of this run has completed."""
        try:
            kept = {name: tensor.data for name, tensor in zip(self._names, request.output_tensors)}
            if self._finish is not None:
                kept = self._finish(kept)
            for name, data in kept.items():
                target = self._outputs.get(name)
                if target is None:
                    with self._lock:
                        target = self._outputs.get(name)
                        if target is None:
                            target = self._outputs[name] = np.empty((self._n,) + data.shape[1:], data.dtype)
                target[row : row + len(data)] = data
        except BaseException as error:  # raised by result(): an exception must not die in OpenVINO's thread
            self._failures.append(error)
        finally:
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self._kept = {}
                    self._done.set()

    def result(self) -> dict:
        self._done.wait()
        if self._failures:
            raise self._failures[0]
        return self._outputs


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
