"""The fused pooling kernel against the float64 numpy reference.

Tolerance rule (float32 kernel vs float64 reference). Each pooled value P[k, j] is a sum of N products, and with PCA
each projected feature x'[i, j] is itself a sum of Dt_in products; float32 accumulation errs by at most
(N + Dt_in + 2) * u times the sum of absolute terms, u = 2**-24 (Higham's gamma_n bound, first order):

    bound[k, j] = (N + Dt_in + 2) * u * sum_i |a[i, k]| * (sum_c |x[i, c] - mean[c]| * |W[c, j]|)

The float output is out = sign(v) * sqrt(|v|) with v = P / ||P||, so we compare v_kernel = sign(out) * out**2 with the
reference's v (comparing after the square root would amplify errors near zero without bound). Normalising by a norm
that itself carries the error adds |v| * ||bound_k|| / ||P_k||, and the epilogue's own roundings (the quotient and
its square root rounded to float32, the norm in double: 3u relative, first order; 4u covers the rest):

    |v_kernel - v_ref| <= (bound[k, j] + |v_ref[k, j]| * ||bound[k, :]||) / ||P_ref[k, :]|| + 4u |v_ref[k, j]|

Codes: a sign can only flip where the reference value is within bound[k, j] of zero, so code values must equal the
reference's signs wherever |P_ref| > bound, and may differ only where |P_ref| <= bound.
"""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crosslayer
from crosslayer import reference as ref
from crosslayer.errors import UsageError

from _tolerances import assert_normalized_within, assert_within_one_float32_ulp


def rounding_bound(local, guidance, pca):
    """bound[b, k, j] of the module docstring (float64)."""
    return ref.float32_pool_bound(local, guidance, pca)


@st.composite
def pooling_inputs(draw):
    n = draw(st.integers(0, 3))
    dt_in = draw(st.integers(1, 150))
    dk = draw(st.integers(1, 24))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    pca_mode = draw(st.sampled_from(["none", "full", "reduce"]))
    offset = draw(st.sampled_from([0.0, 5.0]))  # post-ReLU layers have a large mean: exercises centring
    zero_channels = draw(st.lists(st.integers(0, dk - 1), max_size=3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    local = (rng.standard_normal((n, dt_in, h, w)) + offset).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    guidance[:, zero_channels] = 0
    pca = None
    if pca_mode != "none":
        dims = dt_in if pca_mode == "full" else draw(st.integers(1, dt_in))
        sample = rng.standard_normal((max(2 * dt_in, 8), dt_in)) + offset
        mean, proj = ref.pca_fit(sample, dims)
        pca = (mean.astype(np.float32), proj.astype(np.float32))
    threads = draw(st.sampled_from([1, 2, 3]))  # n >= threads: image-parallel path, else channel-split path
    return local, guidance, pca, threads


@given(pooling_inputs())
def test_float_output_matches_reference_within_rounding(inputs):
    local, guidance, pca, threads = inputs
    out, channel_mean = crosslayer.pool(local, guidance, pca, return_channel_mean=True, num_threads=threads)
    n, dk = guidance.shape[:2]
    dt = local.shape[1] if pca is None else pca[1].shape[1]
    assert out.shape == (n, dk * dt) and out.dtype == np.float32
    assert np.isfinite(out).all()
    pooled = ref.cross_layer_pool(local, guidance, pca)
    assert_normalized_within(out.reshape(n, dk, dt), pooled, rounding_bound(local, guidance, pca), epilogue_units=4)
    out = out.reshape(n, dk, dt)
    zero = (guidance.reshape(n, dk, guidance.shape[2] * guidance.shape[3]) == 0).all(axis=2)
    assert (out[zero] == 0).all(), "an all-zero guidance channel must give exact zeros, not NaN"
    assert_within_one_float32_ulp(channel_mean, ref.channel_mean(guidance))


@given(pooling_inputs())
def test_codes_equal_reference_signs_outside_rounding(inputs):
    local, guidance, pca, threads = inputs
    codes = crosslayer.pool(local, guidance, pca, output="codes", num_threads=threads)
    n, dk = guidance.shape[:2]
    dt = local.shape[1] if pca is None else pca[1].shape[1]
    assert (len(codes), codes.Dk, codes.Dt) == (n, dk, dt)
    pooled = ref.cross_layer_pool(local, guidance, pca)
    decided = np.abs(pooled) > rounding_bound(local, guidance, pca)
    signs = codes.signs()
    assert np.array_equal(signs[decided], ref.sign_quantize(pooled)[decided])
    # Undecided values may go either way, but the planes stay well formed (this also re-checks padding bits).
    assert np.array_equal(ref.pack_ternary(signs), codes.bits)
    assert_within_one_float32_ulp(codes.channel_mean, ref.channel_mean(guidance))


def test_codes_exact_on_integer_inputs(rng):
    """Small integers make every float32 sum exact, so codes must equal the reference bit for bit, zeros included."""
    local = rng.integers(-3, 4, size=(4, 130, 3, 5)).astype(np.float32)
    guidance = rng.integers(0, 3, size=(4, 7, 3, 5)).astype(np.float32)
    guidance[:, 2] = 0
    codes = crosslayer.pool(local, guidance, output="codes")
    assert np.array_equal(codes.bits, ref.encode_codes(local, guidance))
    assert not codes.bits[:, 2].any()


def test_float_and_codes_agree(rng):
    local = rng.standard_normal((3, 70, 4, 4)).astype(np.float32)
    guidance = rng.random((3, 9, 4, 4)).astype(np.float32)
    out = crosslayer.pool(local, guidance)
    codes = crosslayer.pool(local, guidance, output="codes")
    assert np.array_equal(codes.signs().reshape(3, -1), np.sign(out).astype(np.int8))


def test_mobilenet_shape_thread_paths_agree(rng):
    """The image-parallel and channel-split schedules compute the same thing, up to rounding: the split runs the
    channel GEMM in blocks of rows and OpenBLAS's sgemm may round a block differently (seen: 1 ulp), so codes agree
    wherever the float32 rounding bound decides the sign."""
    local = rng.standard_normal((3, 320, 7, 7)).astype(np.float32)
    guidance = rng.random((3, 1280, 7, 7)).astype(np.float32)
    one = crosslayer.pool(local, guidance, output="codes", num_threads=1)
    many = crosslayer.pool(local, guidance, output="codes", num_threads=8)
    decided = np.abs(ref.cross_layer_pool(local, guidance)) > rounding_bound(local, guidance, None)
    assert np.array_equal(one.signs()[decided], many.signs()[decided])
    assert np.array_equal(one.channel_mean, many.channel_mean)  # one double sum per channel in both schedules


# ---- argument validation ----------------------------------------------------------------------------------------

def _inputs(rng, n=2, dt=5, dk=3, h=2, w=2):
    return rng.random((n, dt, h, w)).astype(np.float32), rng.random((n, dk, h, w)).astype(np.float32)


def test_rejects_integer_dtype(rng):
    x, a = _inputs(rng)
    with pytest.raises(TypeError, match="x_t.*dtype int"):
        crosslayer.pool(x.astype(np.int32), a)


def test_rejects_wrong_rank_and_mismatched_layers(rng):
    x, a = _inputs(rng)
    with pytest.raises(ValueError, match="x_t: expected a 4-d array"):
        crosslayer.pool(x[0], a)
    with pytest.raises(ValueError, match="a_t1: batch size"):
        crosslayer.pool(x, a[:1])
    with pytest.raises(ValueError, match="a_t1: spatial size"):
        crosslayer.pool(x, a[:, :, :1])


def test_rejects_non_finite(rng):
    x, a = _inputs(rng)
    a[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="a_t1: contains NaN or Inf"):
        crosslayer.pool(x, a)
    x[1, 1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="x_t: contains NaN or Inf"):
        crosslayer.pool(x, a)


@pytest.mark.parametrize("output", ["float", "codes"])
@pytest.mark.parametrize("threads", [1, 8])  # image-parallel and channel-split schedules
def test_finite_inputs_that_overflow_float32_are_an_error(rng, output, threads):
    """|P| beyond FLT_MAX would give NaN floats or meaningless signs: the call must fail, not return them."""
    x, a = _inputs(rng)
    x[1] *= 1e20
    a[1] *= 1e20
    with pytest.raises(ValueError, match="x_t, a_t1: the pooled values are not finite in float32"):
        crosslayer.pool(x, a, output=output, num_threads=threads)


def test_check_finite_false_skips_the_check_and_keeps_finite_results(rng):
    x, a = _inputs(rng)
    mean, proj = np.zeros(5, np.float32), np.eye(5, dtype=np.float32)[:, :3]
    for output in ("float", "codes"):
        checked = crosslayer.pool(x, a, pca=(mean, proj), output=output)
        unchecked = crosslayer.pool(x, a, pca=(mean, proj), output=output, check_finite=False)
        np.testing.assert_array_equal(getattr(unchecked, "bits", unchecked), getattr(checked, "bits", checked))
    x[0, 0, 0, 0], mean[1] = np.nan, np.inf
    # no input scan; the CPU kernel still refuses to return the non-finite pooled values that NaN input gives
    with pytest.raises(ValueError, match="pooled values are not finite.*check_finite=False"):
        crosslayer.pool(x, a, pca=(mean, proj), check_finite=False)
    with pytest.raises(ValueError, match="x_t: contains NaN or Inf"):
        crosslayer.pool(x, a, pca=(mean, proj), check_finite=True)
    with pytest.raises(TypeError, match="check_finite: expected a bool"):
        crosslayer.pool(x, a, check_finite="no")


def test_rejects_bad_pca(rng):
    x, a = _inputs(rng)
    with pytest.raises(TypeError, match="pca: expected a \\(mean, projection\\) pair"):
        crosslayer.pool(x, a, pca=np.eye(5))
    with pytest.raises(ValueError, match="pca\\[0\\] \\(mean\\): expected length 5"):
        crosslayer.pool(x, a, pca=(np.zeros(4), np.eye(5)))
    with pytest.raises(ValueError, match="pca\\[1\\] \\(projection\\): expected shape \\(5, Dt\\)"):
        crosslayer.pool(x, a, pca=(np.zeros(5), np.eye(4)))


def test_rejects_unknown_output(rng):
    x, a = _inputs(rng)
    with pytest.raises(ValueError, match="output: expected one of"):
        crosslayer.pool(x, a, output="bits")


def test_accepts_float64_and_non_contiguous(rng):
    x, a = _inputs(rng, dt=6)
    expected = crosslayer.pool(x, a)
    np.testing.assert_array_equal(crosslayer.pool(x.astype(np.float64), a), expected)
    x_strided = np.ascontiguousarray(np.concatenate([x, x], axis=1))[:, ::2]
    np.testing.assert_array_equal(crosslayer.pool(x_strided, a), crosslayer.pool(np.ascontiguousarray(x_strided), a))


def test_rejects_gpu_array_on_cpu_build():
    class FakeCudaArray:
        __cuda_array_interface__ = {"shape": (1, 1, 1, 1), "typestr": "<f4", "data": (0, False), "version": 3}

    if crosslayer.build_info()["cuda"]:
        pytest.skip("a CUDA build routes GPU arrays to the device kernels")
    with pytest.raises(RuntimeError, match="built without CUDA, so pool cannot take GPU arrays"):
        crosslayer.pool(FakeCudaArray(), FakeCudaArray())


def test_num_threads_is_validated_and_capped(rng):
    x = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    a = rng.random((2, 4, 3, 3)).astype(np.float32)
    expected = crosslayer.pool(x, a)
    with pytest.raises(TypeError, match="num_threads: expected an integer >= 0"):
        crosslayer.pool(x, a, num_threads="8")
    with pytest.raises(ValueError, match="num_threads: expected an integer >= 0"):
        crosslayer.pool(x, a, num_threads=-2)
    for threads in (1, 10**10):
        # Dk <= 64 is one channel block per image in either schedule: the same BLAS calls, so the same bits
        np.testing.assert_array_equal(crosslayer.pool(x, a, num_threads=threads), expected)


def test_pool_keeps_its_blas_single_threaded_after_someone_raises_it(rng):
    """Each OpenMP worker calls sgemm: if anything in the process raised OpenBLAS's thread count after the first pool
    call (threadpoolctl, numpy code sharing the library), every worker would start its own BLAS threads."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import crosslayer._native as native

    ours = os.path.realpath(native.core.__file__)

    scipy_blas = crosslayer.build_info()["blas_choice"] == "scipy-openblas32"  # else a system OpenBLAS (CROSSLAYER_BLAS)

    def our_blas_threads():
        counts = [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                  if lib["internal_api"] == "openblas"
                  and os.path.basename(lib["filepath"]).startswith("libscipy_openblas.so" if scipy_blas else "libopenblas")]
        return counts

    x, a = _inputs(rng)
    crosslayer.pool(x, a)
    if not our_blas_threads():
        pytest.skip(f"threadpoolctl does not see the BLAS that {ours} links")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert our_blas_threads() == [2]
        crosslayer.pool(x, a)
        assert our_blas_threads() == [1]


def test_raw_kernel_refuses_a_pca_mean_without_projection(rng):
    """The binding used to drop a lone mean silently (the public `pool` takes them as one pair)."""
    from crosslayer._native import core

    x, a = _inputs(rng)
    out = np.empty((len(x), a.shape[1] * x.shape[1]), np.float32)
    with pytest.raises(ValueError, match="pca mean and projection go together"):
        core.pool_cpu(x, a, np.zeros(x.shape[1], np.float32), None, out, None, None)


# ---- finish_pooled: the epilogue alone, on P computed elsewhere (OpenVINO's graph at bf16) ---------------------------

@st.composite
def pooled_values(draw):
    n, dk, dt = draw(st.integers(0, 3)), draw(st.integers(1, 140)), draw(st.integers(1, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pooled = (rng.standard_normal((n, dk, dt)) * draw(st.sampled_from([1e-3, 1.0, 1e4]))).astype(np.float32)
    pooled[:, draw(st.lists(st.integers(0, dk - 1), max_size=3))] = 0  # dead channels stay exactly zero
    if n and draw(st.booleans()):
        step = draw(st.integers(1, 5))
        pooled[0, 0, ::step] = 0  # exact zeros inside a live channel: the nonzero plane
        pooled[0, -1, ::step] = -0.0  # negative zero is zero, not negative
    return pooled, draw(st.sampled_from([1, 2, 3]))


@given(pooled_values())
def test_finish_pooled_float_matches_reference(values):
    from crosslayer.pooling import finish_pooled

    pooled, threads = values
    out = finish_pooled(pooled, num_threads=threads)
    n, dk, dt = pooled.shape
    assert out.shape == (n, dk * dt) and out.dtype == np.float32
    # exact input: only the epilogue's roundings (4u of the normalised value, as for `pool`)
    assert_normalized_within(out.reshape(n, dk, dt), pooled.astype(np.float64), np.zeros(pooled.shape), epilogue_units=4)
    assert (out.reshape(n, dk, dt)[(pooled == 0).all(axis=2)] == 0).all()


@given(pooled_values())
def test_finish_pooled_codes_are_the_reference_signs_exactly(values):
    from crosslayer.pooling import finish_pooled

    pooled, threads = values
    channel_mean = np.abs(pooled).mean(axis=2)
    codes = finish_pooled(pooled, channel_mean, output="codes", num_threads=threads)
    assert (len(codes), codes.Dk, codes.Dt) == pooled.shape
    assert np.array_equal(codes.bits, ref.pack_ternary(ref.sign_quantize(pooled)))
    assert np.array_equal(codes.channel_mean, channel_mean)


def test_finish_pooled_equals_pool_on_the_same_pooled_values(rng):
    """The same epilogue as the fused kernel's: given the fused kernel's own P, the outputs are identical."""
    from crosslayer.pooling import finish_pooled

    local, guidance = rng.standard_normal((2, 20, 3, 3)), rng.random((2, 9, 3, 3))
    local, guidance = np.round(local * 4).astype(np.float32), np.round(guidance * 4).astype(np.float32)
    pooled = ref.cross_layer_pool(local, guidance).astype(np.float32)  # small integers: P exact in float32
    assert np.array_equal(finish_pooled(pooled), crosslayer.pool(local, guidance))
    codes = crosslayer.pool(local, guidance, output="codes")
    assert np.array_equal(finish_pooled(pooled, codes.channel_mean, output="codes").bits, codes.bits)


def test_finish_pooled_rejects_bad_arguments(rng):
    from crosslayer.pooling import finish_pooled

    pooled = rng.standard_normal((2, 3, 5)).astype(np.float32)
    with pytest.raises(UsageError, match="pooled: expected a 3-d array"):
        finish_pooled(pooled[0])
    with pytest.raises(UsageError, match="channel_mean: codes need"):
        finish_pooled(pooled, output="codes")
    with pytest.raises(UsageError, match=r"channel_mean: expected shape \(2, 3\)"):
        finish_pooled(pooled, np.zeros((2, 4), np.float32), output="codes")
    with pytest.raises(UsageError, match="output"):
        finish_pooled(pooled, output="bits")
    with pytest.raises(UsageError, match=r"pooled: expected \(n, Dk, Dt\)"):
        finish_pooled(np.zeros((1, 0, 5), np.float32))
    bad = pooled.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(UsageError, match="pooled: contains NaN or Inf"):
        finish_pooled(bad)
    for output in ("float", "codes"):  # unchecked, the kernel still refuses them
        with pytest.raises(ValueError, match="not finite"):
            finish_pooled(bad, np.zeros((2, 3), np.float32), output=output, check_finite=False)
