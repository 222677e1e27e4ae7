"""onnxruntime execution of an exported backbone (CPU)."""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError


class OnnxBackbone:
    """Runs an exported model (a file path, or the model's bytes): ``run(images (n, 3, H, W) float32)`` ->
    {output name: array}.

    allow_spinning: whether onnxruntime's idle intra-op threads busy-wait for work. Off by default: the decode
    workers run beside inference on the same cores, and spinning threads take their time (measured on 2 shared
    cores, MobileNetV2 at side 448, batch 16: 6.9 images/s spinning, 15.5 not; benchmarks/results/extract.md).
    """

    def __init__(self, model_path, intra_op_threads: int = 0, inter_op_threads: int = 1, allow_spinning: bool = False):
        import onnxruntime as ort

        if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 0:
            raise UsageError(f"intra_op_threads: expected an integer >= 0 (0 = all cores), got {intra_op_threads!r}")
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
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3:
            raise UsageError(f"images: expected (n, 3, H, W) float32, got shape {images.shape}")
        outputs = self.session.run(self.output_names, {self.input_name: images})
        return dict(zip(self.output_names, outputs))
