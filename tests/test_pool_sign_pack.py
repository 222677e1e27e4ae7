"""The pooling's codes as the kernels pack them: the sign packing paths (AVX-512, portable;
csrc/include/crosslayer/sign_pack.h) and compact codes straight from the kernels (`pool` / `finish_pooled` with
layout="compact").

Every path packs the numpy reference's bits and refuses non-finite pooled values. The compact bits must be exactly
two_plane_to_compact(2-plane bits, Dt, lossy=True) of the same call's 2-plane bits (and `reference.pack_compact` of
the pooled values) on every path, at 1, 2 and 3 threads (channel blocks of different threads then share a live
word), with Dt and Dk off multiples of 64 and 16."""

import contextlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crosslayer
from crosslayer import reference as ref
from crosslayer.compact import compact_words_per_image, two_plane_to_compact
from crosslayer.errors import UsageError
from crosslayer.pooling import finish_pooled, set_sign_pack_path, sign_pack_path, sign_pack_paths

PATHS = sign_pack_paths()
LAYOUTS = ("two_plane", "compact")


@contextlib.contextmanager
def packing_path(path):
    before = sign_pack_path()
    set_sign_pack_path(path)
    try:
        yield
    finally:
        set_sign_pack_path(before)


def test_paths_fastest_first_and_reported_in_build_info():
    assert PATHS[-1] == "portable" and PATHS[0] == crosslayer.build_info()["sign_pack"] == sign_pack_path()
    for path in PATHS:
        with packing_path(path):
            assert crosslayer.build_info()["sign_pack"] == path
    with pytest.raises(ValueError, match="sign packing path 'sse9': unknown"):
        set_sign_pack_path("sse9")
    assert sign_pack_path() == PATHS[0]


def test_this_machine_tests_the_avx512_path():
    """The AVX-512 path is only tested where the CPU has it: a CPU that has it must get it."""
    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    if not all(re.search(rf"\b{flag}\b", flags) for flag in ("avx512f", "avx512bw", "avx512vl")):
        pytest.skip("this CPU has no AVX-512 F/BW/VL: only the portable path runs here")
    assert "avx512" in PATHS


# ---- finish_pooled ---------------------------------------------------------------------------------------------------

DTS = [1, 2, 15, 16, 17, 31, 48, 63, 64, 65, 100, 127, 128, 130, 200, 320]
DKS = [1, 2, 3, 63, 64, 65, 70, 129, 200]


@st.composite
def pooled_values(draw):
    n = draw(st.sampled_from([0, 1, 2, 3]))
    dk = draw(st.sampled_from(DKS) | st.integers(1, 150))
    dt = draw(st.sampled_from(DTS) | st.integers(1, 330))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e30]))
    pooled = (rng.standard_normal((n, dk, dt)) * scale).astype(np.float32)
    pooled[:, draw(st.lists(st.integers(0, dk - 1), max_size=4))] = 0  # dead channels
    if n:
        image, channel = draw(st.integers(0, n - 1)), draw(st.integers(0, dk - 1))
        pooled[image, channel, ::draw(st.integers(1, 5))] = 0  # exact zeros inside a live channel: coded +1
        pooled[image, (channel + 1) % dk, ::draw(st.integers(1, 5))] = -0.0  # zero, not negative
        if draw(st.booleans()):
            pooled[image, (channel + 2) % dk] = -0.0  # a channel of -0.0 only is dead
    return pooled, draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from(PATHS))


@given(pooled_values())
def test_finish_pooled_packs_the_reference_bits_in_both_layouts(values):
    pooled, threads, path = values
    n, dk, dt = pooled.shape
    channel_mean = np.abs(pooled).mean(axis=2, dtype=np.float32)
    with packing_path(path):
        two_plane = finish_pooled(pooled, channel_mean, output="codes", num_threads=threads)
        compact = finish_pooled(pooled, channel_mean, output="codes", num_threads=threads, layout="compact")
    assert np.array_equal(two_plane.bits, ref.pack_ternary(ref.sign_quantize(pooled)))
    assert compact.layout == "compact" and (len(compact), compact.Dk, compact.Dt) == (n, dk, dt)
    assert compact.bits.shape == (n, compact_words_per_image(dk, dt)) and compact.bits.dtype == np.uint64
    assert np.array_equal(compact.bits, two_plane_to_compact(two_plane.bits, dt, lossy=True))
    assert np.array_equal(compact.bits, ref.pack_compact(pooled))
    assert np.array_equal(compact.channel_mean, channel_mean)
    assert crosslayer.Codes(compact.bits, channel_mean, dt) == compact  # the layout's rules, checked in full


def test_special_values_on_every_path():
    """Denormals, the extremes of float32 and -0.0 in every lane of a full word and of tail words of each size."""
    tiny = np.float32(1e-45)  # the smallest denormal
    lanes = np.array([0.0, -0.0, tiny, -tiny, np.finfo(np.float32).max, -np.finfo(np.float32).max, 1.0, -1.0],
                     np.float32)
    for dt in (1, 7, 16, 17, 33, 64, 65, 79, 130):
        pooled = np.stack([np.roll(np.resize(lanes, dt), shift) for shift in range(len(lanes))])[None]
        channel_mean = np.zeros(pooled.shape[:2], np.float32)
        for path in PATHS:
            with packing_path(path):
                two_plane = finish_pooled(pooled, channel_mean, "codes")
                compact = finish_pooled(pooled, channel_mean, "codes", layout="compact")
            assert np.array_equal(two_plane.bits, ref.pack_ternary(ref.sign_quantize(pooled))), (dt, path)
            assert np.array_equal(compact.bits, ref.pack_compact(pooled)), (dt, path)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", PATHS)
def test_non_finite_pooled_values_are_an_error_wherever_they_are(layout, path):
    """In a full word, in a tail word (a whole and a partial 16-lane group), in the last value; one bad value among
    many channels and threads still fails the call."""
    for dt in (5, 16, 20, 64, 70, 150):
        for position in sorted({0, dt // 2, dt - 1, min(63, dt - 1), min(64, dt - 1)}):
            for bad in (np.nan, np.inf, -np.inf):
                pooled = np.ones((3, 70, dt), np.float32)
                pooled[2, 66, position] = bad
                with packing_path(path), pytest.raises(ValueError, match="pooled values are not finite"):
                    finish_pooled(pooled, np.zeros((3, 70), np.float32), "codes", num_threads=3, check_finite=False,
                                  layout=layout)


# ---- pool: the fused kernel ------------------------------------------------------------------------------------------

@st.composite
def pooling_inputs(draw):
    n = draw(st.sampled_from([0, 1, 2, 3]))
    dt_in = draw(st.sampled_from([1, 3, 16, 17, 64, 65, 70]))
    dk = draw(st.sampled_from(DKS) | st.integers(1, 150))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    local = rng.standard_normal((n, dt_in, h, w)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    guidance[:, draw(st.lists(st.integers(0, dk - 1), max_size=5))] = 0  # dead channels
    pca = None
    if draw(st.booleans()):
        dt = draw(st.sampled_from([1, 5, 16, 17, 63, 64, 65, 130]))
        pca = (rng.standard_normal(dt_in).astype(np.float32), rng.standard_normal((dt_in, dt)).astype(np.float32))
    return local, guidance, pca, draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from(PATHS))


@given(pooling_inputs())
def test_pool_compact_is_the_lossy_conversion_of_its_two_plane_codes(inputs):
    """Same call, same GEMM blocks: the compact bits are the 2-plane bits converted, bit for bit. With n < threads
    the kernel splits an image's channels into blocks that need not start on a live word."""
    local, guidance, pca, threads, path = inputs
    dt = local.shape[1] if pca is None else pca[1].shape[1]
    with packing_path(path):
        two_plane = crosslayer.pool(local, guidance, pca, output="codes", num_threads=threads)
        compact = crosslayer.pool(local, guidance, pca, output="codes", num_threads=threads, layout="compact")
    assert compact.layout == "compact" and (len(compact), compact.Dk, compact.Dt) == (len(local), guidance.shape[1], dt)
    assert np.array_equal(compact.bits, two_plane_to_compact(two_plane.bits, dt, lossy=True))
    assert np.array_equal(compact.channel_mean, two_plane.channel_mean)
    assert crosslayer.Codes(compact.bits, compact.channel_mean, dt) == compact


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_pool_compact_live_words_shared_by_channel_blocks(rng, threads):
    """One image, Dk=200 channels split across threads in blocks of ceil(200 / blocks) channels: the blocks'
    boundaries fall inside live words, whose bits several threads then set. Integer inputs make P exact, so the
    bits equal the reference's, dead channels (every third) included."""
    local = rng.integers(-3, 4, size=(1, 40, 3, 3)).astype(np.float32)
    guidance = rng.integers(1, 3, size=(1, 200, 3, 3)).astype(np.float32)
    guidance[:, ::3] = 0
    for path in PATHS:
        with packing_path(path):
            for _ in range(5):  # a lost OR would show as a missing live bit now and then
                compact = crosslayer.pool(local, guidance, output="codes", num_threads=threads, layout="compact")
                assert np.array_equal(compact.bits, ref.pack_compact(ref.cross_layer_pool(local, guidance)))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("threads", [1, 3])
def test_pool_overflow_is_an_error_on_every_path(rng, layout, threads):
    x = rng.random((2, 5, 2, 2)).astype(np.float32) * np.float32(1e20)
    a = rng.random((2, 70, 2, 2)).astype(np.float32) * np.float32(1e20)
    for path in PATHS:
        with packing_path(path), pytest.raises(ValueError, match="pooled values are not finite"):
            crosslayer.pool(x, a, output="codes", num_threads=threads, layout=layout)


# ---- arguments -------------------------------------------------------------------------------------------------------

def test_layout_is_validated(rng):
    x, a = rng.random((2, 5, 2, 2)).astype(np.float32), rng.random((2, 3, 2, 2)).astype(np.float32)
    pooled = rng.standard_normal((2, 3, 5)).astype(np.float32)
    for call in (lambda layout: crosslayer.pool(x, a, output="codes", layout=layout),
                 lambda layout: finish_pooled(pooled, np.zeros((2, 3), np.float32), "codes", layout=layout)):
        with pytest.raises(UsageError, match=r"layout: expected one of \('two_plane', 'compact'\), got 'packed'"):
            call("packed")
    with pytest.raises(UsageError, match="layout: 'compact' is a layout of codes; output='float'"):
        crosslayer.pool(x, a, layout="compact")
    with pytest.raises(UsageError, match="layout: 'compact' is a layout of codes; output='float'"):
        finish_pooled(pooled, layout="compact")
    assert crosslayer.pool(x, a, output="codes", layout="two_plane").layout == "two_plane"


def test_binding_checks_the_compact_buffer(rng):
    from crosslayer._native import core

    pooled = rng.standard_normal((2, 70, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"compact code output must be \(n, ceil\(Dk/64\) \+ Dk\*ceil\(Dt/64\)\), "
                                         r"got \(2, 71\) for n=2, Dk=70, Dt=5"):
        core.finish_pooled_cpu(pooled, None, np.zeros((2, 71), np.uint64))
    with pytest.raises(ValueError, match="code output must be .*2-plane.*compact"):
        core.finish_pooled_cpu(pooled, None, np.zeros((2, 70, 2), np.uint64))
    x, a = rng.random((2, 5, 2, 2)).astype(np.float32), rng.random((2, 70, 2, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="compact code output must be"):
        core.pool_cpu(x, a, None, None, None, np.zeros((1, 72), np.uint64), None)
