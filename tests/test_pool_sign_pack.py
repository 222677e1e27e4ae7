"""The sign packing paths behind the pooling's codes (AVX-512, portable; csrc/include/crosslayer/sign_pack.h): every
path packs the same bits as the numpy reference and refuses non-finite pooled values, Dt off multiples of 64 and
16 included."""

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
from crosslayer.pooling import finish_pooled, set_sign_pack_path, sign_pack_path, sign_pack_paths

PATHS = sign_pack_paths()


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
        pooled[image, channel, ::draw(st.integers(1, 5))] = 0  # exact zeros inside a live channel
        pooled[image, (channel + 1) % dk, ::draw(st.integers(1, 5))] = -0.0  # zero, not negative
        if draw(st.booleans()):
            pooled[image, (channel + 2) % dk] = -0.0  # a channel of -0.0 only is all zero
    return pooled, draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from(PATHS))


@given(pooled_values())
def test_every_path_packs_the_reference_bits(values):
    pooled, threads, path = values
    channel_mean = np.abs(pooled).mean(axis=2, dtype=np.float32)
    with packing_path(path):
        codes = finish_pooled(pooled, channel_mean, output="codes", num_threads=threads)
    assert np.array_equal(codes.bits, ref.pack_ternary(ref.sign_quantize(pooled)))


def test_special_values_on_every_path():
    """Denormals, the extremes of float32 and -0.0 in every lane of a full word and of tail words of each size."""
    tiny = np.float32(1e-45)  # the smallest denormal
    lanes = np.array([0.0, -0.0, tiny, -tiny, np.finfo(np.float32).max, -np.finfo(np.float32).max, 1.0, -1.0],
                     np.float32)
    for dt in (1, 7, 16, 17, 33, 64, 65, 79, 130):
        pooled = np.stack([np.roll(np.resize(lanes, dt), shift) for shift in range(len(lanes))])[None]
        for path in PATHS:
            with packing_path(path):
                codes = finish_pooled(pooled, np.zeros(pooled.shape[:2], np.float32), "codes")
            assert np.array_equal(codes.bits, ref.pack_ternary(ref.sign_quantize(pooled))), (dt, path)


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_pooled_values_are_an_error_wherever_they_are(path):
    """In a full word, in a tail word (a whole and a partial 16-lane group), in the last value; one bad value among
    many channels and threads still fails the call."""
    for dt in (5, 16, 20, 64, 70, 150):
        for position in sorted({0, dt // 2, dt - 1, min(63, dt - 1), min(64, dt - 1)}):
            for bad in (np.nan, np.inf, -np.inf):
                pooled = np.ones((3, 70, dt), np.float32)
                pooled[2, 66, position] = bad
                with packing_path(path), pytest.raises(ValueError, match="pooled values are not finite"):
                    finish_pooled(pooled, np.zeros((3, 70), np.float32), "codes", num_threads=3, check_finite=False)


@pytest.mark.parametrize("threads", [1, 3])
def test_pool_overflow_is_an_error_on_every_path(rng, threads):
    x = rng.random((2, 5, 2, 2)).astype(np.float32) * np.float32(1e20)
    a = rng.random((2, 70, 2, 2)).astype(np.float32) * np.float32(1e20)
    for path in PATHS:
        with packing_path(path), pytest.raises(ValueError, match="pooled values are not finite"):
            crosslayer.pool(x, a, output="codes", num_threads=threads)
