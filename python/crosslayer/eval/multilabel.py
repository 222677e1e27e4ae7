"""Multi-label classification (VOC-like sets): one binary linear SVM per class on the precomputed kernel, C chosen
per class by cross-validated average precision on the training split, scored by PASCAL VOC's mean AP over classes.

The mean AP is VOC 2007's 11-point interpolated AP (the protocol of results reported on VOC 2007); the area under
the interpolated precision (VOC 2010 on) is reported beside it. Test scores are the SVMs' decision values; ties rank
a negative first (`crosslayer.retrieval.metrics`)."""

from __future__ import annotations

import time

import numpy as np

from crosslayer.errors import UsageError
from crosslayer.eval.svm import DEFAULT_C_GRID, check_svm_options, kernel_scale
from crosslayer.retrieval.metrics import relevant_ranks, voc_average_precision


def class_average_precision(scores: np.ndarray, positives: np.ndarray, kind: str = "11point") -> float:
    """VOC AP of one class: `scores` (n,) decision values of the test images, `positives` (n,) bool."""
    ranks = relevant_ranks(np.asarray(scores, np.float64)[None], np.asarray(positives, bool)[None])[0]
    return voc_average_precision(ranks, kind)


def _fit(kernel, positives, c):
    from sklearn.svm import SVC

    return SVC(kernel="precomputed", C=c, cache_size=500).fit(kernel, positives)


def _check_targets(targets, n, name) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.dtype != bool or targets.ndim != 2 or targets.shape[0] != n:
        raise UsageError(f"{name}: expected an ({n}, classes) bool indicator matrix, got {targets.dtype} "
                         f"{targets.shape}")
    return targets


def select_c(k_train: np.ndarray, positives: np.ndarray, c_grid=DEFAULT_C_GRID, folds: int = 3, seed: int = 0):
    """(best C, {C: mean held-out 11-point AP}) of one class's binary SVM; folds stratified on the class, at most as
    many as its positives or negatives; ties go to the smaller C."""
    from sklearn.model_selection import StratifiedKFold

    c_grid, folds = check_svm_options(c_grid, folds)
    folds = min(folds, int(positives.sum()), int((~positives).sum()))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(positives)), positives))
    scores = {}
    for c in c_grid:
        held_ap = []
        for train, held in splits:
            model = _fit(k_train[np.ix_(train, train)], positives[train], c)
            held_ap.append(class_average_precision(model.decision_function(k_train[np.ix_(held, train)]),
                                                   positives[held]))
        scores[c] = float(np.mean(held_ap))
    return max(c_grid, key=lambda c: (scores[c], -c)), scores


def train_and_test(k_train, y_train, k_test, y_test, classes, c_grid=DEFAULT_C_GRID, folds: int = 3,
                   seed: int = 0, n_jobs: int = 1) -> dict:
    """Per-class binary SVMs on the (scaled) kernels; y_* are (n, classes) bool. A class needs at least 2 positive and
    2 negative training images (UsageError naming it otherwise); a class without positive test images has no AP and
    is left out of the mean (listed in "classes_without_test_positives")."""
    from joblib import Parallel, delayed

    k_train, k_test = np.asarray(k_train, np.float64), np.asarray(k_test, np.float64)
    y_train = _check_targets(y_train, k_train.shape[0], "y_train")
    y_test = _check_targets(y_test, k_test.shape[0], "y_test")
    if y_train.shape[1] != len(classes) or y_test.shape[1] != len(classes):
        raise UsageError(f"y_train/y_test: expected {len(classes)} class columns, got {y_train.shape[1]} and "
                         f"{y_test.shape[1]}")
    check_svm_options(c_grid, folds)
    for c, name in enumerate(classes):
        positives = int(y_train[:, c].sum())
        if positives < 2 or len(y_train) - positives < 2:
            raise UsageError(f"labels: class {name!r} has {positives} positive and {len(y_train) - positives} negative "
                             "training images; a binary SVM with C by cross-validation needs at least 2 of each")
    scale = kernel_scale(k_train)
    k_train, k_test = k_train / scale, k_test / scale
    start = time.perf_counter()
    chosen = Parallel(n_jobs=n_jobs)(delayed(select_c)(k_train, y_train[:, c], c_grid, folds, seed)
                                     for c in range(len(classes)))
    mid = time.perf_counter()
    scores = np.stack([_fit(k_train, y_train[:, c], best).decision_function(k_test)
                       for c, (best, _) in enumerate(chosen)], axis=1)
    end = time.perf_counter()
    ap = {name: {kind: (class_average_precision(scores[:, c], y_test[:, c], kind) if y_test[:, c].any() else None)
                 for kind in ("11point", "area")}
          for c, name in enumerate(classes)}
    scored = [name for name in classes if ap[name]["11point"] is not None]
    if not scored:
        raise UsageError("labels: no class has a positive test image; mean AP is undefined")
    return {
        "mean_ap": float(np.mean([ap[name]["11point"] for name in scored])),
        "mean_ap_area": float(np.mean([ap[name]["area"] for name in scored])),
        "ap_kind": "VOC 2007 11-point interpolated AP, mean over classes (mean_ap_area: VOC 2010+ area)",
        "ap_per_class": ap,
        "classes_without_test_positives": [name for name in classes if name not in scored],
        "C": {name: best for name, (best, _) in zip(classes, chosen)},
        "cv_ap": {name: {f"{c:g}": s for c, s in cv.items()} for name, (_, cv) in zip(classes, chosen)},
        "kernel_scale": scale,
        "seconds_select_c": mid - start,
        "seconds_train_test": end - mid,
        "scores": scores,
    }


def check_method(dataset, method: str) -> None:
    """AConv trains its guidance layer with one class per image (softmax): refused on a multi-label set."""
    if dataset.multilabel and method in ("aconv", "aconv-fast"):
        raise UsageError(f"method: {method} trains its guidance layer on one label per image; this manifest is "
                         "multi-label (labels separated by ';'): use another method")


def evaluate(dataset, gram: np.ndarray, train, test, c_grid=DEFAULT_C_GRID, folds: int = 3, seed: int = 0,
             n_jobs: int = 1) -> dict:
    """`train_and_test` on a multi-label `Dataset`'s kernel (n, n_train) as `classify` records it: "predictions" are
    the class names each test image's SVMs accept (decision value > 0), "test_scores" the decision values."""
    result = train_and_test(gram[train], dataset.targets[train], gram[test], dataset.targets[test], dataset.classes,
                            c_grid, folds, seed, n_jobs)
    scores = result.pop("scores")
    result["predictions"] = [[dataset.classes[c] for c in np.flatnonzero(row > 0)] for row in scores]
    result["test_scores"] = np.round(scores, 6).tolist()
    return result
