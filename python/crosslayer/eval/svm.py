"""Linear SVM on a precomputed linear kernel, with C chosen by stratified cross-validation on the training split.

Multiclass schemes: "ovo" (libsvm's one-vs-one voting inside `SVC`, the default) and "ovr" (one binary SVM per class,
highest decision value wins: `OneVsRestClassifier(SVC(kernel="precomputed"))`, the paper's protocol)."""

from __future__ import annotations

import time

import numpy as np

from crosslayer.errors import UsageError

DEFAULT_C_GRID = tuple(10.0**e for e in range(-3, 4))
MULTICLASS = ("ovo", "ovr")
DEFAULT_MULTICLASS = "ovo"


def kernel_scale(k_train: np.ndarray) -> float:
    """Mean self-similarity of the training images: dividing both kernels by it puts every representation on one
    scale, so one C grid fits methods whose vectors are not unit-norm (ablations without L2)."""
    diagonal = np.diag(k_train)
    scale = float(np.mean(diagonal)) if len(diagonal) else 1.0
    return scale if scale > 0 and np.isfinite(scale) else 1.0


def _fit(kernel, labels, c, multiclass: str = DEFAULT_MULTICLASS):
    from sklearn.svm import SVC

    model = SVC(kernel="precomputed", C=c, cache_size=500)
    if multiclass == "ovr":
        from sklearn.multiclass import OneVsRestClassifier

        model = OneVsRestClassifier(model)
    model.fit(kernel, labels)
    return model


def check_multiclass(multiclass) -> str:
    if multiclass not in MULTICLASS:
        raise UsageError(f"multiclass: expected one of {', '.join(MULTICLASS)}, got {multiclass!r}")
    return multiclass


def check_svm_options(c_grid, folds) -> tuple[tuple, int]:
    """(C grid as floats, folds), or a ValueError naming the argument."""
    try:
        grid = tuple(float(c) for c in c_grid)
    except (TypeError, ValueError):
        raise UsageError(f"c_grid: expected positive numbers, got {c_grid!r}") from None
    if not grid or any(not (np.isfinite(c) and c > 0) for c in grid):
        raise UsageError(f"c_grid: expected positive finite values, got {grid}")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UsageError(f"folds: expected an integer >= 2 (cross-validation folds), got {folds!r}")
    return grid, int(folds)


def select_c(k_train: np.ndarray, labels: np.ndarray, c_grid=DEFAULT_C_GRID, folds: int = 3, seed: int = 0,
             n_jobs: int = 1, multiclass: str = DEFAULT_MULTICLASS) -> tuple[float, dict]:
    """Returns (best C, {C: mean fold accuracy}); ties go to the smaller C."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    c_grid, folds = check_svm_options(c_grid, folds)
    check_multiclass(multiclass)
    smallest_class = min(np.unique(labels, return_counts=True)[1]) if len(labels) else 0
    folds = min(folds, int(smallest_class))
    if folds < 2:
        raise UsageError(f"labels: cross-validation needs at least 2 training images per class, the smallest class has {smallest_class}")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))

    def score(c, train, held):
        model = _fit(k_train[np.ix_(train, train)], labels[train], c, multiclass)
        return float(np.mean(model.predict(k_train[np.ix_(held, train)]) == labels[held]))

    jobs = [(c, train, held) for c in c_grid for train, held in splits]
    results = Parallel(n_jobs=n_jobs)(delayed(score)(*job) for job in jobs)
    scores = {c: float(np.mean(results[i * len(splits) : (i + 1) * len(splits)])) for i, c in enumerate(c_grid)}
    best = max(c_grid, key=lambda c: (scores[c], -c))
    return best, scores


def mean_per_class_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    classes = np.unique(truth)
    return float(np.mean([np.mean(predicted[truth == c] == c) for c in classes])) if len(classes) else float("nan")


def train_and_test(k_train, y_train, k_test, y_test, c_grid=DEFAULT_C_GRID, folds: int = 3, seed: int = 0,
                   n_jobs: int = 1, multiclass: str = DEFAULT_MULTICLASS) -> dict:
    """Scales the kernels, picks C by CV, trains on the whole training split and tests. Returns a result dict."""
    scale = kernel_scale(k_train)
    k_train = k_train / scale
    k_test = k_test / scale
    start = time.perf_counter()
    best_c, cv_scores = select_c(k_train, y_train, c_grid, folds, seed, n_jobs, multiclass)
    mid = time.perf_counter()
    model = _fit(k_train, y_train, best_c, multiclass)
    predicted = model.predict(k_test)
    end = time.perf_counter()
    return {
        "accuracy": float(np.mean(predicted == y_test)),
        "mean_per_class_accuracy": mean_per_class_accuracy(np.asarray(y_test), predicted),
        "C": best_c,
        "multiclass": multiclass,
        "cv_accuracy": {f"{c:g}": s for c, s in cv_scores.items()},
        "kernel_scale": scale,
        "seconds_select_c": mid - start,
        "seconds_train_test": end - mid,
        "predictions": predicted.tolist(),
    }
