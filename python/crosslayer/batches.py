"""Batched decode -> backbone streaming: images are decoded by a thread pool while the previous batch runs.

Yields `ActivationBatch`es in input order; a bad image is reported in the batch's ``errors`` (on_error="skip") or
raised as `ImageError` (on_error="raise").
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from crosslayer.images import ImageError

ON_ERROR = ("raise", "skip")


@dataclass
class ActivationBatch:
    positions: list  # index in the input sequence of each row of the arrays
    sources: list  # the input items (paths or arrays) of those rows
    outputs: dict  # output name -> (rows, ...) float32 array
    errors: list = field(default_factory=list)  # (position, ImageError) of images that failed in this batch


def stream_batches(sources, prepare, run, batch_size: int, decode_workers: int = 2, on_error: str = "raise"):
    """prepare(source) -> (3, H, W) float32; run(images (n, 3, H, W)) -> {name: array}. A generator of batches."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
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
                try:
                    arrays.append(future.result())
                except ImageError as error:
                    if on_error == "raise":
                        for _, _, other in pending:
                            other.cancel()
                        raise
                    errors.append((position, error))
                    continue
                positions.append(position)
                kept.append(source)
            submit(batch_size)
            outputs = run(np.stack(arrays)) if arrays else {}
            yield ActivationBatch(positions, kept, outputs, errors)
