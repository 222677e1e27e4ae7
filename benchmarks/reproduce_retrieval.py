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

From image indexes (`--indexes ROOT --encoder ENC.xle`: ROOT holds `<set>-database` and one index per distractor
and learn folder, built with ENC): only the queries and the database images are re-encoded (their maps give the
float representations, SPoC's centre-prior pooling and the channel-selection rules); distractor codes and
embeddings, and the learn images' embeddings for the SPoC whitening, are read from the indexes. The re-encoded
database is first checked against its index (same code bits, same embeddings). Adds the rows `spoc-prior` (SPoC's
Gaussian centre prior, L2; no distractor setting: it needs every image's map) and `crosslayer-codes-positive` /
`crosslayer-codes-abs` (channels chosen by the mean of max(a, 0) / of |a|, for a signed guidance layer); no
latency columns (`retrieval.md` has them). Writes retrieval<tag>.md/.json/_channels.png.

    PYTHONPATH=python nice -n 19 python benchmarks/reproduce_retrieval.py --indexes /work/cache/f17f18 \
        --encoder /work/cache/mnv2-f17f18.xle --tag _v04
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

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
    (("crosslayer-codes", "all"), ("spoc-prior", "all")),
    (("crosslayer-float", "all"), ("spoc-prior", "all")),
    (("spoc-prior", "all"), ("spoc", "all")),
    (("crosslayer-codes-positive", "50"), ("crosslayer-codes", "50")),
    (("crosslayer-codes-abs", "50"), ("crosslayer-codes", "50")),
    (("crosslayer-codes-positive", "200"), ("crosslayer-codes", "200")),
    (("crosslayer-codes-abs", "200"), ("crosslayer-codes", "200")),
)
RULE_METHODS = {"mean": "crosslayer-codes", "positive": "crosslayer-codes-positive", "abs": "crosslayer-codes-abs"}


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


def encode_set(encoder, paths) -> dict:
    """One backbone pass over `paths` (in order), the maps reduced as they come: sign codes, float representations,
    the embedding, SPoC's centre-prior pooling of the guidance layer and every channel-selection rule's scores."""
    from crosslayer.codes import Codes
    from crosslayer.retrieval.channels import CHANNEL_RULES, guidance_channel_means
    from crosslayer.retrieval.spoc import sum_pool

    codes, floats, embedding, prior, rules = [], [], [], [], {rule: [] for rule in CHANNEL_RULES}
    for batch in encoder.activations(paths, on_error="raise"):
        outputs = batch.outputs
        codes.append(encoder.pool_batch(outputs, "codes"))
        floats.append(encoder.pool_batch(outputs, "float"))
        embedding.append(np.asarray(outputs["embedding"], np.float64))
        guidance = outputs[encoder.layers[1]]
        prior.append(sum_pool(guidance, prior=True))
        for rule in CHANNEL_RULES:
            rules[rule].append(guidance_channel_means(guidance, rule))
    return {"codes": Codes.concatenate(codes), "floats": np.concatenate(floats), "embedding": np.concatenate(embedding),
            "prior": np.concatenate(prior), "rules": {rule: np.concatenate(v) for rule, v in rules.items()}}


def read_index(directory, identity: str, paths=None) -> dict:
    """Codes and embeddings of an image index built with the encoder `identity`: of `paths` in that order (each must
    be indexed), or of every live image. SystemExit naming the index when it was built with another encoder."""
    from crosslayer.retrieval.image_index import ImageIndex

    with ImageIndex.open(directory) as index:
        live = np.asarray(index.codes.live_ids())
        ids = live if paths is None else np.asarray(index.ids_of(paths))
        codes = index.codes.get(ids)
        if codes.identity != identity:
            raise SystemExit(f"--indexes: {directory} was built with another encoder (identity {codes.identity}, "
                             f"expected {identity})")
        embedding = np.asarray(index.embeddings(), np.float64)[np.searchsorted(live, ids)]
        return {"codes": codes, "embedding": embedding, "paths": index.paths() if paths is None else list(paths)}


def index_records(encoder, rset, database_index: dict, distractor_indexes: list, learn_embeddings, channel_counts,
                  spoc_dim: int = 256) -> tuple[list[dict], dict]:
    """Records as `evaluate`'s (per query AP kept), without and with the distractors, from re-encoded queries and
    database images and indexed distractors. Returns (records, what was checked and how long the passes took)."""
    from crosslayer.codes import Codes
    from crosslayer.l2 import l2_normalize
    from crosslayer.retrieval.channels import channel_label, selection_masks
    from crosslayer.retrieval.evaluate import _codes_score_matrix
    from crosslayer.retrieval.float_scores import FloatQueryScorer
    from crosslayer.retrieval.metrics import average_precision, evaluate_ranks, relevance_matrix, relevant_ranks
    from crosslayer.retrieval.spoc import SpocWhitening

    began = time.perf_counter()
    queries = encode_set(encoder, rset.queries.paths)
    database = encode_set(encoder, rset.database.paths)
    encode_seconds = time.perf_counter() - began
    # the reference checks: the rule "mean" is what the pooling kernel stores with the codes, and the re-encoded
    # database is what its index holds (same encoder, same images), so indexed distractors rank on equal terms
    np.testing.assert_allclose(queries["rules"]["mean"], queries["codes"].channel_mean, rtol=1e-4, atol=1e-5)
    indexed_layout = database_index["codes"].layout  # an index may hold either layout; both score alike
    if not np.array_equal(database["codes"].to_layout(indexed_layout).bits, database_index["codes"].bits):
        raise SystemExit("--indexes: the re-encoded database codes differ from the database index's")
    np.testing.assert_allclose(database["embedding"], database_index["embedding"], rtol=1e-4, atol=1e-5)
    whitening = SpocWhitening(spoc_dim).fit(learn_embeddings)
    dk, dt = encoder.Dk, encoder.Dt
    records = []
    for distractors in ([], distractor_indexes):
        parts = [database_index] + list(distractors)
        labels = list(rset.database.items) + [None] * sum(len(p["paths"]) for p in distractors)
        relevant = relevance_matrix(rset.queries.items, labels)
        answerable = relevant.any(axis=1)
        relevant = relevant[answerable]
        total = relevant.shape[1]
        common = {"queries": int(answerable.sum()), "database": len(rset.database.paths),
                  "distractors": total - len(rset.database.paths)}

        def record(method, channels, scores, bytes_per_image):
            ranks = relevant_ranks(scores[answerable], relevant)
            metrics = evaluate_ranks(ranks)
            metrics["query_ap"] = [average_precision(r) for r in ranks]
            return {"method": method, "channels": channel_label(channels), **common, **metrics,
                    "bytes_per_image": int(np.ceil(bytes_per_image))}

        embeddings = np.concatenate([p["embedding"] for p in parts])
        for method, transform, nbytes in (("spoc", whitening.transform, spoc_dim * 4),
                                          ("spoc-sign", lambda x: np.sign(whitening.transform(x)), spoc_dim / 8),
                                          ("embedding", l2_normalize, embeddings.shape[1] * 4)):
            records.append(record(method, None, transform(queries["embedding"]) @ transform(embeddings).T, nbytes))
        if not distractors:  # these need every ranked image's maps
            prior = l2_normalize(queries["prior"]) @ l2_normalize(database["prior"]).T
            records.append(record("spoc-prior", None, prior, dk * 4))
            masks = selection_masks(queries["codes"].channel_mean, channel_counts)
            scores = FloatQueryScorer(queries["floats"], dk, masks).score(database["floats"])
            for s, channels in enumerate(channel_counts):
                records.append(record("crosslayer-float", channels, scores[:, :, s].astype(np.float64), dk * dt * 4))
        segments, base = [], 0
        for part in parts:
            segments.append((part["codes"].bits, base))
            base += len(part["paths"])
        query_codes = queries["codes"]
        for rule, method in RULE_METHODS.items():
            ruled = Codes(query_codes.bits, queries["rules"][rule], query_codes.Dt, query_codes.identity)
            for channels in channel_counts:
                scores = _codes_score_matrix(ruled, segments, total, channels)
                records.append(record(method, channels, scores, query_codes.nbytes // max(len(query_codes), 1)))
        print(index_table([r for r in records if r["distractors"] == common["distractors"]]), flush=True)
    negative = float(np.mean(queries["rules"]["mean"] < 0))
    return records, {"encode_seconds": encode_seconds, "negative_channel_means": negative}


def index_table(records) -> str:
    lines = ["| method | channels | distractors | mAP | R@1 | R@5 | R@10 | bytes/image |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['channels']} | {r['distractors']:,} | {r['map']:.3f} | {r['recall@1']:.3f} | "
                     f"{r['recall@5']:.3f} | {r['recall@10']:.3f} | {r['bytes_per_image']:,} |")
    return "\n".join(lines)


def main_from_indexes(args) -> int:
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.datasets import read_retrieval_set
    from crosslayer.retrieval.evaluate import DEFAULT_CHANNELS, sample_paths, write_results

    started = time.perf_counter()
    encoder = CrossLayerEncoder.load(args.encoder)
    encoder.threads = args.threads
    identity = encoder.identity_digest
    root = Path(args.indexes)
    retrieval_set = data_set(args.data, args.set)
    rset = read_retrieval_set(retrieval_set)
    database_index = read_index(root / f"{Path(args.set).name}-database", identity, rset.database.paths)
    distractors = [read_index(root / Path(name).name, identity) for name in args.distractors]
    learn_folders = [str(data_set(args.data, name)) for name in args.learn]
    learn_paths = sample_paths(learn_folders, args.learn_images)
    learn = []
    for name, folder in zip(args.learn, learn_folders):
        mine = [p for p in learn_paths if Path(p).is_relative_to(Path(folder).resolve())]
        learn.append(read_index(root / Path(name).name, identity, mine)["embedding"])
    channel_counts = [c for c in DEFAULT_CHANNELS if c is None or c < encoder.Dk]
    records, info = index_records(encoder, rset, database_index, distractors, np.concatenate(learn), channel_counts,
                                  args.spoc_dim)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    distractor_names = [relative_to_data(args.data, data_set(args.data, d)) for d in args.distractors]
    write_results(out / f"retrieval{args.tag}.json", relative_to_data(args.data, retrieval_set), distractor_names, records)
    plot(records, out / f"retrieval{args.tag}_channels.png", encoder.Dk, "/".join(encoder.layers))
    seconds = time.perf_counter() - started
    command = "python benchmarks/reproduce_retrieval.py " + " ".join(args.argv)
    text = [
        f"# Retrieval on {Path(args.set).name} from image indexes: {encoder.backbone} {' x '.join(encoder.layers)}",
        "",
        f"- command: `{command}`; run time {seconds:.0f} s ({info['encode_seconds']:.0f} s re-encoding the "
        f"{len(rset.queries.paths)} queries and {len(rset.database.paths)} database images; 2 shared cores)",
        f"- encoder `{args.encoder}` (local {encoder.layers[0]} Dt {encoder.Dt}, guidance {encoder.layers[1]} Dk "
        f"{encoder.Dk}, side {encoder.side}); distractors ({', '.join(distractor_names)}) and the SPoC whitening's "
        f"{len(learn_paths)} learn images (sampled from {', '.join(args.learn)}) read from the image indexes under "
        f"`{args.indexes}`",
        "- checked first: the re-encoded database's codes equal its index's bit for bit and its embeddings agree "
        "(1e-4); the rule `mean` equals the channel means the pooling kernel stored",
        f"- share of negative query channel means of the guidance layer: {100 * info['negative_channel_means']:.1f}%",
        "- methods: `spoc` sum pooling + L2 + PCA-whitening (256, out of domain) + L2; `spoc-sign` its signs; "
        "`embedding` average pooling + L2; `spoc-prior` sum pooling with SPoC's Gaussian centre prior + L2 (no "
        "whitening: `spoc.md` has it whitened in and out of domain); `crosslayer-float` cosine over the query's "
        "channels; `crosslayer-codes` masked popcount of the sign codes over the channels of largest mean guidance "
        "activation (paper eq. 3), `-positive` / `-abs` over those of largest mean of max(a, 0) / |a|",
        "- not with distractors: `spoc-prior` and `crosslayer-float` (they need every distractor's maps; the indexes "
        "hold codes and embeddings)",
        "",
        index_table(records),
        "",
        "mAP differences with their paired bootstrap 95% intervals (10,000 resamples of the queries; each query's two "
        "average precisions kept together):",
        "",
        map_difference_table(map_differences(records)),
    ]
    with atomic_write(out / f"retrieval{args.tag}.md", "w") as handle:
        handle.write("\n".join(text) + "\n")
    print(f"wrote {out / f'retrieval{args.tag}.md'} in {seconds:.0f} s")
    return 0


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
    parser.add_argument("--indexes", default=None,
                        help="folder of image indexes (<set>-database and one per distractor and learn folder): "
                             "distractors and learn embeddings are read from them, not re-encoded; needs --encoder")
    parser.add_argument("--encoder", default=None, help="the saved encoder (.xle) the --indexes were built with")
    parser.add_argument("--spoc-dim", type=int, default=256, help="SPoC whitening dimension (--indexes mode)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if (args.indexes is None) != (args.encoder is None):
        parser.error("--indexes and --encoder go together")
    if args.indexes is not None:
        return main_from_indexes(args)

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
