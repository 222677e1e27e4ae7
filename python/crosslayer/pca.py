"""The one PCA fit of the package (the encoder's local-feature rotation, the evaluation's PCAs, SPoC whitening).

Rows are accumulated batch by batch in float64 (mean and covariance), so a fit never holds every row at once.
Semantics are those of `crosslayer.reference.pca_fit`: components by decreasing variance, each with its
largest-magnitude coefficient positive (deterministic signs).
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError


class CovarianceAccumulator:
    """Mean and covariance of feature rows, accumulated batch by batch in float64."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64)
        self.count += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def pca(self, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, projection (dim, n_components)); None keeps every component (a full rotation)."""
        mean, projection, _ = self.pca_with_variances(n_components)
        return mean, projection

    def pca_with_variances(self, n_components: int | None = None):
        """(mean, projection, variances): the variances are the kept components' eigenvalues, decreasing."""
        if self.count < 2:
            raise UsageError("fit: need at least two feature rows to learn a PCA")
        mean = self.total / self.count
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1]
        k = cov.shape[0] if n_components is None else n_components
        proj = eigvecs[:, order[:k]]
        flip = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(k)])
        flip[flip == 0] = 1
        # rounding can leave a zero variance slightly negative
        return mean, proj * flip, np.maximum(eigvals[order[:k]], 0.0)


def fit_pca(rows: np.ndarray, n_components: int | None = None, with_variances: bool = False):
    """PCA of the rows of one (M, dim) array: (mean, projection) or, with_variances, (mean, projection, variances)."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise UsageError(f"rows: expected a (rows, dim) array, got shape {rows.shape}")
    accumulator = CovarianceAccumulator(rows.shape[1])
    accumulator.add(rows)
    found = accumulator.pca_with_variances(n_components)
    return found if with_variances else found[:2]


def local_rows(maps: np.ndarray) -> np.ndarray:
    """(n, C, H, W) maps -> (n*H*W, C): one row per spatial position (the local features a PCA is fitted on)."""
    n, c = maps.shape[:2]
    return maps.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c)
