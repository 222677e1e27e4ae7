"""Code size against quality (issue 16): SMVS mAP with distractors and cub100 / scene15 SVM accuracy of the sign
codes over the layer pair, `pca_dim` and the masked search's channel count, each configuration sized in the compact
code format (a live bit a channel plus the sign plane).

It reads image indexes built once per layer pair with a full-rotation encoder (`crosslayer index build --embeddings`
of the four sets below, the pair's PCA fitted on images other than the SMVS ones):

    INDEXES/<tag>/{smvs-queries,smvs-database,scene15,cub100}/

The codes at `pca_dim` d are the first d values of each channel of the full-rotation codes: the PCA's components are
sorted by eigenvalue with deterministic signs (so a d-component fit is the first d columns of the full one) and the
per-channel L2 / signed square root do not change signs. The script checks that claim first against real
`pca_dim=d` encoders fitted on a handful of images (the same sample for both), then:

- SMVS: the 192 phone-photo queries with a reference against the reference scans plus every scene15 and cub100 image
  as distractors; masked search over each query's `channels` strongest guidance channels (as `search` selects
  them), every database item ranked (`crosslayer.retrieval.evaluate`), ties counted against the method; mAP is the
  mean reciprocal rank (one relevant image a query).
- cub100 / scene15 (`--classify TAG:DIM,...`): the eval's precomputed-kernel SVM (`crosslayer.eval.svm`, C by
  3-fold CV on the manifest's train split, tested on its test split) on the normalised popcount Gram
  (`crosslayer.gram`), all images encoded with the pair's shared PCA.
- noise: a bootstrap over queries of each listed mAP difference (`--compare`), McNemar's exact test for accuracies.

The search kernel is checked against the numpy reference on a slice before any number is written.

    python benchmarks/bench_code_size.py --indexes ~/.cache/crosslayer/indexes \\
        --classify f17f18:full,128 --classify f16f17:full,128,64
    python benchmarks/bench_code_size.py --render-only         # tables and plot again from code_size.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import add_data_argument, data_set  # noqa: E402

from crosslayer import Codes, CrossLayerEncoder, reference  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402
from crosslayer.eval.manifest import load_manifest  # noqa: E402
from crosslayer.eval.svm import train_and_test  # noqa: E402
from crosslayer.formats import read_json, write_json  # noqa: E402
from crosslayer.retrieval.channels import channel_label, parse_channel_list  # noqa: E402
from crosslayer.retrieval.datasets import read_retrieval_set  # noqa: E402
from crosslayer.retrieval.evaluate import _codes_score_matrix  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex  # noqa: E402
from crosslayer.retrieval.metrics import average_precision, relevance_matrix, relevant_ranks  # noqa: E402
from crosslayer.search import gram, search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_FORMAT = "crosslayer-code-size-results"
RESULTS_VERSION = 1
DEFAULT_DIMS = "16,32,64,96,128,160,192,256,320"
DEFAULT_CHANNELS = "50,100,200,all"
CLASSIFICATION_SETS = ("cub100", "scene15")
# the target for retrieval codes
TARGET_MAP = 0.55
TARGET_BYTES = 24_000
FINDINGS_HEADING = "## Findings"


def compact_bytes(dk: int, dt: int) -> int:
    """Bytes an image in the compact format: a live bit a channel, then each channel's Dt signs in whole words."""
    return 8 * math.ceil(dk / 64) + 8 * dk * math.ceil(dt / 64)


def two_plane_bytes(dk: int, dt: int) -> int:
    """Bytes an image in the 2-plane format (nonzero and negative planes, whole words a channel)."""
    return 16 * dk * math.ceil(dt / 64)


def truncated(codes: Codes, dim: int) -> Codes:
    """The first `dim` values of every channel of `codes`: the codes of the same PCA cut to `dim` components."""
    if not 1 <= dim <= codes.Dt:
        raise UsageError(f"dim: expected 1..{codes.Dt}, got {dim}")
    if dim == codes.Dt:
        return codes
    words = math.ceil(dim / 64)
    bits = np.ascontiguousarray(codes.bits[..., :words])
    if dim % 64:
        bits[..., -1] &= np.uint64((1 << (dim % 64)) - 1)
    return Codes(bits, codes.channel_mean, dim)


def check_truncation(encoder: CrossLayerEncoder, fit_paths, encode_paths, dims) -> dict:
    """Fits a full-rotation encoder and one of each `pca_dim` in `dims` on the same images, encodes the same images
    with each, and compares the reduced codes with the cut full ones. Returns the counts compared and differing."""
    settings = dict(backbone=encoder.backbone, layers=tuple(encoder.layers), side=encoder.side, policy=encoder.policy,
                    fit_images=len(fit_paths), seed=0, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a handful of images is too few for a good PCA, on purpose: only signs matter
        full = CrossLayerEncoder(pca_dim=None, **settings).fit(fit_paths).encode(encode_paths)
        differing = compared = 0
        for dim in dims:
            reduced = CrossLayerEncoder(pca_dim=dim, **settings).fit(fit_paths).encode(encode_paths)
            cut = truncated(full, dim)
            differing += int(np.count_nonzero(cut.signs() != reduced.signs()))
            compared += cut.signs().size
            if not np.array_equal(cut.channel_mean, reduced.channel_mean):
                raise AssertionError(f"pca_dim {dim}: channel means differ from the full rotation's")
    return {"images_fit": len(fit_paths), "images_encoded": len(encode_paths), "dims": list(dims),
            "values_compared": compared, "values_differing": differing}


def open_set(indexes: Path, tag: str, name: str) -> tuple[Codes, list, dict]:
    """(codes of every live image, their absolute paths, the encoder's settings) of INDEXES/tag/name."""
    with ImageIndex.open(indexes / tag / name) as index:
        codes = index.codes.get(index.codes.live_ids())
        encoder = index.encoder
        settings = {"layers": list(encoder.layers), "Dk": encoder.Dk, "Dt": encoder.Dt, "pca_dim": encoder.pca_dim,
                    "side": encoder.side, "identity": encoder.identity_digest}
        return codes, index.paths(), settings


def per_query_ap(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    return np.array([average_precision(r) for r in relevant_ranks(scores, relevant)])


def smvs_records(tag, queries: Codes, database: Codes, relevant, dims, channel_counts, done: dict, save) -> None:
    for dim in dims:
        if dim > queries.Dt:
            continue
        q, db = truncated(queries, dim), truncated(database, dim)
        for channels in channel_counts:
            key = f"{tag}/{dim}/{channel_label(channels)}"
            if key in done:
                continue
            start = time.perf_counter()
            scores = _codes_score_matrix(q, [(db.bits, 0)], len(db), channels)
            ap = per_query_ap(scores, relevant)
            done[key] = {"pair": tag, "pca_dim": dim, "channels": channel_label(channels), "map": float(ap.mean()),
                         "ap": ap.round(6).tolist(), "seconds": time.perf_counter() - start}
            print(f"{key:<22} mAP {ap.mean():.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        save()


def classification_records(tag, indexes: Path, data: Path, dims, done: dict, save, sets=CLASSIFICATION_SETS) -> None:
    for name in sets:
        if all(f"{tag}/{dim}/{name}" in done for dim in dims):
            continue
        dataset = load_manifest(data_set(data, name))
        codes, _, _ = open_set(indexes, tag, name)
        with ImageIndex.open(indexes / tag / name) as index:
            rows = index.find(list(dataset.paths))
        if (rows < 0).any():
            raise UsageError(f"{indexes / tag / name}: {int((rows < 0).sum())} images of {name}'s manifest are not "
                             "indexed")
        codes = codes[rows]
        train, test = dataset.indices("train"), dataset.indices("test")
        for dim in dims:
            key = f"{tag}/{dim}/{name}"
            if key in done:
                continue
            start = time.perf_counter()
            cut = truncated(codes, dim)
            kernel = gram(cut, cut[train], normalize=True)
            result = train_and_test(kernel[train], dataset.labels[train], kernel[test], dataset.labels[test])
            correct = (np.asarray(result["predictions"]) == dataset.labels[test]).astype(int)
            done[key] = {"pair": tag, "pca_dim": dim, "set": name, "accuracy": result["accuracy"], "C": result["C"],
                         "correct": correct.tolist(), "seconds": time.perf_counter() - start}
            print(f"{key:<22} accuracy {result['accuracy']:.4f} C {result['C']:g}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            save()


def bootstrap_difference(a, b, rounds: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a - b) and its 95% bootstrap interval over queries (paired: one resample of queries for both)."""
    difference = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), (rounds, len(difference)))].mean(axis=1)
    return float(difference.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def mcnemar_p(correct_a, correct_b) -> float:
    """McNemar's exact test (two-sided binomial on the discordant pairs) of two classifiers on the same images."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b).pvalue)


def check_search_against_reference(queries: Codes, database: Codes) -> None:
    _, ids = search(queries[:3], database[:40], 5, 50)
    _, expected = reference.search_reference(queries.bits[:3], queries.channel_mean[:3], database.bits[:40],
                                             database.Dt, 5, 50)
    if not np.array_equal(ids, expected):
        raise AssertionError("search differs from the numpy reference")


# ---- rendering ---------------------------------------------------------------------------------------------------
def _label(pair_settings: dict, tag: str) -> str:
    layers = pair_settings[tag]["layers"]
    return f"{layers[0]} x {layers[1]}"


def _dim_text(dim: int, full: int) -> str:
    return f"{dim} (full)" if dim == full else str(dim)


def render_markdown(body: dict) -> str:
    pairs, smvs, classes = body["pairs"], body["smvs"], body["classification"]
    channel_names = body["channels"]
    lines = ["# Code size vs quality: layer pair, pca_dim, channels (issue 16)", "",
             "Generated by `benchmarks/bench_code_size.py` from `code_size.json`; the hand-written findings follow the "
             "tables.", "",
             f"SMVS: {body['queries']} phone-photo queries with a reference against {body['database']} items "
             f"({body['database'] - body['distractors']} reference scans + {body['distractors']:,} scene15/cub100 "
             "distractors); masked search over each query's strongest guidance channels (as `search`); mAP = mean "
             "reciprocal rank, ties against the method. Classification: linear SVM on the normalised popcount Gram, "
             "C by 3-fold CV on the manifest's train split, accuracy on its test split. One full-rotation encoder "
             "per pair (MobileNetV2, side 448), PCA fitted on 256 scene15/cub100 train images; the codes at a "
             "smaller pca_dim are the first pca_dim values of each channel (checked: "
             f"{body['truncation_check']['values_differing']} of {body['truncation_check']['values_compared']:,} "
             f"values differ from real pca_dim encoders fitted on {body['truncation_check']['images_fit']} images, "
             f"dims {body['truncation_check']['dims']}).", "",
             "Bytes / image: compact format `8*ceil(Dk/64) + 8*Dk*ceil(Dt/64)` (live bits + signs); the 2-plane "
             "format of 0.3 is `16*Dk*ceil(Dt/64)`. Both also store Dk float32 channel means (+4*Dk).", ""]
    head = "| pair | pca_dim | bytes (compact) | bytes (2-plane) | " + " | ".join(
        f"mAP {c} ch" if c != "all" else "mAP all ch" for c in channel_names) + " | cub100 acc | scene15 acc |"
    lines += [head, "|" + "---|" * (6 + len(channel_names))]
    for tag, settings in pairs.items():
        for dim in sorted({r["pca_dim"] for r in smvs.values() if r["pair"] == tag}):
            cells = [_label(pairs, tag), _dim_text(dim, settings["Dt"]), f"{compact_bytes(settings['Dk'], dim):,}",
                     f"{two_plane_bytes(settings['Dk'], dim):,}"]
            for channels in channel_names:
                record = smvs.get(f"{tag}/{dim}/{channels}")
                value = "–" if record is None else f"{record['map']:.3f}"
                if record is not None and record["map"] >= TARGET_MAP and compact_bytes(settings["Dk"], dim) <= TARGET_BYTES:
                    value = f"**{value}**"
                cells.append(value)
            for name in CLASSIFICATION_SETS:
                record = classes.get(f"{tag}/{dim}/{name}")
                cells.append("–" if record is None else f"{100 * record['accuracy']:.1f}%")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Bold: inside the issue's target (mAP >= {TARGET_MAP} at <= {TARGET_BYTES:,} bytes an image).", ""]
    lines += render_noise(body)
    return "\n".join(lines) + "\n"


def render_noise(body: dict) -> list:
    smvs, classes = body["smvs"], body["classification"]
    lines = ["## Noise", "",
             f"SMVS mAP differences, paired bootstrap over the {body['queries']} queries ({body['bootstrap']:,} "
             "resamples, 95% interval):", "", "| A | B | mAP A | mAP B | A - B | 95% interval |", "|---|---|---|---|---|---|"]
    for a, b in body["compare"]:
        if a in smvs and b in smvs:
            mean, low, high = bootstrap_difference(smvs[a]["ap"], smvs[b]["ap"], body["bootstrap"])
            lines.append(f"| {a} | {b} | {smvs[a]['map']:.3f} | {smvs[b]['map']:.3f} | {mean:+.3f} | "
                         f"[{low:+.3f}, {high:+.3f}] |")
    single = [bootstrap_difference(r["ap"], np.zeros(len(r["ap"])), body["bootstrap"]) for r in smvs.values()]
    if single:
        half = np.median([(high - low) / 2 for _, low, high in single])
        lines += ["", f"One configuration's mAP alone: median 95% half-width ±{half:.3f}."]
    lines += ["", "Accuracy differences, McNemar's exact test on the same test images:", "",
              "| set | A | B | acc A | acc B | A - B (points) | p |", "|---|---|---|---|---|---|---|"]
    for a, b in body["compare_classification"]:
        for name in CLASSIFICATION_SETS:
            ka, kb = f"{a}/{name}", f"{b}/{name}"
            if ka in classes and kb in classes:
                acc_a, acc_b = classes[ka]["accuracy"], classes[kb]["accuracy"]
                p = mcnemar_p(classes[ka]["correct"], classes[kb]["correct"])
                points = round(100 * (acc_a - acc_b), 1) + 0.0  # + 0.0: no "-0.0"
                lines.append(f"| {name} | {a} | {b} | {100 * acc_a:.1f}% | {100 * acc_b:.1f}% | {points:+.1f} | "
                             f"{'< 0.001' if p < 0.001 else f'{p:.3f}'} |")
    return lines


def _bytes_axis(axis) -> None:
    from matplotlib.ticker import NullFormatter

    axis.set_xscale("log")
    axis.set_xlim(2000, 70000)
    ticks = [2000, 3000, 5000, 10000, 20000, 30000, 50000]
    axis.set_xticks(ticks, [f"{t // 1000} kB" for t in ticks])
    axis.xaxis.set_minor_formatter(NullFormatter())


def render_plot(body: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, smvs, classes = body["pairs"], body["smvs"], body["classification"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    left.add_patch(plt.Rectangle((1, TARGET_MAP), TARGET_BYTES - 1, 1 - TARGET_MAP, color="tab:green", alpha=0.12,
                                 label=f"target: mAP >= {TARGET_MAP}, <= {TARGET_BYTES // 1000} kB"))
    styles = {tag: style for tag, style in zip(pairs, ("-", "--", ":", "-."))}
    colours = dict(zip(body["channels"], ("tab:blue", "tab:orange", "tab:red", "black")))
    for tag, settings in pairs.items():
        for channels in body["channels"]:
            # of the pca_dims one size holds (Dt pads to whole words), the largest: the others are dominated
            largest = {}
            for r in smvs.values():
                if r["pair"] == tag and r["channels"] == channels:
                    size = compact_bytes(settings["Dk"], r["pca_dim"])
                    if size not in largest or r["pca_dim"] > largest[size]["pca_dim"]:
                        largest[size] = r
            points = sorted((size, r["map"], r["pca_dim"]) for size, r in largest.items())
            if not points:
                continue
            x, y, dims = zip(*points)
            left.plot(x, y, styles[tag], marker="o", ms=3.5, color=colours[channels],
                      label=f"{_label(pairs, tag)}, {channels} ch")
            if channels == "all":
                for xi, yi, d in points:
                    left.annotate(str(d), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    _bytes_axis(left)
    left.set_ylim(0, 0.75)
    left.set_xlabel("bytes / image (compact format, log scale)")
    left.set_ylabel(f"SMVS mAP, {body['distractors']:,} distractors")
    left.set_title("retrieval (labels: pca_dim; of the pca_dims one size holds, the largest)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="lower right", ncol=2)
    markers = {"cub100": "o", "scene15": "s"}
    for tag, settings in pairs.items():
        for name in CLASSIFICATION_SETS:
            points = sorted((compact_bytes(settings["Dk"], r["pca_dim"]), 100 * r["accuracy"])
                            for r in classes.values() if r["pair"] == tag and r["set"] == name)
            if points:
                x, y = zip(*points)
                right.plot(x, y, styles[tag], marker=markers[name], label=f"{name}, {_label(pairs, tag)}")
    _bytes_axis(right)
    right.set_xlabel("bytes / image (compact format, log scale)")
    right.set_ylabel("test accuracy, %")
    right.set_title("classification (linear SVM on the code Gram)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render(body: dict, out: Path) -> None:
    markdown = out / "code_size.md"
    findings = ""
    if markdown.exists():  # keep the hand-written findings below the generated tables
        text = markdown.read_text()
        if FINDINGS_HEADING in text:
            findings = "\n" + text[text.index(FINDINGS_HEADING):]
    markdown.write_text(render_markdown(body) + findings)
    render_plot(body, out / "code_size.png")


# ---- main --------------------------------------------------------------------------------------------------------
def parse_classify(values) -> dict:
    """['f17f18:full,128', ...] -> {'f17f18': ['full', 128]}"""
    chosen = {}
    for value in values or ():
        tag, _, dims = value.partition(":")
        if not tag or not dims:
            raise UsageError(f"--classify: expected TAG:DIM[,DIM...] (DIM an integer or 'full'), got {value!r}")
        chosen[tag] = [d if d == "full" else int(d) for d in dims.split(",")]
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--indexes", type=Path, help="folder of INDEXES/<tag>/<set>/ image indexes (see above)")
    parser.add_argument("--pairs", default="f17f18,f16f17", help="tags of the layer pairs, comma-separated")
    parser.add_argument("--dims", default=DEFAULT_DIMS, help="pca_dim values (those above a pair's Dt are skipped)")
    parser.add_argument("--channels", default=DEFAULT_CHANNELS)
    parser.add_argument("--classify", action="append", help="TAG:DIM,... classified (repeatable; DIM 'full' ok)")
    parser.add_argument("--compare", action="append", default=[], nargs=2, metavar=("A", "B"),
                        help="SMVS keys TAG/DIM/CHANNELS to compare by bootstrap (repeatable)")
    parser.add_argument("--compare-classification", action="append", default=[], nargs=2, metavar=("A", "B"),
                        help="classification keys TAG/DIM to compare by McNemar (repeatable)")
    parser.add_argument("--classify-sets", default=",".join(CLASSIFICATION_SETS),
                        help="the classification sets, comma-separated")
    parser.add_argument("--no-smvs", action="store_true", help="classification only (e.g. while an index fills)")
    parser.add_argument("--check-images", type=int, default=6, help="images the pca_dim check fits and encodes")
    parser.add_argument("--bootstrap", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render-only", action="store_true", help="tables and plot from OUT/code_size.json")
    args = parser.parse_args(argv)
    results = args.out / "code_size.json"
    body = read_json(results, RESULTS_FORMAT, RESULTS_VERSION) if results.exists() else {}
    body.pop("version", None)
    if args.compare or args.compare_classification:
        body["compare"] = [list(c) for c in args.compare]
        body["compare_classification"] = [list(c) for c in args.compare_classification]
    body.setdefault("compare", []), body.setdefault("compare_classification", [])
    body["bootstrap"] = args.bootstrap
    if args.render_only:
        render(body, args.out)
        return 0
    if args.indexes is None:
        parser.error("--indexes is required unless --render-only")

    def save():
        write_json(results, RESULTS_FORMAT, RESULTS_VERSION, body)

    tags = [t for t in args.pairs.split(",") if t]
    dims = [int(d) for d in args.dims.split(",")]
    classify = parse_classify(args.classify)
    body.setdefault("pairs", {}), body.setdefault("smvs", {}), body.setdefault("classification", {})
    rset = read_retrieval_set(data_set(args.data, "smvs"))
    for tag in tags:
        query_codes, query_paths, settings = open_set(args.indexes, tag, "smvs-queries")
        body["pairs"][tag] = settings
        body["channels"] = [channel_label(c) for c in parse_channel_list(args.channels, settings["Dk"])]
        if args.no_smvs:
            classify_dims = [settings["Dt"] if d == "full" else d for d in classify.get(tag, [])]
            classification_records(tag, args.indexes, args.data, classify_dims, body["classification"], save,
                                   args.classify_sets.split(","))
            continue
        if "truncation_check" not in body:
            scene = load_manifest(data_set(args.data, "scene15"))
            train = [scene.paths[i] for i in scene.indices("train")]
            encoder = CrossLayerEncoder.load(args.indexes / tag / "smvs-queries" / "encoder.xle")
            start = time.perf_counter()
            body["truncation_check"] = check_truncation(encoder, train[: args.check_images],
                                                        train[args.check_images : 2 * args.check_images],
                                                        [d for d in (16, 64, 96) if d < settings["Dt"]])
            check = body["truncation_check"]
            print(f"pca_dim check: {check['values_differing']} of {check['values_compared']} values differ "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            if check["values_differing"]:
                raise AssertionError("the codes at a smaller pca_dim are not the cut full-rotation codes")
        parts = [open_set(args.indexes, tag, name)[:2] for name in ("smvs-database", "scene15", "cub100")]
        database = Codes.concatenate([codes for codes, _ in parts])
        check_search_against_reference(query_codes, database)
        item_of = dict(zip(rset.database.paths, rset.database.items))
        labels = [item_of.get(p) for p in parts[0][1]] + [None] * sum(len(paths) for _, paths in parts[1:])
        query_item = dict(zip(rset.queries.paths, rset.queries.items))
        relevant = relevance_matrix([query_item[p] for p in query_paths], labels)
        answerable = relevant.any(axis=1)
        query_codes, relevant = query_codes[np.flatnonzero(answerable)], relevant[answerable]
        body.update(queries=int(answerable.sum()), database=len(labels), distractors=len(labels) - len(parts[0][1]))
        del parts
        channel_counts = parse_channel_list(args.channels, settings["Dk"])
        smvs_records(tag, query_codes, database, relevant, dims, channel_counts, body["smvs"], save)
        del database
        if tag in classify:
            classify_dims = [settings["Dt"] if d == "full" else d for d in classify[tag]]
            classification_records(tag, args.indexes, args.data, classify_dims, body["classification"], save,
                                   args.classify_sets.split(","))
        render(body, args.out)
    save()
    render(body, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
