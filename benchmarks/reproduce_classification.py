"""Reproduces the classification tables on one data set: every method on one backbone and side, C tuned by CV.

    PYTHONPATH=python python benchmarks/reproduce_classification.py --set cub100 --side 448 [--data ROOT]

--set names a folder under the data root --data (default ../shared/data beside the repository); records hold the
set relative to it.

One main backbone pass computes all whole-image methods at once (cached and resumable); jitter and AConv have their
own passes. SPM rows at pyramid levels 0 and 0+1 are slices of the 0+1+2 rows (no pass of their own). Writes
benchmarks/results/classification-<set>.md (table), .json (records, with every test image's key, label and
prediction; a `crosslayer.formats` document) and .png (bar chart).

Uncertainty: every row's accuracy difference to the default cross-layer row with its paired bootstrap 95% interval
and McNemar's exact p; the headline comparisons (cross-layer vs global, max-SPM, sum-SPM; sign vs float; AConv vs
OConv; max vs sum) each say "within the noise" where they are; `--splits N` evaluates the headline methods on N
more seeded random train/test splits with the manifest's class sizes (from one all-images kernel) for mean +- sd.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set, relative_to_data  # noqa: E402

from crosslayer._atomic import atomic_write  # noqa: E402
from crosslayer.formats import read_json, write_json  # noqa: E402
from crosslayer.eval.stats import compare_predictions, mean_sd  # noqa: E402
from crosslayer.backbones.registry import get_backbone  # noqa: E402
from crosslayer.eval.classify import classify, source_config  # noqa: E402
from crosslayer.eval.combine import classify_combination  # noqa: E402
from crosslayer.eval.extract import extract  # noqa: E402
from crosslayer.eval.manifest import load_manifest  # noqa: E402
from crosslayer.eval.methods import DEFAULT_FIT_IMAGES, MethodConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TABLE_FORMAT = "crosslayer-classification-table"
TABLE_VERSION = 1
# the optional rows, and what each adds to the table
OPTIONAL_GROUPS = {
    "ablations": "Table 7 ablations (all 8 PCA / per-channel L2 / signed square root combinations on OConv)",
    "aconv-ablations": "Table 7 on AConv (fast): per-channel L2 / signed square root combinations, at PCA 256 and 640",
    "max": "crosslayer-max on the previous layer pair",
    "aconv-fast": "AConv approximated (aconv-fast: region embeddings from windows of one pass, no region crops; PCA "
                  "256 and the paper's half of the 1280 dimensions, 640)",
    "jitter": "CNN-Jitter (10 crops per image)",
    "crosslayer-max-default": "crosslayer-max on the default pair",
    "aconv-exact": "exact AConv (169 region crops per image, ~24x a pass; aconv-fast is its approximation)",
    "guidance": "Table 6 pairs guided by non-negative (post-ReLU6) taps inside the next block",
    "ovr": "the paper's one-vs-rest SVM on the headline methods, paired with the default one-vs-one",
    "table5-scfv": "SCFV; Table 5 FC-FC (softmax and ReLU guidance) and Conv-FC on fast regions; OConv + AConv-fast",
}
DEFAULT_GROUPS = "ablations,aconv-ablations,aconv-fast,crosslayer-max-default"
REFERENCE = "crosslayer"  # every row's paired difference is taken against this row
# the methods --splits re-evaluates, and the paper's headline comparisons (A, B, what the paper found for A - B)
HEADLINE = ("global", "sum-spm L012-t1", "max-spm L012-both", "crosslayer", "crosslayer-sign", "aconv-fast")
HEADLINE_COMPARISONS = (
    ("crosslayer", "global", "higher"),
    ("crosslayer-sign", "global", "higher"),
    ("crosslayer-sign", "max-spm L012-both", "higher"),
    ("crosslayer-sign", "sum-spm L012-t1", "higher"),
    ("crosslayer", "max-spm L012-both", "higher"),
    ("crosslayer", "sum-spm L012-t1", "higher"),
    ("crosslayer-sign", "crosslayer", "slightly lower"),
    ("aconv-fast", "crosslayer", "higher on scenes, lower on birds"),
    ("crosslayer-max", "crosslayer", "lower"),
)
# what the paper found for a row against the default cross-layer row, per table (for "what holds")
EXPECTED = {"main": "lower", "Table 8": "lower", "Table 7": "lower", "Table 9": "slightly lower",
            "max vs sum": "lower"}
OVR = " [ovr]"


def parse_groups(text: str) -> set:
    groups = {g.strip() for g in text.split(",") if g.strip()}
    unknown = sorted(groups - set(OPTIONAL_GROUPS))
    if unknown:
        raise SystemExit(f"--groups: unknown {', '.join(unknown)}; available: {', '.join(OPTIONAL_GROUPS)}")
    return groups


def not_run_note(groups) -> str:
    """The table says which baselines it lacks, so a missing row is not read as a failed method."""
    missing = [f"{OPTIONAL_GROUPS[g]} [--groups {g}]" for g in OPTIONAL_GROUPS if g not in groups]
    return "- not run: " + "; ".join(missing)


def table_rows(spec, groups):
    """(table, kwargs for classify) of the methods to run; `groups` picks the optional ones."""
    local, guidance = spec.default_pair
    # the taps listed before the local layer (a tap's module index is not its place in the list: VGG's are 1, 3, 6..)
    position = spec.taps.index(local)
    previous, before = spec.taps[position - 1], spec.taps[position - 2]
    rows = [("main", dict(method="global"))]
    for method in ("sum-spm", "max-spm"):
        for layer in ("t", "t1", "both"):
            for levels in ((0,), (0, 1), (0, 1, 2)):  # the first two are slices of the third's rows
                rows.append(("Table 8", dict(method=method, spm_layer=layer, spm_levels=levels)))
    rows.append(("main", dict(method="crosslayer")))
    rows.append(("Table 9", dict(method="crosslayer-sign")))
    for pair in ((previous, local), (before, previous)):
        if spec.stride[pair[0]] == spec.stride[pair[1]]:
            rows.append(("Table 6", dict(method="crosslayer", layers=pair)))
    if "max" in groups:
        rows.append(("max vs sum", dict(method="crosslayer-max", layers=(previous, local))))
    if "ablations" in groups:
        for pca in (True, False):
            for l2 in (True, False):
                for power in (True, False):
                    if not (pca and l2 and power):  # the default is the main row
                        rows.append(("Table 7", dict(method="crosslayer", pca=pca, l2=l2, power=power)))
    if "crosslayer-max-default" in groups:
        rows.append(("max vs sum", dict(method="crosslayer-max")))
    if "jitter" in groups:
        rows.append(("main", dict(method="jitter")))
    if "aconv-fast" in groups or "aconv-ablations" in groups:
        half = spec.channels[spec.taps[-1]] // 2  # the paper's AConv PCA keeps ~50% of the dimension
        for dim in (256, half):
            rows.append(("AConv", dict(method="aconv-fast", aconv_pca_dim=dim)))
            if "aconv-ablations" in groups:
                for l2, power in ((True, False), (False, True), (False, False)):
                    rows.append(("Table 7 AConv", dict(method="aconv-fast", aconv_pca_dim=dim, l2=l2, power=power)))
    if "aconv-exact" in groups:
        rows.append(("AConv", dict(method="aconv")))
    if "guidance" in groups:
        rows += guidance_rows(spec, (previous, before))
    if "table5-scfv" in groups:
        rows.append(("main", dict(method="scfv")))
        rows.append(("Table 5", dict(method="fc-fc")))
        rows.append(("Table 5", dict(method="fc-fc", fc_guidance="relu")))
        rows.append(("Table 5", dict(method="conv-fc")))
        rows.append(("Table 5", dict(combine=[dict(method="crosslayer"), dict(method="aconv-fast")])))
    if "ovr" in groups:
        for table, kwargs in list(rows):
            if label_of(kwargs) in HEADLINE:
                rows.append(("SVM protocol", dict(kwargs, multiclass="ovr")))
    return rows


def guidance_rows(spec, locals_):
    """Each local layer guided by the non-negative points inside the next block at its stride (MobileNetV2's block
    outputs are signed linear bottlenecks; its expansion and depthwise outputs are post-ReLU6)."""
    rows = []
    for local in locals_:
        following = spec.tap_index(local) + 1
        for inner in spec.inner_taps:
            if spec.tap_index(inner) == following and spec.stride[inner] == spec.stride[local]:
                rows.append(("Table 6 non-negative guidance", dict(method="crosslayer", layers=(local, inner))))
    return rows


def label_of(kwargs) -> str:
    if "combine" in kwargs:
        return " + ".join(label_of(part) for part in kwargs["combine"])
    return config_of(kwargs).label() + (OVR if kwargs.get("multiclass") == "ovr" else "")


def config_of(kwargs, fit_images: int = DEFAULT_FIT_IMAGES) -> MethodConfig:
    options = dict(kwargs, fit_images=fit_images)
    method = options.pop("method")
    options.pop("multiclass", None)  # the SVM's, not the representation's
    if "layers" in options:
        options["layers"] = tuple(options["layers"])
    return MethodConfig(method, **options)


def _comparison(cache: dict, by_label: dict, a: str, b: str) -> dict:
    """Paired comparison of rows `a` and `b` on their common test images (cached: the script rewrites its files
    after every row)."""
    if (a, b) not in cache:
        ra, rb = by_label[a], by_label[b]
        if ra["test_keys"] != rb["test_keys"]:
            raise SystemExit(f"rows {a!r} and {b!r} were tested on different images: no paired comparison")
        cache[(a, b)] = compare_predictions(ra["test_labels"], ra["test_predictions"], rb["test_predictions"])
    return cache[(a, b)]


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _interval(c: dict) -> str:
    return f"{_points(c['difference'])} [{_points(c['low'])}, {_points(c['high'])}]"


def _verdict(c: dict, expected: str | None) -> str:
    if c["within_noise"]:
        return "within the noise"
    direction = "higher" if c["difference"] > 0 else "lower"
    if expected in ("higher", "lower", "slightly lower"):
        return f"{direction}: {'holds' if expected.endswith(direction) else 'does not hold'}"
    return direction


def reference_of(label: str, by_label: dict) -> str:
    """The row a row's Δ column is taken against: an AConv ablation against its AConv row (same PCA size), a
    one-vs-rest row against its one-vs-one twin, every other row against the default cross-layer row."""
    if label.endswith(OVR):
        return label[: -len(OVR)]
    if label.startswith("aconv") and " no-" in label:
        return " ".join(part for part in label.split() if not part.startswith("no-"))
    return REFERENCE


def comparison_list(records, cache) -> list[dict]:
    """The headline comparisons present in `records` (and one-vs-rest against one-vs-one for every [ovr] row)."""
    by_label = {r["label"]: r for _, r in records}
    wanted = list(HEADLINE_COMPARISONS)
    for label in by_label:
        if label.startswith("crosslayer-max ") and label.replace("crosslayer-max", "crosslayer", 1) in by_label:
            wanted.append((label, label.replace("crosslayer-max", "crosslayer", 1), "lower"))
        if label.endswith(OVR) and label[: -len(OVR)] in by_label:
            wanted.append((label, label[: -len(OVR)], None))
    out = []
    for a, b, expected in wanted:
        if a in by_label and b in by_label:
            c = _comparison(cache, by_label, a, b)
            out.append({"a": a, "b": b, "paper": expected, "verdict": _verdict(c, expected), **c})
    return out


def markdown(records, title, notes, cache) -> str:
    by_label = {r["label"]: r for _, r in records}
    splits = any("resplits" in r for _, r in records)
    lines = [f"# {title}", "", *notes, "",
             f"Δ: accuracy difference to the `{REFERENCE}` row (or the row named) in points, with its paired bootstrap 95% interval "
             "(10,000 resamples of the test images); p: McNemar's exact test on the same images.", "",
             "| table | method | dims | bytes/image | accuracy | Δ vs crosslayer [95% CI] | McNemar p | mean per-class | C |"
             + (" other splits mean ± sd |" if splits else "") + " extraction s | Gram s | SVM (C by CV + train) s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if splits else "") + "---:|---:|---:|"]
    for group, record in records:
        s = record["seconds"]
        extraction = s.get("extract_network", 0.0) + s.get("extract_encode", 0.0) + s.get("aconv_train", 0.0)
        reference = reference_of(record["label"], by_label)
        if reference in by_label and record["label"] != reference:
            c = _comparison(cache, by_label, record["label"], reference)
            delta, p = _interval(c) + ("" if reference == REFERENCE else f" vs {reference}"), f"{c['p']:.2g}"
        else:
            delta, p = "", ""
        split_cell = ""
        if splits:
            accuracies = [split["accuracy"] for split in record.get("resplits", [])]
            if accuracies:
                mean, sd = mean_sd(accuracies)
                split_cell = f" {100 * mean:.2f} ± {100 * sd:.2f}% (n={len(accuracies)}) |"
            else:
                split_cell = " |"
        lines.append(
            f"| {group} | {record['label']} | {record['dims']:,} | {record['bytes_per_image']:,} | "
            f"{100 * record['accuracy']:.2f}% | {delta} | {p} | {100 * record['mean_per_class_accuracy']:.2f}% | "
            f"{record['C']:g} |{split_cell} {extraction:.0f} | {s['gram']:.1f} | {s['select_c'] + s['train_test']:.1f} |"
        )
    compared = comparison_list(records, cache)
    if compared:
        lines += ["", "## Headline comparisons (paired, same test images)", "",
                  "| A | B | A − B (points) [95% CI] | McNemar p | only A right / only B right | paper | verdict |",
                  "|---|---|---:|---:|---:|---|---|"]
        for c in compared:
            lines.append(f"| {c['a']} | {c['b']} | {_interval(c)} | {c['p']:.2g} | {c['only_a']} / {c['only_b']} | "
                         f"{c['paper'] or '-'} | {c['verdict']} |")
    lines += ["", "## What holds (automatic: each row against the cross-layer row, paired)", ""]
    for group in dict.fromkeys(g for g, _ in records):
        if REFERENCE not in by_label:
            break
        verdicts = {}
        for g, record in records:
            reference = reference_of(record["label"], by_label)
            if g == group and record["label"] != reference and reference in by_label:
                c = _comparison(cache, by_label, record["label"], reference)
                verdicts.setdefault((reference, _verdict(c, None)), []).append(record["label"])
        if verdicts:
            parts = [f"{reference} {'above' if v == 'lower' else 'below' if v == 'higher' else 'within the noise of'} "
                     f"{len(labels)} ({', '.join(labels)})" for (reference, v), labels in sorted(verdicts.items())]
            expected = EXPECTED.get(group)
            lines.append(f"- {group}: " + "; ".join(parts)
                         + (f" (the paper: these rows {expected} than cross-layer)" if expected else ""))
    lines += ["", "Why: see the notes added by hand below the generated sections."]
    return "\n".join(lines) + "\n"


def bar_chart(records, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [record["label"] for _, record in records]
    values = [100 * record["accuracy"] for _, record in records]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(labels) + 1.2))
    bars = ax.barh(range(len(labels)), values, color=["tab:red" if r["method"].startswith("crosslayer") else "tab:blue" for _, r in records])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(max(0, min(values) - 10), min(100, max(values) + 3))
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    for bar, value in zip(bars, values):
        ax.text(value + 0.2, bar.get_y() + bar.get_height() / 2, f"{value:.1f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(records, title, notes, name, cache) -> None:
    """The table (markdown), the records and comparisons (a `crosslayer.formats` JSON document) and the bar chart
    (PNG) under benchmarks/results/, each atomically: the script rewrites them after every row, and an interrupted
    run must not leave a torn file."""
    RESULTS.mkdir(exist_ok=True)
    text = markdown(records, title, notes, cache)
    with atomic_write(RESULTS / f"{name}.md", "w") as handle:
        handle.write(text)
    body = {"title": title, "notes": notes, "records": [{"table": g, **r} for g, r in records]}
    if any(r["label"] == REFERENCE for _, r in records):
        body["comparisons"] = comparison_list(records, cache)
    write_json(RESULTS / f"{name}.json", TABLE_FORMAT, TABLE_VERSION, body)
    bar_chart(records, title, RESULTS / f"{name}.png")


def read_results(path) -> dict:
    """A results document written by `write_results` (format, version and checksum checked)."""
    return read_json(path, TABLE_FORMAT, TABLE_VERSION, "classification results")


def partial_records(dataset, rows, spec, side, cache, jobs, weights=None):
    """Evaluates every method on the classes whose images all lie in the stores' complete prefix (the manifests list
    images class by class), while a pass is still running or after it was stopped. Returns (records, classes used)."""
    import numpy as np

    from crosslayer.eval.extract import default_cache_root, open_store, pass_directory
    from crosslayer.eval.gram import codes_gram, streaming_gram
    from crosslayer.eval.methods import resolve_layers
    from crosslayer.eval.svm import train_and_test

    from crosslayer.eval.classify import image_key

    directory = pass_directory(cache or default_cache_root(), dataset, spec.name, side, weights)
    # rows of their own store only (not the SPM level slices, not the one-vs-rest twins)
    rows = [(g, kwargs) for g, kwargs in rows if "multiclass" not in kwargs and source_config(config_of(kwargs)) == config_of(kwargs)]
    configs = [config_of(kwargs) for _, kwargs in rows]
    stores = [open_store(directory, config, spec, len(dataset)) for config in configs]
    done = min(store.done for store in stores)
    last_row = {label: np.flatnonzero(dataset.labels == label).max() for label in range(len(dataset.classes))}
    classes = [label for label, row in last_row.items() if row < done]
    chosen = np.flatnonzero(np.isin(dataset.labels, classes))
    labels, splits = dataset.labels[chosen], dataset.splits[chosen]
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    records = []
    for (group, _), config, store in zip(rows, configs, stores):
        data = store.rows("r")[chosen]
        began = time.perf_counter()
        if config.method == "crosslayer-sign":
            gram = codes_gram(data, spec.channels[resolve_layers(config, spec)[0]], train)
            local, guidance = resolve_layers(config, spec)
            dims, size = spec.channels[local] * spec.channels[guidance], int(np.prod(store.row_shape)) * 8
        else:
            gram = streaming_gram(data.reshape(len(chosen), -1), train)
            dims = int(np.prod(store.row_shape))
            size = dims * 4
        gram_seconds = time.perf_counter() - began
        result = train_and_test(gram[train], labels[train], gram[test], labels[test], n_jobs=jobs)
        result["test_predictions"] = result.pop("predictions")
        result.update(test_keys=[image_key(dataset, chosen[i]) for i in test], test_labels=labels[test].tolist())
        seconds = {"extract_network": float("nan"), "extract_encode": float("nan"), "gram": gram_seconds,
                   "select_c": result.pop("seconds_select_c"), "train_test": result.pop("seconds_train_test")}
        record = {"label": config.label(), "method": config.method, "dims": dims, "bytes_per_image": size,
                  "seconds": seconds, "n_train": len(train), "n_test": len(test), "classes": len(classes), **result}
        records.append((group, record))
        print(f"{group:>10} {record['label']:<40} {100 * record['accuracy']:6.2f}%  C={record['C']:g}", flush=True)
    return records, classes


def main(argv=None) -> int:
    global REFERENCE  # --reference: the Δ columns of this run's tables
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--set", required=True, help="the data set's folder (with manifest.csv), under --data")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default=None,
                        help="the backbone's state dict (.pth), for networks without installed weights (VGG, AlexNet)")
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--groups", default=DEFAULT_GROUPS,
                        help="optional rows, comma-separated: " + "; ".join(f"{g}: {d}" for g, d in OPTIONAL_GROUPS.items()))
    parser.add_argument("--cache", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--fit-images", type=int, default=DEFAULT_FIT_IMAGES,
                        help="training images sampled to fit the PCAs (fewer on a small subset: the fit re-runs them)")
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--name", default=None, help="result file stem (default: classification-<set>)")
    parser.add_argument("--splits", type=int, default=0,
                        help="also evaluate the headline methods on this many seeded random train/test splits with the "
                             "manifest's class sizes (mean ± sd; one all-images kernel per method, no new pass)")
    parser.add_argument("--splits-methods", default=",".join(HEADLINE),
                        help="comma-separated row labels --splits applies to (default: the headline methods; the "
                             "all-images kernel of a 409,600-d float method costs n/n_train times its training kernel)")
    parser.add_argument("--skip", default="",
                        help="comma-separated row labels not to evaluate (e.g. the float cross-layer rows, whose kernels "
                             "take the longest), said in the notes")
    parser.add_argument("--reference", default=REFERENCE,
                        help=f"the row every Δ is taken against (default {REFERENCE})")
    parser.add_argument("--partial", action="store_true",
                        help="no extraction: evaluate on the classes the (running or stopped) pass has completed")
    args = parser.parse_args(argv)
    set_path = data_set(args.data, args.set)
    set_name = Path(args.set).name

    spec = get_backbone(args.backbone)
    groups = parse_groups(args.groups)
    split_methods = {label.strip() for label in args.splits_methods.split(",") if label.strip()}
    skipped = [label.strip() for label in args.skip.split(",") if label.strip()]
    REFERENCE = args.reference
    rows = [(g, kwargs) for g, kwargs in table_rows(spec, groups) if label_of(kwargs) not in skipped]
    dataset = load_manifest(set_path).subset_per_class(args.limit_per_class)
    if args.partial:
        # a combination's parts are rows of their own; partial mode evaluates stores only
        rows = [row for row in rows if "combine" not in row[1]]
        records, classes = partial_records(dataset, rows, spec, args.side, args.cache, args.jobs, args.weights)
        name = args.name or f"classification-{set_name}-partial"
        title = (f"PARTIAL {set_name}: first {len(classes)} of {len(dataset.classes)} classes; "
                 f"{spec.name} side {args.side}, linear SVM, C by 3-fold CV")
        notes = [f"- PARTIAL: the extraction pass had completed only {len(classes)} of {len(dataset.classes)} classes "
                 f"({records[0][1]['n_train']} train / {records[0][1]['n_test']} test images); fewer classes make the "
                 "task easier than the full set, so compare methods with each other only",
                 "- extraction times are not attributed in partial mode (nan)",
                 not_run_note(groups),
                 "- generated by benchmarks/reproduce_classification.py --partial"]
        write_results(records, title, notes, name, {})
        return 0
    started = time.perf_counter()
    # one pass per pass kind for all methods (classify below then finds every store complete)
    # a combination's parts are rows too: each config once
    configs = dict.fromkeys(source_config(config_of(part, args.fit_images))
                            for _, kwargs in rows for part in kwargs.get("combine", [kwargs]))
    extract(dataset, list(configs), spec.name, args.side, args.cache, args.weights, fit_images=args.fit_images)
    print(f"extraction done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.extract_only:
        return 0
    name = args.name or f"classification-{set_name}"
    command = "python benchmarks/reproduce_classification.py " + " ".join(argv if argv is not None else sys.argv[1:])
    records, cache = [], {}
    for group, kwargs in rows:
        resplits = args.splits if label_of(kwargs) in split_methods else 0
        if "combine" in kwargs:
            record = classify_combination(set_path, kwargs["combine"], backbone=spec.name, side=args.side,
                                          cache_dir=args.cache, n_jobs=args.jobs, limit_per_class=args.limit_per_class,
                                          fit_images=args.fit_images, weights=args.weights)
            record["test_labels"] = record.get("test_labels", record["parts"][0].get("test_labels"))
        else:
            record = classify(set_path, backbone=spec.name, side=args.side, cache_dir=args.cache, n_jobs=args.jobs,
                              limit_per_class=args.limit_per_class, fit_images=args.fit_images, progress=False,
                              resplits=resplits, weights=args.weights, **kwargs)
        record["label"] = label_of(kwargs)
        record["dataset"] = relative_to_data(args.data, set_path)
        records.append((group, record))
        print(f"{group:>10} {record['label']:<40} {100 * record['accuracy']:6.2f}%  C={record['C']:g}", flush=True)
        title = f"{set_name}: {spec.name} side {args.side}, linear SVM on precomputed kernels, C by 3-fold CV"
        notes = [f"- {records[0][1]['n_train']} train / {records[0][1]['n_test']} test images, {records[0][1]['classes']} classes"
                 + (f", at most {args.limit_per_class} per class and split (seeded subset)" if args.limit_per_class else ""),
                 "- SVM: libsvm one-vs-one (`SVC`) unless the row says [ovr] (the paper's one-vs-rest)",
                 "- Table 8 rows at levels L0 and L01 are slices of the L012 rows (same pass)",
                 "- extraction s: backbone share of the shared pass + this method's encoding (+ AConv training)",
                 "- bytes/image: float32 representation, or the 2-bit sign code; float features are stored as float16 on disk",
                 not_run_note(groups) + "".join(f"; {label} [--skip]" for label in skipped),
                 (f"- other splits: {args.splits} seeded random train/test splits (seeds 1..{args.splits}) with the "
                  f"manifest's per-class sizes, for: {', '.join(sorted(split_methods))}" if args.splits
                  else "- other splits: not run [--splits N]"),
                 f"- command: `{command}`; evaluation run time {time.perf_counter() - started:.0f} s so far (2 shared cores)",
                 "- generated by benchmarks/reproduce_classification.py; rows appear as they complete"]
        write_results(records, title, notes, name, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
