"""Gram matrix of sign codes: compact popcount kernel vs 2-plane popcount kernel vs float32 GEMM (numpy BLAS sgemm
of the same shapes, on the same ternary values).

    PYTHONPATH=python python benchmarks/bench_gram.py [--n 2000] [--dk 1280] [--dt 320] [--dead 0.011]
                                                      [--codes INDEXES/f17f18/scene15/codes]
                                                      [--zeros INDEXES/f17f18/scene15/codes ...]

Codes are random signs with a fraction --dead of dead (all-zero) channels, what pooling produces (1.1% on scene15
with the default pair), or the first --n codes of a code index (--codes). Checks first: the compact kernel against
the numpy reference on a slice, then all three full Gram matrices against each other (integer sums below 2^24 are
exact in float32). Then prints each time (best of --repeats), the ratios and the load average, and the bytes an
image of both layouts for the default pair (1280 x 320) and features.16 x 17 (320 x 160). --zeros counts, over every
code of the given code indexes, channels that are partly zero and exact zero values inside live channels (what the
compact layout cannot store; it codes such a zero as +1).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np

import crosslayer
from crosslayer import Codes, reference
from crosslayer.compact import bytes_per_image, full_row


def random_compactable(rng, n: int, dk: int, dt: int, dead: float, chunk: int = 25) -> Codes:
    """Random +-1 signs, a fraction `dead` of channels all zero; packed `chunk` images at a time (the reference
    packer's temporaries are 8 bytes a value)."""
    parts = []
    for start in range(0, n, chunk):
        signs = rng.choice(np.array([-1, 1], np.int8), size=(min(chunk, n - start), dk, dt))
        signs[rng.random(signs.shape[:2]) < dead] = 0
        parts.append(reference.pack_ternary(signs))
    return Codes(np.concatenate(parts), rng.random((n, dk), dtype=np.float32), dt)


def index_codes(path, n: int) -> Codes:
    with crosslayer.CodeIndex.open(path) as index:
        return index.get(np.arange(min(n, len(index)))).expanded()


def dense_float32(codes: Codes, chunk: int = 50) -> np.ndarray:
    out = np.empty((len(codes), codes.Dk * codes.Dt), np.float32)
    for start in range(0, len(codes), chunk):
        stop = min(start + chunk, len(codes))
        out[start:stop] = reference.unpack_ternary(codes.bits[start:stop], codes.Dt).reshape(stop - start, -1)
    return out


def best_of(repeats: int, run):
    """(result, best wall seconds, CPU seconds of that run)."""
    best = (None, float("inf"), 0.0)
    for _ in range(repeats):
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if wall < best[1]:
            best = (result, wall, cpu)
    return best


def count_zeros(paths) -> None:
    for path in paths:
        with crosslayer.CodeIndex.open(path) as index:
            live_total = partial = zeros_in_live = dead = 0
            for start in range(0, len(index), 256):
                codes = index.get(np.arange(start, min(start + 256, len(index)))).expanded()
                nonzero = codes.bits[:, :, 0, :]
                live = nonzero.any(axis=2)
                partial += int((live & (nonzero != full_row(codes.Dt)).any(axis=2)).sum())
                zeros_in_live += int(codes.Dt * live.sum() - np.bitwise_count(nonzero).sum(dtype=np.int64))
                live_total += int(live.sum())
                dead += int((~live).sum())
            print(f"{path}: {len(index)} images, {live_total + dead} channels: {dead / (live_total + dead):.2%} dead, "
                  f"{partial} partly zero, {zeros_in_live} exact zeros inside live channels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dk", type=int, default=1280)
    parser.add_argument("--dt", type=int, default=320)
    parser.add_argument("--dead", type=float, default=0.011, help="fraction of dead channels of random codes")
    parser.add_argument("--codes", default=None, help="a code index to take the first --n codes from")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--zeros", nargs="*", default=[], help="code indexes to count zeros in (see above)")
    args = parser.parse_args()
    for dk, dt, name in ((1280, 320, "default pair features.17 x 18"), (320, 160, "features.16 x 17")):
        before, after = bytes_per_image("two_plane", dk, dt), bytes_per_image("compact", dk, dt)
        print(f"bytes/image, {name} (Dk {dk} x Dt {dt}): 2-plane {before} -> compact {after} "
              f"({before / after:.2f}x smaller; + {4 * dk} bytes of channel means either way)")
    count_zeros(args.zeros)

    if args.codes:
        two_plane = index_codes(args.codes, args.n)
    else:
        two_plane = random_compactable(np.random.default_rng(0), args.n, args.dk, args.dt, args.dead)
    compact = two_plane.compact()
    n, dk, dt = len(two_plane), two_plane.Dk, two_plane.Dt
    print(f"\n{n} codes of Dk={dk} x Dt={dt} ({'from ' + args.codes if args.codes else f'random, {args.dead:.1%} dead channels'}): "
          f"{two_plane.bits.nbytes / 1e6:.0f} MB 2-plane, {compact.bits.nbytes / 1e6:.0f} MB compact; popcount path "
          f"{crosslayer.popcount_path()}, {crosslayer.build_info()['openmp_max_threads']} threads; "
          f"load average before {os.getloadavg()[0]:.2f}")

    # correctness first: the compact kernel against the numpy reference, then the three against each other
    part = compact[:48]
    if not np.array_equal(crosslayer.gram(part), reference.compact_gram_reference(part.bits, part.bits, dk, dt)):
        raise SystemExit("MISMATCH: compact Gram differs from the numpy reference")
    crosslayer.gram(compact[:8]), crosslayer.gram(two_plane[:8])  # warm-up
    compact_gram, compact_s, compact_cpu = best_of(args.repeats, lambda: crosslayer.gram(compact))
    two_plane_gram, two_plane_s, two_plane_cpu = best_of(args.repeats, lambda: crosslayer.gram(two_plane))
    dense = dense_float32(two_plane)
    sgemm, sgemm_s, sgemm_cpu = best_of(args.repeats, lambda: dense @ dense.T)
    del dense
    if not np.array_equal(compact_gram, two_plane_gram) or not np.array_equal(compact_gram, sgemm.astype(np.int64)):
        raise SystemExit("MISMATCH: compact Gram, 2-plane Gram and float32 GEMM differ")
    print("check: compact Gram == numpy reference (48 codes); compact == 2-plane == float32 GEMM (all codes)")
    pairs = n * n
    print(f"compact gram (symmetric):  {compact_s:8.3f} s  ({pairs / compact_s / 1e6:.1f} M pairs/s, "
          f"CPU {compact_cpu:.2f} s)")
    print(f"2-plane gram (symmetric):  {two_plane_s:8.3f} s  ({pairs / two_plane_s / 1e6:.1f} M pairs/s, "
          f"CPU {two_plane_cpu:.2f} s)")
    print(f"float32 GEMM (numpy BLAS): {sgemm_s:8.3f} s  ({2 * pairs * dk * dt / sgemm_s / 1e9:.1f} GFLOP/s, "
          f"CPU {sgemm_cpu:.2f} s)")
    print(f"ratio compact vs float32 GEMM: {sgemm_s / compact_s:.1f}x (wall), {sgemm_cpu / compact_cpu:.1f}x (CPU)")
    print(f"ratio compact vs 2-plane:      {two_plane_s / compact_s:.2f}x (wall), "
          f"{two_plane_cpu / compact_cpu:.2f}x (CPU)")
    print(f"ratio 2-plane vs float32 GEMM: {sgemm_s / two_plane_s:.1f}x (wall)")
    half = n // 2
    _, general_s, _ = best_of(1, lambda: crosslayer.gram(compact[:half], compact[half:]))
    print(f"compact gram {half} x {n - half} (no symmetry): {general_s:.3f} s")
    print(f"load average after {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")


if __name__ == "__main__":
    main()
