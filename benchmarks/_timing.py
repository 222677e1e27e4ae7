"""Timing helpers shared by the benchmarks: best-of-k wall time after a warm-up, and a ratio line."""

from __future__ import annotations

import time


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
