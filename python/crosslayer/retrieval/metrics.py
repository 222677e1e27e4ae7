"""Ranking metrics: average precision (mAP), recall@k, and PASCAL VOC's interpolated average precision.

Ties are broken pessimistically: an irrelevant item with the same score as a relevant one ranks before it, so equal
scores never flatter a method (integer popcount scores tie often).
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError

DEFAULT_KS = (1, 5, 10)


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> list[np.ndarray]:
    """Per query, the 1-based ranks of its relevant items in increasing order (higher score ranks first)."""
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise UsageError(f"scores/relevant: expected two (n_queries, n_items) arrays, got {scores.shape} and {relevant.shape}")
    ranks = []
    for row, rel in zip(scores, relevant):
        # lexsort: last key is primary -> by decreasing score, then irrelevant (0) before relevant (1)
        order = np.lexsort((rel.astype(np.int8), -row.astype(np.float64)))
        ranks.append(np.flatnonzero(rel[order]) + 1)
    return ranks


def average_precision(ranks: np.ndarray) -> float:
    """AP of one query from the sorted 1-based ranks of its relevant items (1/rank when there is one)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise UsageError("ranks: a query without relevant items has no average precision")
    return float(np.mean(np.arange(1, ranks.size + 1) / ranks))


VOC_AP_KINDS = ("11point", "area")


def voc_average_precision(ranks: np.ndarray, kind: str = "11point") -> float:
    """PASCAL VOC's interpolated AP of one class from the sorted 1-based ranks of its positives in the full ranking
    of the test images: the precision at recall r is the best precision at any recall >= r. "11point" (VOC 2007, the
    protocol of papers reporting VOC 2007): the mean of it at r = 0, 0.1, ..., 1; "area" (VOC 2010 on): the area under
    it. Both are at least `average_precision` (which does not interpolate)."""
    if kind not in VOC_AP_KINDS:
        raise UsageError(f"kind: expected one of {VOC_AP_KINDS}, got {kind!r}")
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise UsageError("ranks: a class without positive test images has no average precision")
    found = np.arange(1, ranks.size + 1)
    precision = found / ranks
    recall = found / ranks.size
    # the precision envelope: at each positive, the best precision at it or after it (at recall >= its recall)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if kind == "area":
        return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * envelope))
    # the first positive reaching recall t gives the envelope there. The thresholds are the devkit's own floats
    # (0:0.1:1, so 0.30000000000000004 etc.: a recall of exactly 3/10 does not reach the 0.3 point), so results
    # match published VOC 2007 numbers
    points = [envelope[np.searchsorted(recall, t)] if t <= recall[-1] else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
    return float(np.mean(points))


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Fraction of the query's relevant items within the top k (the hit rate when there is one)."""
    ranks = np.asarray(ranks)
    return float(np.count_nonzero(ranks <= k) / ranks.size)


def evaluate_ranks(ranks: list, ks=DEFAULT_KS) -> dict:
    if not ranks:
        raise UsageError("ranks: expected at least one query")
    result = {"map": float(np.mean([average_precision(r) for r in ranks]))}
    for k in ks:
        result[f"recall@{k}"] = float(np.mean([recall_at(r, k) for r in ranks]))
    return result


def evaluate_scores(scores: np.ndarray, relevant: np.ndarray, ks=DEFAULT_KS) -> dict:
    """mAP and recall@k of a full score matrix (n_queries, n_items) against its relevance matrix."""
    return evaluate_ranks(relevant_ranks(scores, relevant), ks)


def relevance_matrix(query_items, item_labels) -> np.ndarray:
    """(n_queries, n_items) bool: same item. Distractors carry the label None and are never relevant."""
    labels = np.array([("\x00" if v is None else str(v)) for v in item_labels], dtype=object)
    return np.array([labels == str(q) for q in query_items], dtype=bool).reshape(len(query_items), len(labels))
