"""The bf16 pooling's last step on the core (issue 13): 16 images of random pooled values P (1280, 320) to compact
codes, in core-ms an image (wall time x threads / images, median of --reps calls), at 1 and 2 threads.

    old way: finish_pooled(P, channel_mean, "codes") (2-plane) then Codes.compact(lossy=True) in numpy
    new way: finish_pooled(P, channel_mean, "codes", layout="compact"), packed by the kernel
    (and the 2-plane finish alone, the old way's kernel share)

each on every sign packing path the CPU has (AVX-512, portable). Checked first: both ways give the same bits. Run it
on an older build too (PYTHONPATH=<its package folder>): rows its core lacks (layout, paths) are skipped.

    PYTHONPATH=python python benchmarks/bench_finish.py [--reps 15] [--images 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from crosslayer import pooling


def core_ms_per_image(call, threads: int, images: int, reps: int) -> float:
    call()  # warm: first-touch of outputs, OpenMP pool
    seconds = []
    for _ in range(reps):
        begin = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - begin)
    return statistics.median(seconds) * 1000 * threads / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--dk", type=int, default=1280)
    parser.add_argument("--dt", type=int, default=320)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((args.images, args.dk, args.dt)).astype(np.float32)
    pooled[:, rng.random(args.dk) < 0.012] = 0  # dead channels, as real images have (1.2% on scene15)
    channel_mean = np.abs(pooled).mean(axis=2)
    has_layout = hasattr(pooling, "sign_pack_paths")
    paths = pooling.sign_pack_paths() if has_layout else ["(built-in)"]

    def two_plane_only(threads):
        return pooling.finish_pooled(pooled, channel_mean, "codes", threads, check_finite=False)

    def old_way(threads):
        return pooling.finish_pooled(pooled, channel_mean, "codes", threads, check_finite=False).compact(lossy=True)

    def new_way(threads):
        return pooling.finish_pooled(pooled, channel_mean, "codes", threads, check_finite=False, layout="compact")

    if has_layout:
        assert np.array_equal(old_way(2).bits, new_way(2).bits)
    print(f"finish of {args.images} images of P ({args.dk}, {args.dt}) to compact codes, core-ms an image "
          f"(median of {args.reps})")
    print(f"{'path':<12}{'way':<34}{'1 thread':>10}{'2 threads':>11}")
    for path in paths:
        if has_layout:
            pooling.set_sign_pack_path(path)
        ways = [("2-plane only", two_plane_only), ("2-plane + compact(lossy=True)", old_way)]
        if has_layout:
            ways.append(("compact from the kernel", new_way))
        for name, way in ways:
            row = [core_ms_per_image(lambda way=way, threads=threads: way(threads), threads, args.images, args.reps)
                   for threads in (1, 2)]
            print(f"{path:<12}{name:<34}{row[0]:>10.3f}{row[1]:>11.3f}")
    if has_layout:
        pooling.set_sign_pack_path(paths[0])


if __name__ == "__main__":
    main()
