"""Paired statistics for comparing two methods on the same test items: McNemar's exact test on the discordant pairs,
a paired bootstrap interval for the difference of two per-item scores (accuracy: 0/1 correct; retrieval: average
precision per query), and seeded re-splits of a manifest with its class sizes kept."""

from __future__ import annotations

import math

import numpy as np

from crosslayer.errors import UsageError

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
_CHUNK = 500  # resamples drawn at once (bounded memory on large test sets)


def _paired(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise UsageError(f"{name_b}: expected one value per item of {name_a} ({a.size}), got {b.size}")
    if a.size == 0:
        raise UsageError(f"{name_a}: expected at least one paired item, got none")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise UsageError(f"{name_a}, {name_b}: expected finite per-item scores")
    return a, b


def _binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (exact for the n of any test set)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0) for i in range(k + 1)]
    top = max(logs)
    return math.exp(top) * sum(math.exp(v - top) for v in logs)


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test of two classifiers on the same test items.

    correct_a, correct_b: booleans (or 0/1), one per item. Under the null both are equally accurate, so each of
    the n = b + c discordant items (b: only A right, c: only B right) is A's with probability 1/2; the two-sided p
    is min(1, 2 P(X <= min(b, c))), X ~ Binomial(n, 1/2). Returns {"only_a", "only_b", "p"} (p = 1 with no
    discordant item)."""
    a, b = _paired(correct_a, correct_b, "correct_a", "correct_b")
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise UsageError("correct_a, correct_b: expected booleans (1 = item classified correctly)")
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * _binomial_cdf_half(min(only_a, only_b), n))
    return {"only_a": only_a, "only_b": only_b, "p": p}


def paired_bootstrap(scores_a, scores_b, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                     seed: int = 0) -> dict:
    """Percentile bootstrap interval of mean(scores_a) - mean(scores_b), resampling items (with both methods' scores
    of an item kept together, so the pairing's correlation is kept). Returns {"difference", "low", "high", "level"}."""
    a, b = _paired(scores_a, scores_b, "scores_a", "scores_b")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 100:
        raise UsageError(f"resamples: expected an integer >= 100, got {resamples!r}")
    if not 0.5 <= level < 1.0:
        raise UsageError(f"level: expected a confidence level in [0.5, 1), got {level!r}")
    difference = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(int(resamples))
    for start in range(0, len(means), _CHUNK):
        count = min(_CHUNK, len(means) - start)
        means[start : start + count] = difference[rng.integers(0, difference.size, (count, difference.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"difference": float(difference.mean()), "low": float(low), "high": float(high), "level": float(level)}


def compare_predictions(truth, predicted_a, predicted_b, resamples: int = DEFAULT_RESAMPLES,
                        level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """Accuracy difference A - B on the same test items, with its paired bootstrap interval and McNemar's p.
    "within_noise": the interval holds 0 or McNemar's p is at least 1 - level (either test fails to tell them apart)."""
    truth = np.asarray(truth).ravel()
    predicted_a, predicted_b = np.asarray(predicted_a).ravel(), np.asarray(predicted_b).ravel()
    if predicted_a.shape != truth.shape or predicted_b.shape != truth.shape:
        raise UsageError(f"predicted_a, predicted_b: expected one prediction per test item ({truth.size}), got "
                         f"{predicted_a.size} and {predicted_b.size}")
    correct_a, correct_b = predicted_a == truth, predicted_b == truth
    interval = paired_bootstrap(correct_a, correct_b, resamples, level, seed)
    test = mcnemar_exact(correct_a, correct_b)
    return {**interval, **test, "within_noise": bool(interval["low"] <= 0.0 <= interval["high"] or test["p"] >= 1.0 - level)}


def resplit(labels, splits, seed: int, keep=("train", "test")) -> np.ndarray:
    """A random train/test split with the manifest's class sizes: per class, that class's images of the `keep`
    splits are shuffled (seeded) and dealt out in the original counts; other splits (val) stay where they are."""
    labels, splits = np.asarray(labels), np.asarray(splits).astype(object)
    if labels.shape != splits.shape:
        raise UsageError(f"splits: expected one split per image ({labels.size}), got {splits.size}")
    rng = np.random.default_rng(seed)
    out = splits.copy()
    for label in np.unique(labels):
        members = np.flatnonzero((labels == label) & np.isin(splits, keep))
        names = splits[members]
        out[members[rng.permutation(len(members))]] = names
    return out


def mean_sd(values) -> tuple[float, float]:
    """(mean, sample standard deviation); sd is nan for a single value."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise UsageError("values: expected at least one value")
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan")
