"""Batched decode -> backbone streaming: images are decoded by a thread pool while the previous batch runs.

Yields `ActivationBatch`es in input order; a bad image is reported in the batch's ``errors`` (on_error="skip") or
raised as `ImageError` (on_error="raise").
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from crosslayer.errors import UsageError
from crosslayer.images import ImageError

ON_ERROR = ("raise", "skip")
# What one batch may take: its float32 network inputs plus the backbone's activation maps (estimated per backbone by
# `BackboneSpec.bytes_per_input`). 4 GiB lets the default (MobileNetV2, side 448, batch 16: ~0.45 GB) run as asked on
# a small machine shared with others, lowers the batch of large sides (MobileNetV2 at side 2048: 7 images) instead of letting the
# process be killed for memory, and refuses one input that alone exceeds it (VGG at side 4096: ~8.8 GB).
BATCH_MEMORY_BUDGET = 4 << 30


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UsageError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return int(batch_size)


def batch_size_within_budget(wanted: int, bytes_per_input: int, what: str, budget: int | None = None) -> int:
    """The most network inputs (at most `wanted`) one run may take within the memory budget; `UsageError` when even
    one input exceeds it (`what` names the setting that makes inputs this large)."""
    budget = BATCH_MEMORY_BUDGET if budget is None else budget
    fits = budget // max(1, int(bytes_per_input))
    if fits < 1:
        raise UsageError(f"side: one network input at {what} needs ~{bytes_per_input / 2**30:.1f} GiB, over the "
                         f"per-batch memory budget of {budget / 2**30:.1f} GiB; use a smaller side")
    return max(1, min(int(wanted), fits))


@dataclass
class ActivationBatch:
    positions: list  # index in the input sequence of each row of the arrays
    sources: list  # the input items (paths or arrays) of those rows
    outputs: dict  # output name -> (rows, ...) float32 array
    errors: list = field(default_factory=list)  # (position, ImageError) of images that failed in this batch
    network_seconds: float = 0.0  # wall time of run() on this batch (the network's share of the work)


def stream_batches(sources, prepare, run, batch_size: int, decode_workers: int = 2, on_error: str = "raise",
                   stage_times=None):
    """prepare(source) -> (3, H, W) float32; run(images (n, 3, H, W)) -> {name: array}. A generator of batches.

    stage_times: a `crosslayer.stage_times.StageTimes` that gets the seconds this thread waited for decoded images
    (decode_wait), stacked them (batch) and ran the network (inference), and the images done."""
    clock = time.perf_counter
    if on_error not in ON_ERROR:
        raise UsageError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
    batch_size = check_batch_size(batch_size)
    items = iter(enumerate(sources))
    with ThreadPoolExecutor(max_workers=max(1, decode_workers), thread_name_prefix="crosslayer-decode") as pool:
        pending: deque = deque()

        def submit(count: int) -> None:
            for _ in range(count):
                try:
                    position, source = next(items)
                except StopIteration:
                    return
                pending.append((position, source, pool.submit(prepare, source)))

        # two batches in flight: one being gathered, the next decoding while the backbone runs
        submit(2 * batch_size)
        while pending:
            positions, kept, arrays, errors = [], [], [], []
            while pending and len(positions) + len(errors) < batch_size:
                position, source, future = pending.popleft()
                waited = clock()
                try:
                    arrays.append(future.result())
                except ImageError as error:
                    if on_error == "raise":
                        for _, _, other in pending:
                            other.cancel()
                        raise
                    errors.append((position, error))
                    continue
                finally:
                    if stage_times is not None:
                        stage_times.add("decode_wait", clock() - waited)
                positions.append(position)
                kept.append(source)
            submit(batch_size)
            begin = clock()
            stacked = np.stack(arrays) if arrays else None
            stacked_at = clock()
            outputs = run(stacked) if arrays else {}
            done = clock()
            if stage_times is not None:
                stage_times.add("batch", stacked_at - begin)
                stage_times.add("inference", done - stacked_at)
                stage_times.count(len(positions) + len(errors))
            yield ActivationBatch(positions, kept, outputs, errors, done - begin)
