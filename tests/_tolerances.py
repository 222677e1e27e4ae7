"""Float comparison rules shared by the tests, each derived in its docstring."""

import numpy as np

from crosslayer import reference

U = reference.FLOAT32_UNIT_ROUNDOFF


def assert_within_one_float32_ulp(got, exact):
    """For results computed in double and rounded once to float32 (channel means, PCA means): they and
    float32(exact) are two roundings of values a few double ulps apart, so they differ by at most one float32 ulp."""
    nearest = np.asarray(exact).astype(np.float32)
    assert np.asarray(got).dtype == np.float32
    assert np.all(np.abs(np.asarray(got, np.float64) - nearest) <= np.spacing(np.abs(nearest)))


def assert_normalized_within(out, pooled, bound, epilogue_units):
    """`out` (n, Dk, Dt) = sign(v) sqrt(|v|), v the per-channel L2-normalised pooled values computed in float32 with
    pooled values within `bound` of the exact `pooled`. Compared before the square root (after it, errors near zero
    grow without bound): normalising by a norm that errs likewise adds |v| ||bound|| / ||P||, and the normalisation
    and square root themselves `epilogue_units` u |v|. All-zero channels must be exactly zero."""
    out = np.asarray(out, np.float64)
    v_ref = reference.l2_normalize_channels(pooled)
    norms = np.linalg.norm(pooled, axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        tolerance = np.where(norms > 0, (bound + np.abs(v_ref) * np.linalg.norm(bound, axis=2, keepdims=True))
                             / norms, 0.0) + epilogue_units * U * np.abs(v_ref)
    assert np.all(np.abs(np.sign(out) * out**2 - v_ref) <= tolerance)


def max_pool_float32_bound(local, guidance, pca):
    """Per max-pooled value (n, Dk, Dt): how far max_i a_ik x'_ij computed in float32 may be from the exact one. max
    is exact, so it is the largest error of one product: each product is rounded once (u |a x'|); with PCA
    x' = (x - mean) W carries at most (Dt_in + 1) u sum_c |x_c - mean_c| |W_cj| (a rounded subtraction, then a dot
    product: Higham's gamma bound)."""
    n, dt_in = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    features = reference.local_features(local).reshape(n, positions, dt_in)
    x, x_error = np.abs(features), np.zeros_like(features)
    if pca is not None:
        x = np.abs(reference.pca_apply(features, *pca))
        x_error = (dt_in + 1) * U * np.abs(features - pca[0]) @ np.abs(np.asarray(pca[1], np.float64))
    a = np.abs(np.asarray(guidance, np.float64).reshape(n, guidance.shape[1], positions))
    return (a[:, :, :, None] * (x_error + U * x)[:, None]).max(axis=2, initial=0.0)
