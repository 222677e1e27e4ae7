"""Gram matrix of sign codes (popcount kernel) vs float32 GEMM (numpy BLAS) on the same ternary values.

    PYTHONPATH=python python benchmarks/bench_gram.py [--n 2000] [--dk 1280] [--dt 320]

Checks that both give identical values, then prints kernel time, reference time and their ratio.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
from tqdm import tqdm

import crosslayer
from crosslayer.reference import unpack_ternary

from _common import random_codes


def dense_float32(codes, chunk: int = 50) -> np.ndarray:
    out = np.empty((len(codes), codes.Dk * codes.Dt), np.float32)
    for start in tqdm(range(0, len(codes), chunk), desc="dense float32", leave=False):
        stop = min(start + chunk, len(codes))
        out[start:stop] = unpack_ternary(codes.bits[start:stop], codes.Dt).reshape(stop - start, -1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dk", type=int, default=1280)
    parser.add_argument("--dt", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    codes = random_codes(np.random.default_rng(args.seed), args.n, args.dk, args.dt)
    print(f"\n{args.n} codes of Dk={args.dk} x Dt={args.dt} ({codes.bits.nbytes / 1e6:.0f} MB of codes); "
          f"popcount path {crosslayer.popcount_path()}, {crosslayer.build_info()['openmp_max_threads']} threads")

    crosslayer.gram(codes[:8])  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    kernel = crosslayer.gram(codes)
    kernel_s, kernel_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    dense = dense_float32(codes)
    start, cpu_start = time.perf_counter(), time.process_time()
    reference = dense @ dense.T
    reference_s, reference_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    del dense
    gc.collect()

    # Integer sums below 2^24 are exact in float32, so the values must be identical.
    if not np.array_equal(kernel, reference.astype(np.int64)):
        raise SystemExit("MISMATCH: popcount Gram differs from the float32 GEMM")
    pairs = args.n * args.n
    print("check: identical values to the float32 GEMM")
    print(f"popcount gram (symmetric): {kernel_s:8.3f} s  ({pairs / kernel_s / 1e6:.1f} M pairs/s)")
    print(f"float32 GEMM (numpy BLAS): {reference_s:8.3f} s  "
          f"({2 * pairs * args.dk * args.dt / reference_s / 1e9:.1f} GFLOP/s)")
    print(f"ratio: {reference_s / kernel_s:.1f}x faster (wall clock); CPU seconds {kernel_cpu:.2f} vs {reference_cpu:.2f}: "
          f"{reference_cpu / kernel_cpu:.1f}x (fairer on a shared machine)")
    half = args.n // 2
    start = time.perf_counter()
    crosslayer.gram(codes[:half], codes[half:])  # the general (non-symmetric) path
    print(f"popcount gram {half} x {args.n - half} (no symmetry): {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
