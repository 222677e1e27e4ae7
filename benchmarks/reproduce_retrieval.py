"""The paper's retrieval experiment (Section 4.4, Fig. 4) on the SMVS stand-in: mAP and recall@1/5/10 of SPoC, the
global embedding, cross-layer float and binarised cross-layer over the number of guidance channels, without and with
distractors (scene15 + cub100). Writes to benchmarks/results/:

    retrieval.md            the table, with query latency and memory per indexed image
    retrieval.json          one record per method, channel count and distractor setting
    retrieval_channels.png  mAP against the number of channels (Fig. 4)
    retrieval_sheet.png     a contact sheet of binarised searches (green: correct item, red: wrong)

Features are cached (resumable) under --cache; the PCA of the local features and the SPoC whitening are learnt on
--learn-images images sampled from scene15 + cub100, never on the retrieval set.

    PYTHONPATH=python nice -n 10 python benchmarks/reproduce_retrieval.py [--data ROOT] [--no-distractors]

Sets are named relative to --data (default ../shared/data beside the repository); records hold those names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set, relative_to_data  # noqa: E402

from crosslayer._atomic import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plot(records, out, dk_of_records: int, pair: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r["distractors"] for r in records})
    figure, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    for axis, n_distractors in zip(axes[0], settings):
        chosen = [r for r in records if r["distractors"] == n_distractors]
        counts = [r["channels"] for r in chosen if r["method"] == "crosslayer-codes"]
        dk = dk_of_records
        x = [dk if c == "all" else int(c) for c in counts]
        for method, style in (("crosslayer-codes", "o-"), ("crosslayer-float", "s--")):
            y = [r["map"] for r in chosen if r["method"] == method]
            if y:
                axis.plot(x, y, style, label=method)
        for method, colour in (("spoc", "tab:red"), ("spoc-sign", "tab:pink"), ("embedding", "tab:grey")):
            value = [r["map"] for r in chosen if r["method"] == method]
            if value:
                axis.axhline(value[0], color=colour, linestyle=":", label=method)
        axis.set_xscale("log")
        axis.set_xticks(x, [str(c) for c in counts])
        axis.set_xlabel("guidance channels compared per query")
        axis.set_ylabel("mAP")
        axis.set_title(f"SMVS {pair}: {chosen[0]['database']} database + {n_distractors} distractors", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_write(out, "wb") as handle:
        figure.savefig(handle, dpi=110, format="png")


# (method, channels) pairs whose mAP difference gets a paired bootstrap interval over queries: A, B
MAP_COMPARISONS = (
    (("crosslayer-codes", "all"), ("spoc", "all")),
    (("crosslayer-float", "all"), ("spoc", "all")),
    (("crosslayer-codes", "all"), ("crosslayer-float", "all")),
    (("crosslayer-codes", "200"), ("crosslayer-codes", "all")),
    (("crosslayer-codes", "all"), ("embedding", "all")),
    (("spoc-sign", "all"), ("spoc", "all")),
)


def map_differences(records) -> list[dict]:
    """Per distractor setting, the mAP difference A - B of each pair in MAP_COMPARISONS with its paired bootstrap 95%
    interval over queries (both methods' average precisions of a query resampled together)."""
    from crosslayer.eval.stats import paired_bootstrap

    out = []
    for n_distractors in sorted({r["distractors"] for r in records}):
        by_key = {(r["method"], r["channels"]): r for r in records if r["distractors"] == n_distractors}
        for a, b in MAP_COMPARISONS:
            if a in by_key and b in by_key and "query_ap" in by_key[a] and "query_ap" in by_key[b]:
                interval = paired_bootstrap(by_key[a]["query_ap"], by_key[b]["query_ap"])
                out.append({"a": a, "b": b, "distractors": n_distractors, **interval,
                            "within_noise": interval["low"] <= 0.0 <= interval["high"]})
    return out


def map_difference_table(differences) -> str:
    lines = ["| A | B | distractors | mAP A − B [95% CI over queries] | verdict |", "|---|---|---:|---:|---|"]
    for d in differences:
        verdict = "within the noise" if d["within_noise"] else ("A higher" if d["difference"] > 0 else "A lower")
        lines.append(f"| {d['a'][0]} ({d['a'][1]}) | {d['b'][0]} ({d['b'][1]}) | {d['distractors']} | "
                     f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from crosslayer.retrieval.evaluate import (DEFAULT_CHANNELS, compute_features, evaluate, markdown_table,
                                               result_sheet, write_results)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--set", default="smvs", help="the retrieval set, under --data (default: smvs)")
    parser.add_argument("--distractors", nargs="*", default=["scene15", "cub100"], help="folders under --data")
    parser.add_argument("--no-distractors", action="store_true", help="only the run without distractors")
    parser.add_argument("--learn", nargs="*", default=["scene15", "cub100"], help="folders under --data")
    parser.add_argument("--learn-images", type=int, default=800)
    parser.add_argument("--cache", default=None, help="feature cache (default: $CROSSLAYER_CACHE/retrieval-eval)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", nargs=2, default=None, metavar=("LAYER_T", "LAYER_T1"),
                        help="the backbone's layer pair (default: mobilenet_v2 features.17, features.18)")
    parser.add_argument("--tag", default="", help="suffix of the output file names, e.g. _f16_f17")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    options = dict(threads=args.threads, batch_size=16, fit_images=256, layers=args.layers)
    retrieval_set = str(data_set(args.data, args.set))
    learn = [str(data_set(args.data, name)) for name in args.learn]
    settings = [[]] if args.no_distractors else [[], [str(data_set(args.data, name)) for name in args.distractors]]
    records = []
    for distractors in settings:
        cache, rset = compute_features(retrieval_set, distractors, learn, args.cache, DEFAULT_CHANNELS, options,
                                       learn_images=args.learn_images)
        records += evaluate(cache, rset, distractors, DEFAULT_CHANNELS)
        print(markdown_table([r for r in records if r["distractors"] == records[-1]["distractors"]]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sheet_queries = result_sheet(cache, rset, out / f"retrieval_sheet{args.tag}.png", settings[-1], channels=200, queries=8, top=5)
    plot(records, out / f"retrieval_channels{args.tag}.png", cache.encoder.Dk, "/".join(cache.encoder.layers))
    write_results(out / f"retrieval{args.tag}.json", relative_to_data(args.data, retrieval_set),
                  [relative_to_data(args.data, d) for d in settings[-1]], records)
    encoder = cache.encoder
    text = [
        "# Retrieval on SMVS (book covers + museum paintings), paper Section 4.4",
        "",
        f"Encoder: {encoder.backbone} {encoder.layers[0]} (local, PCA-decorrelated, Dt={encoder.Dt}) x "
        f"{encoder.layers[1]} (guidance, Dk={encoder.Dk}), side {encoder.side}. PCA and SPoC whitening (256-d) "
        f"learnt on {args.learn_images} images sampled from scene15 + cub100 (not the retrieval set; with distractors "
        "those images are also among the distractors). mAP equals mean reciprocal rank here (one relevant image per "
        "query); ties are ranked against the method.",
        "",
        "Methods: `spoc` sum-pooled guidance layer + L2 + PCA-whitening + L2; `spoc-sign` its signs (1 bit a "
        "dimension); `embedding` the average-pooled guidance "
        "layer + L2 (SPoC without whitening); `crosslayer-float` cosine of float cross-layer representations over the "
        "query's selected channels (`all`: dot of the L2-normalised full representation); `crosslayer-codes` masked "
        "popcount score of the 2-bit sign codes (paper eq. 3), channels = guidance channels of largest mean activation "
        "of the query.",
        "",
        "Cross-layer float with distractors was computed by streaming: every database/distractor image's float "
        "representation was scored against all queries while it was in memory and then dropped (never held).",
        "",
        "Latency: `encode ms` = backbone at batch 1 + the method's pooling/projection for one query; `search ms` = one "
        "query against the whole database (+ distractors), one thread for the codes (the OpenMP default on this "
        "shared 2-core machine adds ~15 ms of thread contention); float search is the scoring cost with all float "
        "representations in memory (an index would have to hold "
        f"{encoder.Dk * encoder.Dt * 4 / 1e6:.2f} MB/image for it; the evaluation streamed them). "
        "Bytes/image = what an index holds per image. Machine: 2 shared cores with other jobs running, so absolute "
        "times are noisy.",
        "",
        markdown_table(records),
        "",
        "mAP differences with their paired bootstrap 95% intervals (10,000 resamples of the queries; each query's two "
        "average precisions kept together):",
        "",
        map_difference_table(map_differences(records)),
        "",
        f"Contact sheet (`retrieval_sheet{args.tag}.png`, codes, 200 channels, {len(settings[-1]) and 'with distractors' or 'no distractors'}): "
        + ", ".join(Path(p).name for p in sheet_queries),
    ]
    with atomic_write(out / f"retrieval{args.tag}.md", "w") as handle:
        handle.write("\n".join(text) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
