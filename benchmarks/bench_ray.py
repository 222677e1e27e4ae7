"""Ray scale-out vs one process: an image index built from N images (cub100 + scene15) by `ImageIndex.add` and by
`crosslayer.distributed.build_on_ray`, checked identical first (same keys, bit-identical codes); then wall time,
images/s, peak memory of the whole process tree (the driver and every Ray process), the driver's commit cost per
shard (during the build, and adopting 1,000 small shards into one index), and sharded search of 32 queries vs the
single index (results checked equal first). The scaling model built on these numbers is in results/ray.md.

    python benchmarks/bench_ray.py --images 2000          # the issue's size (about an hour on 2 loaded CPUs)
    python benchmarks/bench_ray.py --images 300 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import add_data_argument, data_set  # noqa: E402

from crosslayer import CodeIndex, Codes, reference  # noqa: E402
from crosslayer.distributed import ShardedIndex, build_on_ray, ray_session  # noqa: E402
from crosslayer.distributed.shards import Shard, write_staged_shard  # noqa: E402
from crosslayer.encoder import CrossLayerEncoder  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex  # noqa: E402


def image_paths(root: Path, count: int) -> list[str]:
    """`count` images taken alternately from cub100 and scene15 (manifest order), sorted."""
    sets = []
    for name in ("cub100", "scene15"):
        folder = data_set(root, name)
        with open(folder / "manifest.csv", newline="") as handle:
            sets.append([str(folder / row["path"]) for row in csv.DictReader(handle)])
    chosen = [paths[i] for i in range(max(map(len, sets))) for paths in sets if i < len(paths)][:count]
    if len(chosen) < count:
        raise SystemExit(f"--images: only {len(chosen)} images in the data sets")
    return sorted(chosen)


class TreeMemory:
    """Peak resident memory of this process and all its descendants (Ray's processes), sampled every 0.2 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        parents, rss = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/statm") as handle:
                    rss[int(entry)] = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        tree, grew = {os.getpid()}, True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        return sum(rss.get(pid, 0) for pid in tree)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def index_contents(index):
    keys = sorted(index.keys())
    codes = index.codes.get(index.codes.find(keys))
    return keys, codes.bits, codes.channel_mean


def adopt_cost(folder: Path, shards: int, per_shard: int, dk: int = 1280, dt: int = 64) -> list[float]:
    """Seconds the driver spends adopting each of `shards` staged shards of `per_shard` codes (written beforehand,
    as workers would) into one index: the commit cost as the manifest grows."""
    rng = np.random.default_rng(0)
    staging = folder / "staging"
    staging.mkdir(parents=True)
    signs = rng.integers(-1, 2, size=(per_shard, dk, dt)).astype(np.int8)
    template = Codes(reference.pack_ternary(signs), rng.random((per_shard, dk), dtype=np.float32), dt)
    for number in range(shards):
        keys = [f"s{number:05d}/{i}.jpg" for i in range(per_shard)]
        write_staged_shard(staging, Shard(f"shard-{number:06d}-x", tuple(keys), tuple(keys)),
                           Codes(template.bits, template.channel_mean, dt, keys=keys), None, {})
    seconds = []
    with CodeIndex.create(folder / "codes", dk, dt) as index:
        for number in range(shards):
            start = time.perf_counter()
            index.adopt(staging / f"shard-{number:06d}-x.xlc", attributes={"root": None, "failed": {}})
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each (the machine's CPUs)")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--adopt-shards", type=int, default=1000, help="shards adopted in the commit-cost test")
    parser.add_argument("--weights", default=None, help="default: the packaged pretrained weights")
    args = parser.parse_args()

    paths = image_paths(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    encoder = CrossLayerEncoder(weights=args.weights, threads=0, fit_images=256).fit(paths, on_error="skip")
    encoder.backbone_model()  # exported (or found in the cache) before anything is timed
    print(f"{len(paths)} images, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, encoder Dk={encoder.Dk} "
          f"Dt={encoder.Dt} side={encoder.side}; PCA fit {encoder.fit_seconds_:.1f} s (not timed below)")

    with TreeMemory() as single_memory:
        single = ImageIndex.create(work / "single", encoder)
        report = single.add(paths, progress=False)
    single_s = report.seconds

    with TreeMemory() as ray_memory:
        start = time.perf_counter()
        with ray_session(cpus=args.workers) as ray:
            cluster_s = time.perf_counter() - start
            on_ray = ImageIndex.create(work / "ray", encoder)
            ray_report = build_on_ray(on_ray, paths, workers=args.workers, shard_size=args.shard_size)
            ray_total_s = time.perf_counter() - start

            # results first: the same keys and bit-identical codes
            expected, got = index_contents(single), index_contents(on_ray)
            assert expected[0] == got[0], "keys differ"
            assert np.array_equal(expected[1], got[1]) and np.array_equal(expected[2], got[2]), "codes differ"
            assert single.failures() == on_ray.failures()
            print(f"checked: {len(expected[0])} keys, codes bit-identical, {len(single.failures())} failures alike")

            # the Ray-built index searched in this process vs by actors (its ids follow the shards' commit order)
            queries = on_ray.codes.get(on_ray.codes.live_ids()[: args.queries])
            with ShardedIndex(work / "ray", workers=args.workers) as sharded:
                single_result = on_ray.codes.search(queries, 10, 50)
                sharded_result = sharded.search_codes(queries, 10, 50)
                assert all(np.array_equal(a, b) for a, b in zip(single_result, sharded_result)), "search differs"
                search_single = min(_timed(lambda: on_ray.codes.search(queries, 10, 50)) for _ in range(5))
                search_sharded = min(_timed(lambda: sharded.search_codes(queries, 10, 50)) for _ in range(5))
            on_ray.close()
        del ray
    single.close()

    commits = np.array(ray_report.commit_seconds)
    n = ray_report.added + len(ray_report.failed)
    print(f"single process : {single_s:7.1f} s  {n / single_s:6.2f} img/s  peak memory {single_memory.peak / 2**30:.2f} GiB")
    print(f"Ray, {args.workers} actors : {ray_total_s:7.1f} s  {n / ray_total_s:6.2f} img/s  peak memory "
          f"{ray_memory.peak / 2**30:.2f} GiB  (cluster start {cluster_s:.1f} s, build {ray_report.seconds:.1f} s, "
          f"{ray_report.shards} shards of {args.shard_size})")
    print(f"ratio Ray / single wall time: {ray_total_s / single_s:.2f}x (build alone {ray_report.seconds / single_s:.2f}x)")
    print(f"driver commit per shard during the build: mean {1e3 * commits.mean():.1f} ms, max {1e3 * commits.max():.1f} ms")
    adopt = np.array(adopt_cost(work / "adopt", args.adopt_shards, 4))
    print(f"adopting {args.adopt_shards} shards into one index: mean {1e3 * adopt.mean():.2f} ms, first 100 "
          f"{1e3 * adopt[:100].mean():.2f} ms, last 100 {1e3 * adopt[-100:].mean():.2f} ms -> "
          f"{60 / adopt[-100:].mean():.0f} shards/minute at the end")
    print(f"search {len(queries)} queries (top 10, 50 channels) over {n} images: single index "
          f"{1e3 * search_single:.1f} ms, sharded ({args.workers} actors) {1e3 * search_sharded:.1f} ms, ratio "
          f"{search_sharded / search_single:.2f}x")
    return 0


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
