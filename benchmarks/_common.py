"""Helpers shared by the benchmarks: random codes generated without dense intermediates, bandwidth probes, and
best-of-k timing with a ratio line."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from crosslayer import Codes


def random_code_bits(rng, n: int, dk: int, dt: int, chunk: int = 1000, desc: str = "codes") -> np.ndarray:
    """(n, Dk, 2, words) uint64 with about 1/2 nonzero values, half of them negative (Dt must be a multiple of 64)."""
    if dt % 64:
        raise ValueError("Dt: the benchmarks generate whole words, use a multiple of 64")
    words = dt // 64
    bits = np.empty((n, dk, 2, words), np.uint64)
    for start in tqdm(range(0, n, chunk), desc=desc, leave=False):
        stop = min(start + chunk, n)
        nonzero = rng.integers(0, 2**64, size=(stop - start, dk, words), dtype=np.uint64, endpoint=False)
        negative = rng.integers(0, 2**64, size=(stop - start, dk, words), dtype=np.uint64, endpoint=False) & nonzero
        bits[start:stop, :, 0] = nonzero
        bits[start:stop, :, 1] = negative
    return bits


def random_codes(rng, n: int, dk: int, dt: int, desc: str = "codes") -> Codes:
    return Codes(random_code_bits(rng, n, dk, dt, desc=desc), rng.random((n, dk), dtype=np.float32), dt)


def memory_bandwidth_gbs(megabytes: int = 1024, repeats: int = 3) -> float:
    """Copy bandwidth of this machine (bytes read + written per second), best of `repeats`, in GB/s."""
    source = np.ones(megabytes * 2**20 // 8, np.float64)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


def read_bandwidth_gbs(megabytes: int = 1024, repeats: int = 3) -> float:
    """Read bandwidth of one thread (numpy sum of `megabytes` of uint64), best of `repeats`, in GB/s."""
    source = np.ones(megabytes * 2**20 // 8, np.uint64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - start)
    return source.nbytes / best / 1e9


def best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ratio_line(label: str, kernel_s: float, reference_s: float, reference_name: str) -> str:
    return (f"{label:<34} kernel {kernel_s * 1e3:9.2f} ms   {reference_name} {reference_s * 1e3:9.2f} ms   "
            f"ratio {reference_s / kernel_s:6.2f}x")
