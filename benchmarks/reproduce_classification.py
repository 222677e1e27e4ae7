"""Reproduces the classification tables on one data set: every method on one backbone and side, C tuned by CV.

    PYTHONPATH=python python benchmarks/reproduce_classification.py --set cub100 --side 448 [--data ROOT]

--set names a folder under the data root --data (default ../shared/data beside the repository); records hold the
set relative to it.

One main backbone pass computes all whole-image methods at once (cached and resumable); jitter and AConv have their
own passes. Writes benchmarks/results/classification-<set>.md (table), .json (records) and .png (bar chart).
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
from crosslayer.backbones.registry import get_backbone  # noqa: E402
from crosslayer.eval.classify import classify  # noqa: E402
from crosslayer.eval.extract import extract  # noqa: E402
from crosslayer.eval.manifest import load_manifest  # noqa: E402
from crosslayer.eval.methods import DEFAULT_FIT_IMAGES, MethodConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the optional rows, and what each adds to the table
OPTIONAL_GROUPS = {
    "ablations": "Table 7 ablations (without PCA, per-channel L2, signed square root)",
    "max": "crosslayer-max on the previous layer pair",
    "aconv-fast": "AConv approximated (aconv-fast: region embeddings from windows of one pass, no region crops)",
    "jitter": "CNN-Jitter (10 crops per image)",
    "crosslayer-max-default": "crosslayer-max on the default pair",
    "aconv-exact": "exact AConv (169 region crops per image, ~24x a pass; aconv-fast is its approximation)",
    "guidance": "Table 6 pairs guided by non-negative (post-ReLU6) taps inside the next block",
}
DEFAULT_GROUPS = "ablations,aconv-fast"


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
    previous = spec.taps[spec.tap_index(local) - 1]
    before = spec.taps[spec.tap_index(local) - 2]
    rows = [("main", dict(method="global"))]
    for method in ("sum-spm", "max-spm"):
        for layer in ("t", "t1", "both"):
            rows.append(("Table 8", dict(method=method, spm_layer=layer)))
    rows.append(("main", dict(method="crosslayer")))
    rows.append(("Table 9", dict(method="crosslayer-sign")))
    for pair in ((previous, local), (before, previous)):
        if spec.stride[pair[0]] == spec.stride[pair[1]]:
            rows.append(("Table 6", dict(method="crosslayer", layers=pair)))
    if "max" in groups:
        rows.append(("max vs sum", dict(method="crosslayer-max", layers=(previous, local))))
    if "ablations" in groups:
        for flags in (dict(pca=False), dict(l2=False), dict(power=False), dict(l2=False, power=False)):
            rows.append(("Table 7", dict(method="crosslayer", **flags)))
    if "crosslayer-max-default" in groups:
        rows.append(("max vs sum", dict(method="crosslayer-max")))
    if "jitter" in groups:
        rows.append(("main", dict(method="jitter")))
    if "aconv-fast" in groups:
        rows.append(("AConv", dict(method="aconv-fast")))
    if "aconv-exact" in groups:
        rows.append(("AConv", dict(method="aconv")))
    if "guidance" in groups:
        rows += guidance_rows(spec, (previous, before))
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


def config_of(kwargs, fit_images: int = DEFAULT_FIT_IMAGES) -> MethodConfig:
    options = dict(kwargs, fit_images=fit_images)
    method = options.pop("method")
    if "layers" in options:
        options["layers"] = tuple(options["layers"])
    return MethodConfig(method, **options)


def markdown(records, title, notes) -> str:
    lines = [f"# {title}", "", *notes, "",
             "| table | method | dims | bytes/image | accuracy | mean per-class | C | extraction s | Gram s | SVM (C by CV + train) s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group, record in records:
        s = record["seconds"]
        extraction = s.get("extract_network", 0.0) + s.get("extract_encode", 0.0) + s.get("aconv_train", 0.0)
        lines.append(
            f"| {group} | {record['label']} | {record['dims']:,} | {record['bytes_per_image']:,} | "
            f"{100 * record['accuracy']:.2f}% | {100 * record['mean_per_class_accuracy']:.2f}% | {record['C']:g} | "
            f"{extraction:.0f} | {s['gram']:.1f} | {s['select_c'] + s['train_test']:.1f} |"
        )
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


def write_results(records, title, notes, name) -> None:
    """The table (markdown), the records (JSON) and the bar chart (PNG) under benchmarks/results/, each atomically:
    the script rewrites them after every row, and an interrupted run must not leave a torn file."""
    RESULTS.mkdir(exist_ok=True)
    with atomic_write(RESULTS / f"{name}.md", "w") as handle:
        handle.write(markdown(records, title, notes))
    with atomic_write(RESULTS / f"{name}.json", "w") as handle:
        json.dump([{"table": g, **r} for g, r in records], handle, indent=1)
    bar_chart(records, title, RESULTS / f"{name}.png")


def partial_records(dataset, rows, spec, side, cache, jobs):
    """Evaluates every method on the classes whose images all lie in the stores' complete prefix (the manifests list
    images class by class), while a pass is still running or after it was stopped. Returns (records, classes used)."""
    import numpy as np

    from crosslayer.eval.extract import default_cache_root, open_store, pass_directory
    from crosslayer.eval.gram import codes_gram, streaming_gram
    from crosslayer.eval.methods import resolve_layers
    from crosslayer.eval.svm import train_and_test

    directory = pass_directory(cache or default_cache_root(), dataset, spec.name, side, None)
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
        result.pop("predictions")
        seconds = {"extract_network": float("nan"), "extract_encode": float("nan"), "gram": gram_seconds,
                   "select_c": result.pop("seconds_select_c"), "train_test": result.pop("seconds_train_test")}
        record = {"label": config.label(), "method": config.method, "dims": dims, "bytes_per_image": size,
                  "seconds": seconds, "n_train": len(train), "n_test": len(test), "classes": len(classes), **result}
        records.append((group, record))
        print(f"{group:>10} {record['label']:<40} {100 * record['accuracy']:6.2f}%  C={record['C']:g}", flush=True)
    return records, classes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--set", required=True, help="the data set's folder (with manifest.csv), under --data")
    parser.add_argument("--backbone", default="mobilenet_v2")
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
    parser.add_argument("--partial", action="store_true",
                        help="no extraction: evaluate on the classes the (running or stopped) pass has completed")
    args = parser.parse_args(argv)
    set_path = data_set(args.data, args.set)
    set_name = Path(args.set).name

    spec = get_backbone(args.backbone)
    groups = parse_groups(args.groups)
    rows = table_rows(spec, groups)
    dataset = load_manifest(set_path).subset_per_class(args.limit_per_class)
    if args.partial:
        records, classes = partial_records(dataset, rows, spec, args.side, args.cache, args.jobs)
        name = args.name or f"classification-{set_name}-partial"
        title = (f"PARTIAL {set_name}: first {len(classes)} of {len(dataset.classes)} classes; "
                 f"{spec.name} side {args.side}, linear SVM, C by 3-fold CV")
        notes = [f"- PARTIAL: the extraction pass had completed only {len(classes)} of {len(dataset.classes)} classes "
                 f"({records[0][1]['n_train']} train / {records[0][1]['n_test']} test images); fewer classes make the "
                 "task easier than the full set, so compare methods with each other only",
                 "- extraction times are not attributed in partial mode (nan)",
                 not_run_note(groups),
                 "- generated by benchmarks/reproduce_classification.py --partial"]
        write_results(records, title, notes, name)
        return 0
    started = time.perf_counter()
    # one pass per pass kind for all methods (classify below then finds every store complete)
    extract(dataset, [config_of(kwargs, args.fit_images) for _, kwargs in rows], spec.name, args.side, args.cache,
            fit_images=args.fit_images)
    print(f"extraction done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.extract_only:
        return 0
    name = args.name or f"classification-{set_name}"
    records = []
    for group, kwargs in rows:
        record = classify(set_path, backbone=spec.name, side=args.side, cache_dir=args.cache, n_jobs=args.jobs,
                          limit_per_class=args.limit_per_class, fit_images=args.fit_images, progress=False, **kwargs)
        record.pop("test_predictions")
        record["dataset"] = relative_to_data(args.data, set_path)
        records.append((group, record))
        print(f"{group:>10} {record['label']:<40} {100 * record['accuracy']:6.2f}%  C={record['C']:g}", flush=True)
        title = f"{set_name}: {spec.name} side {args.side}, linear SVM on precomputed kernels, C by 3-fold CV"
        notes = [f"- {records[0][1]['n_train']} train / {records[0][1]['n_test']} test images, {records[0][1]['classes']} classes"
                 + (f", at most {args.limit_per_class} per class and split" if args.limit_per_class else ""),
                 "- extraction s: backbone share of the shared pass + this method's encoding (+ AConv training)",
                 "- bytes/image: float32 representation, or the 2-bit sign code; float features are stored as float16 on disk",
                 not_run_note(groups),
                 "- generated by benchmarks/reproduce_classification.py; rows appear as they complete"]
        write_results(records, title, notes, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
