"""Classification rows from an image index that already holds every image of a set (sign codes and pooled embeddings,
e.g. one made by `crosslayer index build --embeddings`): `global` (the L2-normalised embedding) and `crosslayer-sign`
(the popcount Gram of the codes), on the manifest's split and on --splits more seeded random splits with its class
sizes, with the paired comparison of the two. No backbone pass: a full-set uncertainty check where a main pass is
too costly. The index's encoder (its PCA sample) is the index's, not the eval's, so these rows are labelled apart.

    PYTHONPATH=python python benchmarks/classify_shared_index.py --index INDEX_DIR --set cub100 [--data ROOT] [--splits 3]

Writes benchmarks/results/classification-<set>-index.md/.json/.png (the reproduce_classification.py layout).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

import numpy as np  # noqa: E402

from crosslayer.errors import UsageError  # noqa: E402


def index_rows(index, dataset) -> np.ndarray:
    """The index ids of the manifest's images, in manifest order (UsageError naming what is missing)."""
    ids = index.find(list(dataset.paths))
    missing = [dataset.paths[i] for i in np.flatnonzero(ids < 0)]
    if missing:
        raise UsageError(f"--index: {len(missing)} manifest images are not in the index, e.g. {missing[0]}")
    return ids


def evaluate(label, method, gram_all, dataset, splits, dims, bytes_per_image, gram_seconds, jobs) -> dict:
    from crosslayer.eval.classify import image_key, resplit_results
    from crosslayer.eval.svm import train_and_test

    train, test = dataset.indices("train"), dataset.indices("test")
    result = train_and_test(gram_all[np.ix_(train, train)], dataset.labels[train], gram_all[np.ix_(test, train)],
                            dataset.labels[test], n_jobs=jobs)
    seconds = {"gram": gram_seconds, "select_c": result.pop("seconds_select_c"),
               "train_test": result.pop("seconds_train_test")}
    record = {"label": label, "method": method, "dims": dims, "bytes_per_image": bytes_per_image,
              "n_train": len(train), "n_test": len(test), "classes": len(dataset.classes), "seconds": seconds,
              "test_keys": [image_key(dataset, i) for i in test], "test_labels": dataset.labels[test].tolist(),
              "test_predictions": result.pop("predictions"), **result}
    if splits:
        record["resplits"] = resplit_results(gram_all, dataset.labels, dataset.splits, splits, n_jobs=jobs)
    return record


def main(argv=None) -> int:
    import crosslayer
    import reproduce_classification as table

    from crosslayer.eval.manifest import load_manifest
    from crosslayer.l2 import l2_normalize
    from crosslayer.retrieval.image_index import ImageIndex

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--index", required=True, help="an image index holding every image of the set, with embeddings")
    parser.add_argument("--set", required=True, help="the data set's folder (with manifest.csv), under --data")
    parser.add_argument("--splits", type=int, default=3, help="more seeded random train/test splits (default 3)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--name", default=None, help="result file stem (default: classification-<set>-index)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    set_path = data_set(args.data, args.set)
    dataset = load_manifest(set_path)
    index = ImageIndex.open(args.index)
    ids = index_rows(index, dataset)
    encoder = index.encoder

    begin = time.perf_counter()
    embeddings = l2_normalize(np.asarray(index.codes.side("embedding", ids), np.float64))
    records = [("main", evaluate("global", "global", embeddings @ embeddings.T, dataset, args.splits,
                                 embeddings.shape[1], embeddings.shape[1] * 4, time.perf_counter() - begin, args.jobs))]
    print(f"global {100 * records[-1][1]['accuracy']:.2f}%", flush=True)
    begin = time.perf_counter()
    codes = index.codes.get(ids)
    gram = np.asarray(crosslayer.gram(codes, codes), np.float64)
    records.append(("Table 9", evaluate("crosslayer-sign", "crosslayer-sign", gram, dataset, args.splits,
                                        encoder.Dk * encoder.Dt, int(codes.bits[0].nbytes), time.perf_counter() - begin,
                                        args.jobs)))
    print(f"crosslayer-sign {100 * records[-1][1]['accuracy']:.2f}%", flush=True)

    name = args.name or f"classification-{Path(args.set).name}-index"
    command = "python benchmarks/classify_shared_index.py " + " ".join(argv if argv is not None else sys.argv[1:])
    title = (f"{Path(args.set).name} from an image index: {encoder.backbone} {' x '.join(encoder.layers)} side "
             f"{encoder.side}, linear SVM on precomputed kernels, C by 3-fold CV")
    notes = [f"- {records[0][1]['n_train']} train / {records[0][1]['n_test']} test images, {len(dataset.classes)} classes "
             "(the full manifest)",
             f"- index: {args.index}; its encoder's PCA was fitted on its own sample, so these rows differ slightly "
             "from the eval's `global` / `crosslayer-sign` rows",
             f"- other splits: {args.splits} seeded random train/test splits (seeds 1..{args.splits}) with the manifest's "
             "per-class sizes",
             f"- command: `{command}`; run time {time.perf_counter() - started:.0f} s (2 shared cores)"]
    table.write_results(records, title, notes, name, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
