"""Paired comparison of signed and non-negative guidance on one classification subset (issue 12, item 2).

    PYTHONPATH=python python benchmarks/guidance_paired.py --set scene15 --limit-per-class 40 --fit-images 128
        --cache DIR [--data ROOT]

Runs after `reproduce_classification.py --groups guidance` with the same subset, fit and cache: every row's store
and Gram are then cached, so this only retrains the SVMs to get the per-image test predictions, and compares each
non-negative guidance row with the signed pair of the same local layer by an exact McNemar test (two-sided
binomial test on the test images exactly one of the two gets right). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

from crosslayer.eval.classify import classify  # noqa: E402
from crosslayer.eval.manifest import load_manifest  # noqa: E402

SIGNED = {"features.16": "features.17", "features.15": "features.16"}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """(images only a gets right, images only b gets right, exact two-sided p)."""
    from scipy.stats import binomtest

    only_a = int(np.count_nonzero(correct_a & ~correct_b))
    only_b = int(np.count_nonzero(correct_b & ~correct_a))
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return only_a, only_b, p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--set", required=True)
    parser.add_argument("--limit-per-class", type=int, required=True)
    parser.add_argument("--fit-images", type=int, required=True)
    parser.add_argument("--cache", required=True)
    args = parser.parse_args(argv)
    set_path = data_set(args.data, args.set)
    dataset = load_manifest(set_path).subset_per_class(args.limit_per_class)
    truth = dataset.labels[dataset.indices("test")]
    common = dict(cache_dir=args.cache, limit_per_class=args.limit_per_class, fit_images=args.fit_images,
                  progress=False, n_jobs=2)
    correct, accuracy = {}, {}
    for local, signed in SIGNED.items():
        for guidance in (signed, f"{signed}.conv.0", f"{signed}.conv.1"):
            record = classify(set_path, "crosslayer", layers=(local, guidance), **common)
            predicted = np.asarray(record["test_predictions"])
            correct[local, guidance] = predicted == truth
            accuracy[local, guidance] = record["accuracy"]
    lines = ["| local | signed guidance | accuracy | non-negative guidance | accuracy | only signed right | "
             "only non-negative right | McNemar p |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for local, signed in SIGNED.items():
        for guidance in (f"{signed}.conv.0", f"{signed}.conv.1"):
            only_signed, only_other, p = mcnemar(correct[local, signed], correct[local, guidance])
            lines.append(f"| {local} | {signed} | {100 * accuracy[local, signed]:.2f}% | {guidance} | "
                         f"{100 * accuracy[local, guidance]:.2f}% | {only_signed} | {only_other} | {p:.3g} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
