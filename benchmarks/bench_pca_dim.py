"""Sign codes over `pca_dim` on real images, the PCA fitted the way `index build` fits it (a seeded sample of the
indexed images: `CrossLayerEncoder.fit`'s `fit_images`): SMVS mAP (192 queries vs the 192 reference scans plus
`--distractors` cub100/scene15 images) at 50 and all channels, and scene15 accuracy of a linear SVM on the
normalised code Gram (`--per-class` train and test images a class). The backbone runs once per image; every
`pca_dim` re-pools the same activations. Checks the masked search against the reference kernel on a slice first.

    python benchmarks/bench_pca_dim.py --distractors 400 --per-class 20
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
from bench_fit_set import activations, fitted_pca  # noqa: E402
from bench_two_stage import distractor_paths, mean_reciprocal_rank, smvs  # noqa: E402

from crosslayer import CrossLayerEncoder, pool, reference  # noqa: E402
from crosslayer.search import gram, search  # noqa: E402


def fit_sample(count: int, limit: int, seed: int = 0) -> np.ndarray:
    """The rows `CrossLayerEncoder.fit` samples: at most `limit` of `count`, seeded."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def scene_split(root, per_class: int):
    folder = data_set(root, "scene15")
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    picked = {"train": [], "test": []}
    for label in sorted({r["label"] for r in rows}):
        for split in picked:
            picked[split] += [(str(folder / r["path"]), label)
                              for r in rows if r["label"] == label and r["split"] == split][:per_class]
    return picked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--distractors", type=int, default=400)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--dims", default="full,128,64,32")
    parser.add_argument("--fit-images", type=int, default=256)
    args = parser.parse_args(argv)
    dims = [None if d == "full" else int(d) for d in args.dims.split(",")]
    encoder = CrossLayerEncoder()
    queries, database = smvs(args.data)
    database_paths = [p for p, _ in database] + distractor_paths(args.data, args.distractors)
    start = time.perf_counter()
    db_local, db_guidance = activations(encoder, database_paths)
    q_local, q_guidance = activations(encoder, [p for p, _ in queries])
    scene = scene_split(args.data, args.per_class)
    tr_local, tr_guidance = activations(encoder, [p for p, _ in scene["train"]])
    te_local, te_guidance = activations(encoder, [p for p, _ in scene["test"]])
    print(f"backbone on {len(database_paths) + len(queries)} SMVS/distractor and {2 * len(scene['train'])} scene15 "
          f"images: {time.perf_counter() - start:.0f} s")
    item_row = {item: row for row, (_, item) in enumerate(database)}
    relevant = np.array([item_row[item] for _, item in queries])
    y_train = np.array([label for _, label in scene["train"]])
    y_test = np.array([label for _, label in scene["test"]])
    from sklearn.svm import SVC

    print(f"{'pca_dim':>8}{'bytes/img':>10}{'SMVS mAP@50ch':>14}{'mAP all ch':>11}{'scene15 acc':>12}")
    for dim in dims:
        pca = fitted_pca(db_local[fit_sample(len(db_local), args.fit_images)], dim)
        db_codes = pool(db_local, db_guidance, pca, output="codes")
        q_codes = pool(q_local, q_guidance, pca, output="codes")
        if dim == dims[0]:  # the kernel against the numpy reference on a slice, before any number is printed
            _, ids = search(q_codes[:3], db_codes[:40], 5, 50)
            _, expected = reference.search_reference(q_codes.bits[:3], q_codes.channel_mean[:3], db_codes.bits[:40],
                                                     db_codes.Dt, 5, 50)
            assert np.array_equal(ids, expected), "search differs from the reference"
        maps = [mean_reciprocal_rank(search(q_codes, db_codes, 100, channels)[1], relevant) for channels in (50, None)]
        train_pca = fitted_pca(tr_local[fit_sample(len(tr_local), args.fit_images)], dim)
        train_codes = pool(tr_local, tr_guidance, train_pca, output="codes")
        test_codes = pool(te_local, te_guidance, train_pca, output="codes")
        svm = SVC(kernel="precomputed", C=10).fit(gram(train_codes, normalize=True), y_train)
        accuracy = float(np.mean(svm.predict(gram(test_codes, train_codes, normalize=True)) == y_test))
        print(f"{dim or 320:>8}{db_codes.bits[0].nbytes:>10}{maps[0]:>14.3f}{maps[1]:>11.3f}{accuracy:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
