"""The fit-set trap (issue 16), on real images: nearest-neighbour precision@1 of sign codes when the PCA is fitted on
the very images being encoded ("self") versus on other images of the same kind ("other"), for a full rotation and
for a reduced `pca_dim`, next to the float cross-layer representation (the reference the codes approximate).

The backbone runs once per image; every PCA variant re-pools the same activations, so the rows differ only in the
PCA. Precision@1 is leave-one-out: each image's nearest other image (normalised code Gram, or masked search over
the query's `--channels` strongest guidance channels) is right when it has the same label.

    python benchmarks/bench_fit_set.py                       # scene15: 8 classes x 6 test images, side 224
    python benchmarks/bench_fit_set.py --classes 15 --per-class 6 --side 448
    python benchmarks/bench_fit_set.py --side 448 --layers features.16 features.17 --dims full,128,64
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import add_data_argument, data_set  # noqa: E402

from crosslayer import CrossLayerEncoder, pool  # noqa: E402
from crosslayer.pca import CovarianceAccumulator, local_rows  # noqa: E402
from crosslayer.search import gram, search  # noqa: E402


def scene_slice(root, classes: int, per_class: int, fit_per_class: int):
    """(eval paths, eval labels, other paths): the first `per_class` test images of the first `classes` scene15
    classes, and `fit_per_class` train images of the same classes (the "other images of the same kind")."""
    folder = data_set(root, "scene15")
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    labels = sorted({row["label"] for row in rows})[:classes]
    evaluated, other = [], []
    for label in labels:
        tests = [r for r in rows if r["label"] == label and r["split"] == "test"][:per_class]
        trains = [r for r in rows if r["label"] == label and r["split"] == "train"][:fit_per_class]
        evaluated += [(str(folder / r["path"]), label) for r in tests]
        other += [str(folder / r["path"]) for r in trains]
    return [p for p, _ in evaluated], np.array([lab for _, lab in evaluated]), other


def activations(encoder: CrossLayerEncoder, paths) -> tuple[np.ndarray, np.ndarray]:
    local, guidance = [], []
    for batch in encoder.activations(paths):
        local.append(batch.outputs[encoder.layers[0]])
        guidance.append(batch.outputs[encoder.layers[1]])
    return np.concatenate(local), np.concatenate(guidance)


def fitted_pca(local: np.ndarray, dim: int | None):
    accumulator = CovarianceAccumulator(local.shape[1])
    for start in range(0, len(local), 8):
        accumulator.add(local_rows(local[start:start + 8]))
    mean, projection = accumulator.pca(dim)
    return mean.astype(np.float32), np.ascontiguousarray(projection, np.float32)


def precision_at_1(similarity: np.ndarray, labels: np.ndarray) -> float:
    similarity = similarity.astype(np.float64).copy()
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


def masked_precision_at_1(codes, labels: np.ndarray, channels: int) -> float:
    _, ids = search(codes, codes, k=2, channels=channels)
    # the query itself scores highest unless another image ties or beats it: take the best that is not itself
    best = np.where(ids[:, 0] == np.arange(len(codes)), ids[:, 1], ids[:, 0])
    return float(np.mean(labels[best] == labels))


def trap_table(local, guidance, labels, other_local, dims=(None, 64), channels: int = 50) -> list[dict]:
    """One row per (PCA fitted on, pca_dim): precision@1 of the normalised code Gram, of masked search and of the
    float representation's cosine."""
    rows = []
    for fitted_on, source in (("self", local), ("other", other_local)):
        for dim in dims:
            pca = fitted_pca(source, dim)
            codes = pool(local, guidance, pca, output="codes")
            floats = pool(local, guidance, pca, output="float")
            cosine = floats @ floats.T  # rows are L2-normalised per channel: divide by the norms to get cosines
            norms = np.linalg.norm(floats, axis=1)
            rows.append({"fitted_on": fitted_on, "pca_dim": dim or local.shape[1],
                         "code_gram": precision_at_1(gram(codes, normalize=True), labels),
                         "masked": masked_precision_at_1(codes, labels, channels),
                         "float": precision_at_1(cosine / np.outer(norms, norms), labels)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--fit-per-class", type=int, default=8, help="train images per class for the 'other' fit")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--dims", default="full,64,32", help="pca_dim values, 'full' for the rotation")
    parser.add_argument("--layers", nargs=2, default=None, metavar="LAYER",
                        help="the layer pair (default: the encoder's, features.17 features.18)")
    args = parser.parse_args(argv)
    dims = tuple(None if d == "full" else int(d) for d in args.dims.split(","))
    paths, labels, other = scene_slice(args.data, args.classes, args.per_class, args.fit_per_class)
    encoder = CrossLayerEncoder(side=args.side, layers=args.layers)
    start = time.perf_counter()
    local, guidance = activations(encoder, paths)
    other_local, _ = activations(encoder, other)
    print(f"scene15: {len(paths)} images ({args.classes} classes x {args.per_class}) evaluated, {len(other)} other "
          f"train images for the 'other' fit; {' x '.join(encoder.layers)}, side {args.side}; backbone {time.perf_counter() - start:.1f} s; "
          f"chance ~{1 / args.classes:.2f}")
    print(f"{'PCA fitted on':<14}{'pca_dim':>8}{'code Gram P@1':>15}{'masked P@1':>12}{'float P@1':>11}")
    for row in trap_table(local, guidance, labels, other_local, dims, args.channels):
        print(f"{row['fitted_on']:<14}{row['pca_dim']:>8}{row['code_gram']:>15.3f}{row['masked']:>12.3f}"
              f"{row['float']:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
