"""The one L2 normalisation helper: unit vectors along an axis, all-zero vectors left at zero (never NaN)."""

from __future__ import annotations

import numpy as np


def l2_normalize(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """`values` divided by their L2 norm along `axis`, in the array's own floating dtype (integers: float64)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    norms = np.linalg.norm(values, axis=axis, keepdims=True)
    return np.divide(values, norms, out=np.zeros_like(values), where=norms > 0)
