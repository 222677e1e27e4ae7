"""Seconds spent in each stage of images -> codes, summed over a run (what `crosslayer index build --profile` shows).

Decode, resize and normalise run on the decode workers, overlapped with inference: their seconds are worker time,
and only `decode_wait` (the main thread blocked on a not yet decoded image) is time the pipeline lost to them. Where
the core's fused kernel resizes and normalises in one pass (`crosslayer.images.prepare`, the encoder's inputs), its
seconds are all under `resize` and `normalise` gets none: only inputs normalised apart (`images.normalize`) add to it.
`batch`, `inference` and `pooling` run on the main thread, one after the other.
"""

from __future__ import annotations

import contextlib
import threading
import time

# in pipeline order; the first three run on the decode workers
STAGES = ("decode", "resize", "normalise", "decode_wait", "batch", "inference", "pooling", "writing")
WORKER_STAGES = ("decode", "resize", "normalise")


class StageTimes:
    """Thread-safe sums of seconds per stage (`STAGES`), and the images they cover."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(STAGES, 0.0)
        self.images = 0

    def add(self, stage: str, seconds: float) -> None:
        if stage not in self._seconds:
            raise KeyError(f"stage: expected one of {STAGES}, got {stage!r}")
        with self._lock:
            self._seconds[stage] += seconds

    def count(self, images: int) -> None:
        with self._lock:
            self.images += int(images)

    @contextlib.contextmanager
    def timing(self, stage: str):
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - begin)

    def seconds(self) -> dict:
        with self._lock:
            return dict(self._seconds)

    def reset(self) -> None:
        with self._lock:
            self._seconds = dict.fromkeys(STAGES, 0.0)
            self.images = 0

    def table(self, wall_seconds: float | None = None) -> str:
        """One line per stage: seconds, ms per image and, for the main-thread stages, the share of `wall_seconds`."""
        seconds = self.seconds()
        lines = [f"{'stage':<12} {'seconds':>9} {'ms/image':>9} {'of wall':>8}"]
        for stage in STAGES:
            per_image = 1e3 * seconds[stage] / self.images if self.images else 0.0
            share = ("  worker" if stage in WORKER_STAGES else
                     f"{100 * seconds[stage] / wall_seconds:7.1f}%" if wall_seconds else "")
            lines.append(f"{stage:<12} {seconds[stage]:9.3f} {per_image:9.1f} {share:>8}")
        if wall_seconds:
            main = sum(seconds[stage] for stage in STAGES if stage not in WORKER_STAGES)
            lines.append(f"{'other':<12} {max(0.0, wall_seconds - main):9.3f} {'':>9} "
                         f"{100 * max(0.0, wall_seconds - main) / wall_seconds:7.1f}%")
            lines.append(f"{'wall':<12} {wall_seconds:9.3f} "
                         f"{(1e3 * wall_seconds / self.images if self.images else 0.0):9.1f}")
        return "\n".join(lines)
