"""Channel-selection rules for a signed guidance layer, measured on SMVS retrieval (issue 12, item 2).

    PYTHONPATH=python python benchmarks/retrieval_channel_rules.py --encoder ENC.xle --database-index DIR
        [--distractor-index DIR ...] [--data ROOT]

The paper's eq. 3 compares, per query, the guidance channels of largest mean activation. The features.16 x
features.17 encoder's guidance layer (features.17, a linear bottleneck) is signed, so the rules of
`crosslayer.retrieval.channels.guidance_channel_means` (mean, mean of the positive part, mean of |a|) pick different
channels. The rules only change which channels a query compares: the query images are re-encoded here (their
guidance maps are needed), the database (and distractor) codes are read from image indexes built with the same
encoder (identity checked). First the rule "mean" is checked against the channel means the pooling kernel stored
with the query codes; then every rule and channel count ranks the whole database (+ distractors): mAP, recall@1/5/10.
Writes benchmarks/results/guidance-retrieval-rules.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

from crosslayer._atomic import atomic_write  # noqa: E402
from crosslayer.codes import Codes  # noqa: E402
from crosslayer.encoder import CrossLayerEncoder  # noqa: E402
from crosslayer.retrieval.channels import (CHANNEL_RULES, channel_label, guidance_channel_means,  # noqa: E402
                                           parse_channel_list)
from crosslayer.retrieval.datasets import read_retrieval_set  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex  # noqa: E402
from crosslayer.retrieval.metrics import average_precision, evaluate_ranks, relevance_matrix, relevant_ranks  # noqa: E402
from crosslayer.search import search_segments, select_channels  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BOOTSTRAP = 2000


def paired_interval(difference: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (queries resampled, seeded) of the mean of per-query differences."""
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), (BOOTSTRAP, len(difference)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def encode_queries(encoder, paths):
    """(codes, guidance maps' per-rule means {rule: (n, Dk)}, share of negative guidance values)."""
    parts, means, negative, values = [], {rule: [] for rule in CHANNEL_RULES}, 0, 0
    for batch in encoder.activations(paths, on_error="raise"):
        parts.append(encoder.pool_batch(batch.outputs, "codes"))
        guidance = batch.outputs[encoder.layers[1]]
        for rule in CHANNEL_RULES:
            means[rule].append(guidance_channel_means(guidance, rule))
        negative += int((guidance < 0).sum())
        values += guidance.size
    return Codes.concatenate(parts), {rule: np.concatenate(m) for rule, m in means.items()}, negative / values


def indexed_codes(directory, identity):
    index = ImageIndex.open(directory)
    codes = index.codes.get(index.codes.live_ids())
    if codes.identity != identity:
        raise SystemExit(f"{directory}: built with another encoder (identity {codes.identity}, expected {identity})")
    return codes, [str(Path(p).resolve()) for p in index.paths()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--set", default="smvs")
    parser.add_argument("--encoder", required=True, help="a saved encoder (.xle) whose guidance layer is signed")
    parser.add_argument("--database-index", required=True, help="image index of the set's database images")
    parser.add_argument("--distractor-index", action="append", default=[], help="image index of distractors")
    parser.add_argument("--channels", default="10,20,50,100,200,all")
    parser.add_argument("--name", default="guidance-retrieval-rules")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rset = read_retrieval_set(data_set(args.data, args.set))
    encoder = CrossLayerEncoder.load(args.encoder)
    counts = parse_channel_list(args.channels, encoder.Dk)
    begin = time.perf_counter()
    queries, means, negative_share = encode_queries(encoder, rset.queries.paths)
    encode_seconds = time.perf_counter() - begin
    # the reference check: rule "mean" is what the kernel stored with the codes
    np.testing.assert_allclose(means["mean"], queries.channel_mean, rtol=1e-4, atol=1e-5)

    database, database_paths = indexed_codes(args.database_index, queries.identity)
    item_of = dict(zip((str(Path(p).resolve()) for p in rset.database.paths), rset.database.items))
    labels = [item_of[p] for p in database_paths]
    segments, total = [(database.bits, 0)], len(database)
    for directory in args.distractor_index:
        codes, _ = indexed_codes(directory, queries.identity)
        segments.append((codes.bits, total))
        total += len(codes)
        labels += [None] * len(codes)
    relevant = relevance_matrix(rset.queries.items, labels)

    records, per_query = [], {}
    for rule in CHANNEL_RULES:
        # the rule's means replace the kernel's (`with_channel_rule` does this from the maps; here they are kept)
        rule_codes = Codes(queries.bits, means[rule], queries.Dt, queries.identity)
        for count in counts:
            begin = time.perf_counter()
            scores, ids = search_segments(rule_codes, segments, total, count, num_threads=1)
            matrix = np.empty((len(queries), total), np.float64)
            np.put_along_axis(matrix, ids, scores.astype(np.float64), axis=1)
            ranks = relevant_ranks(matrix, relevant)
            metrics = evaluate_ranks(ranks)
            per_query[rule, count] = np.array([average_precision(r) for r in ranks])
            interval = None
            if rule != "mean":
                interval = paired_interval(per_query[rule, count] - per_query["mean", count])
            same = None
            if count is not None:
                chosen, paper = select_channels(means[rule], count), select_channels(means["mean"], count)
                same = float(np.mean([len(np.intersect1d(c, p)) / count for c, p in zip(chosen, paper)]))
            records.append({"rule": rule, "channels": channel_label(count), "database": total, **metrics,
                            "overlap_with_mean_rule": same, "map_minus_mean_rule_95": interval,
                            "search_s": time.perf_counter() - begin})
            print(f"{rule:>8} {channel_label(count):>4} mAP {metrics['map']:.3f}", flush=True)
    seconds = time.perf_counter() - started
    body = {"encoder": str(args.encoder), "layers": list(encoder.layers), "Dk": encoder.Dk, "Dt": encoder.Dt,
            "queries": len(queries), "database": total, "distractor_indexes": args.distractor_index,
            "negative_guidance_share": negative_share, "encode_queries_s": encode_seconds, "seconds": seconds,
            "records": records}
    RESULTS.mkdir(exist_ok=True)
    with atomic_write(RESULTS / f"{args.name}.json", "w") as handle:
        json.dump(body, handle, indent=1)
    lines = [f"# Channel-selection rules on a signed guidance layer: {args.set}, {' x '.join(encoder.layers)}", "",
             f"- encoder `{args.encoder}` (Dt {encoder.Dt}, Dk {encoder.Dk}); {len(queries)} queries re-encoded "
             f"({encode_seconds:.0f} s), database + distractors {total:,} images from image indexes "
             f"({', '.join([args.database_index, *args.distractor_index])})",
             f"- share of negative values of the guidance layer over the queries: {100 * negative_share:.1f}%",
             "- rules: `mean` the paper's mean activation; `positive` the mean of max(a, 0); `abs` the mean of |a|; "
             "overlap: the share of a query's chosen channels the `mean` rule also chooses; "
             f"Δ mAP vs mean: 95% paired bootstrap interval ({BOOTSTRAP} resamples of the queries) of the mAP "
             "difference to the `mean` rule at the same channel count (an interval holding 0: within the noise)",
             f"- generated by `benchmarks/retrieval_channel_rules.py` in {seconds:.0f} s", "",
             "| rule | channels | mAP | Δ mAP vs mean (95%) | R@1 | R@5 | R@10 | overlap with mean |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        overlap = "-" if r["overlap_with_mean_rule"] is None else f"{100 * r['overlap_with_mean_rule']:.0f}%"
        low_high = r["map_minus_mean_rule_95"]
        delta = "-" if low_high is None else f"[{low_high[0]:+.3f}, {low_high[1]:+.3f}]"
        lines.append(f"| {r['rule']} | {r['channels']} | {r['map']:.3f} | {delta} | {r['recall@1']:.3f} | "
                     f"{r['recall@5']:.3f} | "
                     f"{r['recall@10']:.3f} | {overlap} |")
    with atomic_write(RESULTS / f"{args.name}.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
