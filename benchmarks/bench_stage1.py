"""Which coarse stage can keep recall@10 against exhaustive masked search as the database grows (issue 16, item 3).

Candidates, each scored by the recall@10 of exact re-ranking of its top-N shortlist (= how many of the exhaustive
masked top 10 the shortlist holds), per query, averaged over the 192 SMVS phone-photo queries:
- `means`: exact cosine of the channel means (what the HNSW stage of `two_stage.md` approximates: its upper bound);
- `prefix P`: the exact masked score on the first P PCA components of every channel (the code at pca_dim = P; the
  components are sorted by eigenvalue, so these are its strongest).
Databases: the real one (SMVS references + every scene15 and cub100 image), the same size made of synthetic
distractors instead of the real ones (`_scale_data`: is synthesis easier than real for these stages?), and a larger
synthetic one (how the shortlist must grow).

    python benchmarks/bench_stage1.py --tag f16f17 --pca-dim 160 --grow 40000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scale_data import DISTRACTOR_SETS, load_set, synthetic_distractors, truncate  # noqa: E402

from crosslayer import Codes  # noqa: E402
from crosslayer.search import search  # noqa: E402

SHORTLISTS = (100, 400, 1000, 2000, 5000)


def shortlist_recall(shortlist: np.ndarray, exact_top: np.ndarray) -> float:
    return float(np.mean([np.isin(top, row).mean() for row, top in zip(shortlist, exact_top)]))


def means_shortlist(queries: Codes, database: Codes, n: int) -> np.ndarray:
    def unit(m):
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-30)
    cosines = unit(queries.channel_mean) @ unit(database.channel_mean).T
    return np.argpartition(-cosines, n - 1, axis=1)[:, :n]


def measure(label: str, queries: Codes, database: Codes, channels: int, prefixes) -> list[str]:
    _, exact = search(queries, database, 10, channels)
    lines = []
    candidates = [n for n in SHORTLISTS if n < len(database)]
    recall = [shortlist_recall(means_shortlist(queries, database, n), exact) for n in candidates]
    lines.append(f"{label:<34}{len(database):>8} {'means':>9} " + " ".join(f"{r:6.3f}" for r in recall))
    for prefix in prefixes:
        short_q, short_x = truncate(queries, prefix), truncate(database, prefix)
        start = time.perf_counter()
        _, ids = search(short_q, short_x, max(candidates), channels)
        spent = time.perf_counter() - start
        recall = [shortlist_recall(ids[:, :n], exact) for n in candidates]
        lines.append(f"{'':<34}{'':>8} {f'prefix {prefix}':>9} " + " ".join(f"{r:6.3f}" for r in recall)
                     + f"   ({1000 * spent / len(queries):.1f} ms/query scan)")
    for line in lines:
        print(line, flush=True)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="f16f17")
    parser.add_argument("--pca-dim", type=int, default=None, help="the code's Dt (default: the full rotation)")
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--prefixes", default="8,16,32,64")
    parser.add_argument("--sets", default=",".join(DISTRACTOR_SETS), help="the real distractor sets")
    parser.add_argument("--parents", type=int, default=3, help="real images a synthetic distractor mixes")
    parser.add_argument("--flip-bits", type=int, default=2, help="signs flipped with probability 2^-flip_bits")
    parser.add_argument("--grow", type=int, default=40000, help="synthetic distractors of the larger database")
    args = parser.parse_args(argv)
    prefixes = [int(p) for p in args.prefixes.split(",")]
    queries, _ = load_set(args.tag, "smvs-queries", args.pca_dim)
    references, _ = load_set(args.tag, "smvs-database", args.pca_dim)
    distractors = Codes.concatenate([load_set(args.tag, name, args.pca_dim)[0] for name in args.sets.split(",")])
    real = Codes.concatenate([references, distractors])
    print(f"{args.tag}: Dk={real.Dk} Dt={real.Dt}; {len(queries)} queries, {len(real)} real database codes")
    print(f"{'database':<34}{'items':>8} {'stage 1':>9} " + " ".join(f"{n:>6}" for n in SHORTLISTS))
    measure("SMVS refs + real distractors", queries, real, args.channels, prefixes)
    rng = np.random.default_rng(0)
    synthetic = synthetic_distractors(distractors, len(distractors), rng, args.parents, args.flip_bits)
    same_size = Codes.concatenate([references, *synthetic])
    measure("SMVS refs + synthetic (same size)", queries, same_size, args.channels, prefixes)
    if not args.grow:
        return 0
    grown = Codes.concatenate([real, *synthetic_distractors(distractors, args.grow, rng, args.parents, args.flip_bits)])
    measure("real + synthetic", queries, grown, args.channels, prefixes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
