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
