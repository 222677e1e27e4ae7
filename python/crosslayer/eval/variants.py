"""Float cross-layer pooling variants in numpy, for what the fused kernel does not do: the Table 7 ablations
(without per-channel L2 and/or without the signed square root) and max instead of sum over positions.

Shapes follow `crosslayer.pool`: local (n, Dt_in, H, W), guidance (n, Dk, H, W); output (n, Dk*Dt) float32.
"""

from __future__ import annotations

import numpy as np

from crosslayer.l2 import l2_normalize

MAX_CHUNK_ELEMENTS = 1 << 24  # guidance channels handled at once by the max variant (bounded temporary memory)


def _positions(local, guidance, pca):
    n, dt_in = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    x = np.asarray(local, np.float32).reshape(n, dt_in, positions).transpose(0, 2, 1)  # (n, N, Dt_in)
    if pca is not None:
        mean, projection = pca
        x = (x - np.asarray(mean, np.float32)) @ np.asarray(projection, np.float32)
    a = np.asarray(guidance, np.float32).reshape(n, guidance.shape[1], positions)  # (n, Dk, N)
    return x, a


def normalize(pooled: np.ndarray, l2: bool, power: bool) -> np.ndarray:
    """(n, Dk, Dt): optional per-channel L2, then optional signed square root; flattened channel-major."""
    out = pooled.astype(np.float32, copy=True)
    if l2:
        out = l2_normalize(out, axis=2)
    if power:
        out = np.sign(out) * np.sqrt(np.abs(out))
    return out.reshape(out.shape[0], out.shape[1] * out.shape[2])


def cross_layer_sum(local, guidance, pca=None, l2: bool = True, power: bool = True) -> np.ndarray:
    """P_k = sum_i a_ik x_i, then the chosen normalisations."""
    x, a = _positions(local, guidance, pca)
    return normalize(np.matmul(a, x), l2, power)


def cross_layer_max(local, guidance, pca=None, l2: bool = True, power: bool = True) -> np.ndarray:
    """P_k[j] = max_i a_ik x_ij, then the chosen normalisations."""
    x, a = _positions(local, guidance, pca)
    n, dk, positions = a.shape
    dt = x.shape[2]
    pooled = np.empty((n, dk, dt), np.float32)
    step = max(1, MAX_CHUNK_ELEMENTS // max(1, positions * dt))
    for b in range(n):
        for k0 in range(0, dk, step):
            products = a[b, k0 : k0 + step, :, None] * x[b, None, :, :]  # (k, N, Dt)
            pooled[b, k0 : k0 + step] = products.max(axis=1)
    return normalize(pooled, l2, power)


def guided_regions(regions, guidance, l2: bool = True, power: bool = True) -> np.ndarray:
    """AConv's pooling with the chosen normalisations: regions (n, positions, dim) guided by the trained layer's
    activations (n, positions, filters) -> (n, filters*dim)."""
    local = np.asarray(regions, np.float32).transpose(0, 2, 1)[..., None]  # (n, dim, positions, 1)
    guide = np.asarray(guidance, np.float32).transpose(0, 2, 1)[..., None]  # (n, filters, positions, 1)
    return cross_layer_sum(local, guide, None, l2, power)
