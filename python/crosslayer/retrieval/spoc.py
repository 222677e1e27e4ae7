"""SPoC (Babenko & Lempitsky, ICCV 2015): sum-pooled convolutional features, L2, PCA-whitening, L2.

The whitening must be learnt on other images than the ones searched. Sum pooling and average pooling differ only by
the number of positions, which the first L2 removes, so a backbone's average-pooled embedding of the pooled layer is
a valid SPoC input. The paper's full SPoC also weights each position by a Gaussian centre prior (`centre_prior`:
objects of interest tend to be near the image centre) before summing; that needs the layer's spatial map.

In-domain whitening without test leakage (`cross_fitted_scores`): the items are split into folds; the queries of one
fold are searched (against the whole database) with a whitening learnt on the database images of the other folds
only, so no query, and no image relevant to it, was seen by the whitening that ranks for it.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError
from crosslayer.l2 import l2_normalize
from crosslayer.pca import fit_pca


def centre_prior(height: int, width: int) -> np.ndarray:
    """(height, width) float64 Gaussian weights of SPoC's centre prior: exp(-d^2 / (2 sigma^2)), d the distance of a
    cell's centre to the map's centre, sigma one third of the distance from the centre to the closest border."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"{name}: expected a positive integer, got {value!r}")
    sigma = min(height, width) / 2 / 3
    rows = (np.arange(height) + 0.5 - height / 2) ** 2
    columns = (np.arange(width) + 0.5 - width / 2) ** 2
    return np.exp(-(rows[:, None] + columns[None, :]) / (2 * sigma**2))


def sum_pool(activations: np.ndarray, prior: bool = False) -> np.ndarray:
    """(n, C, H, W) -> (n, C): sum over positions, each weighted by `centre_prior` when `prior`."""
    activations = np.asarray(activations)
    if activations.ndim != 4:
        raise UsageError(f"activations: expected (n, C, H, W) maps, got shape {activations.shape}")
    n, channels, height, width = activations.shape
    if prior:
        weights = centre_prior(height, width).reshape(-1)
        return activations.reshape(n, channels, -1).astype(np.float64) @ weights
    return activations.reshape(n, channels, -1).sum(axis=2)


def l2_normalize_float64(rows: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(rows, dtype=np.float64))


class SpocWhitening:
    """PCA-whitening to `dim` components of L2-normalised pooled features; `transform` gives the SPoC descriptor."""

    def __init__(self, dim: int = 256, eps: float = 1e-8):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise UsageError(f"dim: expected a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.eps = float(eps)
        self.mean_ = None
        self.projection_ = None  # (C, dim) eigenvectors scaled by 1/sqrt(eigenvalue)

    def fit(self, pooled: np.ndarray) -> "SpocWhitening":
        x = l2_normalize_float64(pooled)
        if x.ndim != 2 or x.shape[0] < 2:
            raise UsageError(f"pooled: expected (n >= 2, C) features to learn the whitening on, got {x.shape}")
        if self.dim > min(x.shape[0] - 1, x.shape[1]):
            raise UsageError(f"dim: {self.dim} components need more than {self.dim} images of more than {self.dim} "
                             f"channels, got {x.shape}")
        self.mean_, vectors, eigvals = fit_pca(x, self.dim, with_variances=True)
        self.projection_ = vectors / np.sqrt(eigvals + self.eps)
        return self

    def transform(self, pooled: np.ndarray) -> np.ndarray:
        if self.projection_ is None:
            raise RuntimeError("SpocWhitening is not fitted: call fit(pooled) on other images first")
        pooled = np.asarray(pooled)
        if pooled.ndim != 2 or pooled.shape[1] != self.mean_.shape[0]:
            raise UsageError(f"pooled: expected (n, {self.mean_.shape[0]}), got {pooled.shape}")
        return l2_normalize((l2_normalize_float64(pooled) - self.mean_) @ self.projection_).astype(np.float32)


def item_folds(items, folds: int = 2, seed: int = 0) -> dict:
    """{item: fold} for the distinct `items`, shuffled with a seeded generator and dealt round-robin."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UsageError(f"folds: expected an integer >= 2, got {folds!r}")
    distinct = sorted(set(items))
    if len(distinct) < folds:
        raise UsageError(f"items: {len(distinct)} distinct items cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[i]: position % folds for position, i in enumerate(order)}


def cross_fitted_scores(query_pooled, query_items, database_pooled, database_items, dim: int, folds: int = 2,
                        seed: int = 0) -> np.ndarray:
    """(queries, database) SPoC scores with the whitening learnt in-domain, on the database itself, without leakage:
    a query of fold f is scored (against every database image) with a whitening learnt on the database images of the
    items outside f. Unsupervised (no labels) and never fitted on the query or the images relevant to it."""
    query_pooled, database_pooled = np.asarray(query_pooled), np.asarray(database_pooled)
    if len(query_items) != len(query_pooled) or len(database_items) != len(database_pooled):
        raise UsageError("query_items/database_items: expected one item per pooled row")
    fold_of = item_folds(list(query_items) + list(database_items), folds, seed)
    query_fold = np.array([fold_of[item] for item in query_items])
    database_fold = np.array([fold_of[item] for item in database_items])
    scores = np.empty((len(query_pooled), len(database_pooled)), np.float64)
    for fold in range(folds):
        asked = np.flatnonzero(query_fold == fold)
        if not len(asked):
            continue
        whitening = SpocWhitening(dim).fit(database_pooled[database_fold != fold])
        scores[asked] = whitening.transform(query_pooled[asked]) @ whitening.transform(database_pooled).T
    return scores
