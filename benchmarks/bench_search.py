"""Masked top-k search on sign codes vs FAISS IndexBinaryFlat and the numpy reference.

    PYTHONPATH=python python benchmarks/bench_search.py [--items 20000] [--queries 32] [--channels 50]

Database: --items codes of Dk=1280 x Dt=320 (MobileNetV2 layout; 102 KB of codes per item, so the default 20,000
items = 2 GB; the paper-sized --items 100000 = 10 GB ran in results/search_100k.md; kernel time
scales linearly with --items). A masked search scores channels * 2 * ceil(Dt/64) * 8 bytes of codes per item and
query; FAISS scans a random binary database of that many bytes per item (same bits per comparison). The numpy
reference runs on a subset (--reference-items, --reference-queries) and is scaled linearly. The kernel's result is
first checked against the reference on that subset. Throughput = bytes of codes scored per second. Kernel and FAISS
run alternately (--repeats rounds) so that both see the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import crosslayer
from crosslayer import reference

from _common import memory_bandwidth_gbs, random_codes, read_bandwidth_gbs


def timed(fn):
    """Wall-clock and CPU seconds (all threads) of one run."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu_start


def interleaved(repeats, kernel, baseline):
    """Runs kernel and baseline alternately `repeats` times, so both see the same machine load (it changes by the
    second on a shared machine). Returns the best (wall, cpu) of each and the median of the per-round time ratios."""
    kernel_runs, baseline_runs = [], []
    for _ in range(repeats):
        kernel_runs.append(timed(kernel))
        baseline_runs.append(timed(baseline))
    ratios = sorted(b[0] / k[0] for k, b in zip(kernel_runs, baseline_runs))
    return min(kernel_runs), min(baseline_runs), ratios[len(ratios) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dk", type=int, default=1280)
    parser.add_argument("--dt", type=int, default=320)
    parser.add_argument("--reference-items", type=int, default=300)
    parser.add_argument("--reference-queries", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    bandwidth, read_bandwidth = memory_bandwidth_gbs(), read_bandwidth_gbs()
    database = random_codes(rng, args.items, args.dk, args.dt, desc="database")
    queries = random_codes(rng, args.queries, args.dk, args.dt, desc="queries")
    scored_bytes_per_item = args.channels * 2 * ((args.dt + 63) // 64) * 8
    print(f"\nmachine: copy bandwidth {bandwidth:.1f} GB/s (numpy copy of 1 GiB, read + write), one-thread read "
          f"bandwidth {read_bandwidth:.1f} GB/s (numpy sum of 1 GiB), "
          f"{crosslayer.build_info()['openmp_max_threads']} threads, popcount path {crosslayer.popcount_path()}")
    print(f"database: {args.items} items x Dk={args.dk} x Dt={args.dt} ({database.bits.nbytes / 1e9:.2f} GB of codes); "
          f"{args.queries} queries, channels={args.channels}, k={args.k}; {scored_bytes_per_item} bytes scored per item")

    # Check against the reference on the subset first.
    sub_db, sub_q = database[: args.reference_items], queries[: args.reference_queries]
    start = time.perf_counter()
    expected = reference.search_reference(sub_q.bits, sub_q.channel_mean, sub_db.bits, args.dt, args.k, args.channels)
    reference_s = time.perf_counter() - start
    got = crosslayer.search(sub_q, sub_db, k=args.k, channels=args.channels)
    if not (np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])):
        raise SystemExit("MISMATCH: kernel search differs from the reference")
    print(f"check: identical scores and ids to the reference on {len(sub_q)} queries x {len(sub_db)} items")
    reference_scaled = reference_s * (args.items / len(sub_db)) * (args.queries / len(sub_q))

    scored = args.queries * args.items * scored_bytes_per_item

    import faiss

    faiss_db = rng.integers(0, 256, size=(args.items, scored_bytes_per_item), dtype=np.uint8)
    faiss_q = rng.integers(0, 256, size=(args.queries, scored_bytes_per_item), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(scored_bytes_per_item * 8)
    index.add(faiss_db)
    (kernel_s, kernel_cpu), (faiss_s, faiss_cpu), median_ratio = interleaved(
        args.repeats,
        lambda: crosslayer.search(queries, database, k=args.k, channels=args.channels),
        lambda: index.search(faiss_q, args.k),
    )
    load = os.getloadavg()[0]

    print(f"crosslayer masked search: {kernel_s:8.3f} s  {scored / kernel_s / 1e9:7.2f} GB/s of codes scored  "
          f"(database streamed at {database.bits.nbytes / kernel_s / 1e9:.2f} GB/s), {kernel_cpu:.2f} CPU s")
    print(f"FAISS IndexBinaryFlat:    {faiss_s:8.3f} s  {scored / faiss_s / 1e9:7.2f} GB/s of codes scored  "
          f"({faiss.omp_get_max_threads()} threads), {faiss_cpu:.2f} CPU s")
    print(f"numpy reference (scaled from {len(sub_q)} x {len(sub_db)}): {reference_scaled:8.1f} s")
    print(f"ratio: {faiss_s / kernel_s:.2f}x FAISS throughput (best times), median of {args.repeats} interleaved rounds "
          f"{median_ratio:.2f}x; {reference_scaled / kernel_s:.0f}x the reference; load average {load:.1f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
