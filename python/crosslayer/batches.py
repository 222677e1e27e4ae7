"""Batched decode -> backbone streaming: images are decoded by a thread pool while the previous batch runs.

Yields `ActivationBatch`es in input order; a bad image is reported in the batch's ``errors`` (on_error="skip") or
raised as `ImageError` (on_error="raise").
"""

from __future__ import annotations

import threading
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


# Batch buffers when images are prepared in place: the batch being gathered, the one decoding ahead of it and the one
# the backbone may still read (OpenVINO reads its input in place) or the consumer has not yet let go of.
BATCH_BUFFERS = 3


class BatchBuffers:
    """The float32 buffers `stream_batches` prepares images into, kept from one call to the next by their owner (an
    encoder): fresh ones cost a page fault every 4 KiB on first write (~115 MB at batch 16, side 448), measurable
    next to the network on a call of a hundred images. One call at a time uses them; a call finding them in use
    takes buffers of its own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._arrays: list = []

    def acquire(self) -> bool:
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        self._lock.release()

    def get(self, index: int, shape: tuple) -> np.ndarray:
        """Buffer `index` of at least shape[0] rows of shape[1:] (a view of exactly `shape`)."""
        while len(self._arrays) <= index:
            self._arrays.append(None)
        array = self._arrays[index]
        if array is None or array.shape[1:] != shape[1:] or array.shape[0] < shape[0]:
            array = self._arrays[index] = np.empty(shape, np.float32)
        return array[: shape[0]]

    def clear(self) -> None:
        """Lets the buffers go (they are made again when next needed)."""
        self._arrays = []


def stream_batches(sources, prepare, run, batch_size: int, decode_workers: int = 2, on_error: str = "raise",
                   stage_times=None, input_shape=None, buffers: BatchBuffers | None = None, start=None):
    """prepare(source) -> (3, H, W) float32; run(images (n, 3, H, W)) -> {name: array}. A generator of batches.

    input_shape: when given, prepare(source, out) writes the network input into `out`, a float32 array of that shape
    (its row of a preallocated batch), so no per-image array is made and nothing is stacked. The array run() gets is
    then a view of one of `BATCH_BUFFERS` buffers, which decode workers do not write again until that batch has been
    yielded and the next one asked for. stage_times: a `crosslayer.stage_times.StageTimes` that gets the seconds this
    thread waited for decoded images (decode_wait), assembled them into a batch (batch: stacking, or with input_shape
    only moving rows up over skipped images) and ran the network (inference), and the images done. buffers: where
    the batch buffers come from when free (`BatchBuffers`, kept by the caller between calls); each holds at most
    as many rows as there are sources (one query image: one row, not a batch). start: optional, start(images) ->
    an object whose result() waits for run(images)'s outputs (`OpenVinoBackbone.start`); the next batch is then
    started before the last one is waited for and yielded, so the backbone never waits at a batch's end (one
    buffer more is used)."""
    if on_error not in ON_ERROR:
        raise UsageError(f"on_error: expected one of {ON_ERROR}, got {on_error!r}")
    batch_size = check_batch_size(batch_size)
    owned = buffers is not None and buffers.acquire()
    try:
        yield from _stream(sources, prepare, run, batch_size, decode_workers, on_error, stage_times, input_shape,
                           buffers if owned else BatchBuffers(), start)
    finally:
        if owned:
            buffers.release()


class _Ran:
    """The outputs of a run already done, in the shape of a started one's (`result()`)."""

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def result(self) -> dict:
        return self.outputs


def _stream(sources, prepare, run, batch_size, decode_workers, on_error, stage_times, input_shape, store, start):
    clock = time.perf_counter
    # with `start` one batch more is held: the one the backbone still runs while the next is started
    count = BATCH_BUFFERS + (start is not None)
    buffers = None
    if input_shape is not None:
        try:
            rows = max(1, min(batch_size, len(sources)))
        except TypeError:  # an iterator: its length is unknown
            rows = batch_size
        shape = (rows, *(int(d) for d in input_shape))
        buffers = [store.get(i, shape) for i in range(count)]
    items = iter(enumerate(sources))
    submitted = 0  # items handed to the workers: item j goes to row j % batch_size of batch j // batch_size
    running = None  # with `start`: the batch the backbone runs, yielded once the next one is started

    def finished(batch) -> ActivationBatch:
        positions, kept, errors, begin, stacked_at, handle = batch
        outputs = handle.result() if handle is not None else {}
        done = clock()
        if stage_times is not None:
            stage_times.add("batch", stacked_at - begin)
            stage_times.add("inference", done - stacked_at)
            stage_times.count(len(positions) + len(errors))
        return ActivationBatch(positions, kept, outputs, errors, done - begin)

    with ThreadPoolExecutor(max_workers=max(1, decode_workers), thread_name_prefix="crosslayer-decode") as pool:
        pending: deque = deque()

        def submit(count: int) -> None:
            nonlocal submitted
            for _ in range(count):
                try:
                    position, source = next(items)
                except StopIteration:
                    return
                if buffers is None:
                    future = pool.submit(prepare, source)
                else:
                    row = buffers[(submitted // batch_size) % len(buffers)][submitted % batch_size]
                    future = pool.submit(prepare, source, row)
                pending.append((position, source, future))
                submitted += 1

        try:
            # two batches in flight: one being gathered, the next decoding while the backbone runs
            submit(2 * batch_size)
            gathered = 0  # batches gathered so far
            while pending:
                positions, kept, arrays, rows, errors = [], [], [], [], []
                while pending and len(positions) + len(errors) < batch_size:
                    position, source, future = pending.popleft()
                    waited = clock()
                    try:
                        result = future.result()
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
                    rows.append(len(positions) + len(errors))
                    if buffers is None:
                        arrays.append(result)
                    positions.append(position)
                    kept.append(source)
                # the buffer this submission fills held a batch that has been yielded and released by now
                submit(batch_size)
                begin = clock()
                if not positions:
                    stacked = None
                elif buffers is None:
                    stacked = np.stack(arrays)
                else:
                    buffer = buffers[gathered % len(buffers)]
                    # rows of skipped images are left out (a copy, only then)
                    stacked = buffer[: len(rows)] if not errors else buffer[rows]
                gathered += 1
                stacked_at = clock()
                if start is not None:
                    handle = start(stacked) if positions else None
                    # held as running before the last batch is handed over: a consumer that stops there still has
                    # this one waited for
                    previous, running = running, (positions, kept, errors, begin, stacked_at, handle)
                    if previous is not None:
                        yield finished(previous)
                    continue
                yield finished((positions, kept, errors, begin, stacked_at, _Ran(run(stacked)) if positions else None))
            if running is not None:
                previous, running = running, None
                yield finished(previous)
        finally:
            # a batch still running reads its buffer: waited for before the buffers can go to another call
            if running is not None and running[-1] is not None:
                try:
                    running[-1].result()
                except Exception:  # noqa: BLE001 - the error that ended the stream is the one to report
                    pass
