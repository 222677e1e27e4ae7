"""Two-stage search (`crosslayer.retrieval.coarse` shortlist, exact masked re-ranking) against exhaustive masked
search, on SMVS with distractors, and how the shortlist must grow with the database (synthetic scaling).

1. SMVS: the 192 phone-photo queries against the 192 reference scans plus `--distractors` images of cub100 and scene15,
   default encoder (the PCA fitted on a seeded sample of the database and distractors). mAP (one relevant image a
   query: the mean reciprocal rank within the top 100) and the overlap of the top 10 with exhaustive search, per
   shortlist size. Exhaustive is checked against the reference kernel first (`crosslayer.search.search`).
2. Scaling: the real database codes replicated with noise (each copy: channel means times log-normal noise, sign
   values of a `--flip` fraction of the positions redrawn) to 1x, 4x, 16x. A copy stays near its original in both
   stages, so copies of the relevant image and of its nearest rivals crowd the shortlist: they are harder than the
   real distractors, whose means are spread over unrelated scenes. Recall@10 of two-stage against exhaustive.

    python benchmarks/bench_two_stage.py --distractors 800
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import add_data_argument, data_set  # noqa: E402

from crosslayer import CodeIndex, Codes, CrossLayerEncoder, reference  # noqa: E402
from crosslayer.retrieval.coarse import CoarseIndex  # noqa: E402
from crosslayer.search import search  # noqa: E402

SHORTLISTS = (10, 25, 50, 100, 200, 400)


def smvs(root):
    folder = data_set(root, "smvs")
    read = lambda name: [(str(folder / r["path"]), r["item"]) for r in csv.DictReader(open(folder / name))]  # noqa
    return read("queries.csv"), read("database.csv")


def distractor_paths(root, count: int, seed: int = 0):
    paths = []
    for name in ("cub100", "scene15"):
        folder = data_set(root, name)
        paths += [str(folder / r["path"]) for r in csv.DictReader(open(folder / "manifest.csv"))]
    chosen = np.random.default_rng(seed).choice(len(paths), min(count, len(paths)), replace=False)
    return [paths[i] for i in sorted(chosen)]


def mean_reciprocal_rank(ids: np.ndarray, relevant: np.ndarray) -> float:
    ranks = [np.flatnonzero(row == r) for row, r in zip(ids, relevant)]
    return float(np.mean([1.0 / (hit[0] + 1) if hit.size else 0.0 for hit in ranks]))


def overlap_at(ids_a, ids_b, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids_a, ids_b)]))


def noisy_copies(codes: Codes, copies: int, flip: float, rng) -> Codes:
    """`copies` noisy replicas of every code (see the module docstring)."""
    parts = [codes]
    for _ in range(copies):
        for start in range(0, len(codes), 64):  # in blocks: a block's unpacked signs and noise stay small
            block = codes[start:start + 64]
            noisy = reference.unpack_ternary(block.bits, codes.Dt)
            redraw = rng.random(noisy.shape, dtype=np.float32) < flip
            noisy[redraw] = rng.choice(np.array([-1, 1], np.int8), size=int(redraw.sum()))
            means = block.channel_mean * rng.lognormal(0.0, 0.3, block.channel_mean.shape).astype(np.float32)
            parts.append(Codes(reference.pack_ternary(noisy), means, codes.Dt, codes.identity))
    return Codes.concatenate(parts)


def two_stage(codes_index: CodeIndex, coarse: CoarseIndex, queries: Codes, n: int, k: int, channels: int):
    shortlist = coarse.shortlist(queries, n, channels, np.zeros(0, np.int64))
    return codes_index.rerank(queries, shortlist, k, channels)


def measure(directory: Path, database: Codes, queries: Codes, relevant, channels: int, label: str) -> list[dict]:
    codes_index = CodeIndex.create(directory / "codes", database.Dk, database.Dt, identity=database.identity)
    codes_index.append(database)
    start = time.perf_counter()
    coarse = CoarseIndex.open(directory, codes_index)
    build = time.perf_counter() - start
    start = time.perf_counter()
    _, exhaustive = codes_index.search(queries, 100, channels)
    exhaustive_s = time.perf_counter() - start
    _, direct = search(queries, database, 10, channels)  # the reference: the kernel on the codes in memory
    assert np.array_equal(direct, exhaustive[:, :10]), "index search differs from crosslayer.search"
    rows = [{"set": label, "n": len(database), "shortlist": "all", "mAP": mean_reciprocal_rank(exhaustive, relevant),
             "recall@10": 1.0, "ms/query": 1000 * exhaustive_s / len(queries), "build_s": 0.0}]
    for n in SHORTLISTS:
        if n >= len(database):
            break
        start = time.perf_counter()
        _, ids = two_stage(codes_index, coarse, queries, n, 100, channels)
        spent = time.perf_counter() - start
        rows.append({"set": label, "n": len(database), "shortlist": n, "mAP": mean_reciprocal_rank(ids, relevant),
                     "recall@10": overlap_at(ids, exhaustive, 10), "ms/query": 1000 * spent / len(queries),
                     "build_s": build})
    codes_index.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--distractors", type=int, default=800)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--scales", default="1,4,16", help="database replication factors for the scaling part")
    parser.add_argument("--pca-dim", default="full", help="the encoder's pca_dim ('full': the default rotation)")
    parser.add_argument("--flip", type=float, default=0.3, help="fraction of sign positions redrawn in a copy")
    args = parser.parse_args(argv)
    queries, database = smvs(args.data)
    distractors = distractor_paths(args.data, args.distractors)
    encoder = CrossLayerEncoder(pca_dim=None if args.pca_dim == "full" else int(args.pca_dim))
    database_paths = [p for p, _ in database] + distractors
    start = time.perf_counter()
    encoder.fit(database_paths)
    database_codes = encoder.encode(database_paths)
    query_codes = encoder.encode([p for p, _ in queries])
    print(f"encoded {len(database_paths)} database images ({len(database)} SMVS + {len(distractors)} distractors) and "
          f"{len(queries)} queries in {time.perf_counter() - start:.0f} s; Dt={encoder.Dt}")
    item_row = {item: row for row, (_, item) in enumerate(database)}
    relevant = np.array([item_row[item] for _, item in queries])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for scale in [int(s) for s in args.scales.split(",")]:
            rng = np.random.default_rng(scale)
            scaled = database_codes if scale == 1 else noisy_copies(database_codes, scale - 1, args.flip, rng)
            found = measure(Path(scratch) / f"x{scale}", scaled, query_codes, relevant, args.channels,
                            "SMVS+distractors" if scale == 1 else f"x{scale} noisy copies")
            rows += found
    print(f"{'database':<20}{'items':>7}{'shortlist':>10}{'mAP':>7}{'recall@10':>10}{'ms/query':>9}{'build s':>8}")
    for row in rows:
        print(f"{row['set']:<20}{row['n']:>7}{row['shortlist']!s:>10}{row['mAP']:>7.3f}{row['recall@10']:>10.3f}"
              f"{row['ms/query']:>9.2f}{row['build_s']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
