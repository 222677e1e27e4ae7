"""SPoC (Babenko & Lempitsky, ICCV 2015): sum-pooled convolutional features, L2, PCA-whitening, L2.

The whitening must be learnt on other images than the ones searched. Sum pooling and average pooling differ only by
the number of positions, which the first L2 removes, so a backbone's average-pooled embedding of the pooled layer is
a valid SPoC input.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError
from crosslayer.l2 import l2_normalize
from crosslayer.pca import fit_pca


def sum_pool(activations: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n, C): sum over positions."""
    activations = np.asarray(activations)
    return activations.reshape(activations.shape[0], activations.shape[1], -1).sum(axis=2)


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
