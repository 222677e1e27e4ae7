"""CUDA kernels against the CPU kernel and the numpy reference (skipped without a GPU and a CUDA build).

Float output tolerance (tests/test_pool.py's rule with the TF32 bound). Each pooled value errs by at most
reference.tf32_sign_bound; normalising by a norm that errs likewise adds |v| ||bound|| / ||P||. The epilogue then
rounds in float32 (csrc/cuda/pool_cuda.cu): the sum of squares of Dt values (relative error <= (Dt + 1) u on ||P||^2,
so (Dt + 1) u / 2 on ||P||), 1/||P|| (u), the scaling (u) and sqrtf (u, doubled when the test squares the output back,
exactly, in float64). With |v| <= 1 that adds at most ((Dt + 1) / 2 + 4) u = (Dt + 9) u / 2, u = 2**-24; unlike the
CPU kernel, which sums the squares in double (hence its Dt-free 8u).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crosslayer
from crosslayer import _device, reference

from _codes import random_codes

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not crosslayer.build_info()["cuda"], reason="crosslayer built without CUDA"),
]

U = 2.0**-24


def to_gpu(array):
    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def to_gpu_codes(codes):
    """Host `Codes` as the GPU codes the public gram/search take (what pool(..., output="codes") returns)."""
    return _device.DeviceCodes(to_gpu(codes.bits), to_gpu(codes.channel_mean), codes.Dt)


def random_pca(rng, dt_in, dt):
    mean = rng.standard_normal(dt_in).astype(np.float32)
    proj = (rng.standard_normal((dt_in, dt)) / np.sqrt(dt_in)).astype(np.float32)
    return mean, proj


shapes = st.tuples(
    st.integers(0, 3),      # n
    st.integers(1, 140),    # Dt_in
    st.integers(1, 150),    # Dk
    st.integers(1, 7),      # H
    st.integers(1, 7),      # W
    st.one_of(st.none(), st.integers(1, 200)),  # Dt after PCA (None: no PCA)
)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(["float32", "bfloat16", "float16"]), seed=st.integers(0, 2**31 - 1))
def test_pool_codes_match_reference_within_tf32_bound(shape, dtype, seed):
    n, dt_in, dk, h, w, dt = shape
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, dt_in, h, w)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    guidance[:, :1] = 0  # an all-zero channel
    x, a = to_gpu(local).to(getattr(torch, dtype)), to_gpu(guidance).to(getattr(torch, dtype))
    # The kernel widens 16-bit inputs to float32 exactly, so the reference takes the rounded values, widened.
    local, guidance = x.float().cpu().numpy(), a.float().cpu().numpy()
    pca = None if dt is None else random_pca(rng, dt_in, dt)
    gpu_pca = None if pca is None else tuple(to_gpu(p) for p in pca)
    codes = crosslayer.pool(x, a, pca=gpu_pca, output="codes")
    host = codes.to_host()
    assert (len(host), host.Dk, host.Dt) == (n, dk, dt_in if dt is None else dt)
    pooled = reference.cross_layer_pool(local, guidance, pca)
    bound = reference.tf32_sign_bound(local, guidance, pca)
    assert reference.sign_violations(host.signs(), pooled, bound) == 0
    assert np.all(host.signs()[:, 0] == 0)
    # padding bits beyond Dt are zero
    assert np.array_equal(reference.pack_ternary(host.signs()), host.bits)
    np.testing.assert_allclose(host.channel_mean, reference.channel_mean(guidance), rtol=1e-6, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_pool_float_matches_cpu(shape, seed):
    n, dt_in, dk, h, w, dt = shape
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, dt_in, h, w)).astype(np.float32)
    guidance = rng.random((n, dk, h, w)).astype(np.float32)
    guidance[:, -1] = 0
    pca = None if dt is None else random_pca(rng, dt_in, dt)
    gpu_pca = None if pca is None else tuple(to_gpu(p) for p in pca)
    out, mean = crosslayer.pool(to_gpu(local), to_gpu(guidance), pca=gpu_pca, return_channel_mean=True)
    expected = reference.representation(local, guidance, pca)
    got = out.cpu().numpy().astype(np.float64)
    assert got.shape == expected.shape
    dt_eff = dt_in if dt is None else dt
    # Compare v = P / ||P|| (undoing the signed square root, which amplifies rounding near zero); the tolerance is
    # derived in the module docstring.
    pooled = reference.cross_layer_pool(local, guidance, pca)
    norms = np.linalg.norm(pooled, axis=2, keepdims=True)
    bound = reference.tf32_sign_bound(local, guidance, pca)
    v_ref = reference.l2_normalize_channels(pooled)
    with np.errstate(divide="ignore", invalid="ignore"):
        tol = np.where(norms > 0, (bound + np.abs(v_ref) * np.linalg.norm(bound, axis=2, keepdims=True)) / norms, 0.0)
    float32_epilogue = (dt_eff + 9) / 2 * U
    v_gpu = (got * np.abs(got)).reshape(n, dk, dt_eff)
    assert np.all(np.abs(v_gpu - v_ref) <= tol + float32_epilogue)
    assert np.all(got.reshape(n, dk, dt_eff)[:, -1] == 0)
    np.testing.assert_allclose(mean.cpu().numpy(), reference.channel_mean(guidance), rtol=1e-6, atol=1e-7)


def test_pool_codes_equal_cpu_except_within_bound(rng):
    local = rng.standard_normal((3, 96, 6, 6)).astype(np.float32)
    guidance = rng.random((3, 130, 6, 6)).astype(np.float32)
    pca = random_pca(rng, 96, 77)
    cpu = crosslayer.pool(local, guidance, pca=pca, output="codes")
    gpu = crosslayer.pool(to_gpu(local), to_gpu(guidance), pca=tuple(to_gpu(p) for p in pca), output="codes")
    differ = cpu.signs() != gpu.to_host().signs()
    pooled = reference.cross_layer_pool(local, guidance, pca)
    assert not np.any(differ & (np.abs(pooled) > reference.tf32_sign_bound(local, guidance, pca)))


def test_pool_rejects_nan_and_mixed_frameworks(rng):
    x = to_gpu(rng.standard_normal((1, 4, 2, 2)).astype(np.float32))
    a = to_gpu(rng.random((1, 3, 2, 2)).astype(np.float32))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x_t: contains NaN"):
        crosslayer.pool(bad, a)
    with pytest.raises(TypeError, match="a_t1 on the host"):
        crosslayer.pool(x, a.cpu().numpy())


@pytest.mark.parametrize("dt", [None, 4])  # without PCA Dt = Dt_in = 5
def test_pool_empty_batch(dt):
    x = to_gpu(np.zeros((0, 5, 2, 2), np.float32))
    a = to_gpu(np.zeros((0, 3, 2, 2), np.float32))
    pca = None if dt is None else (to_gpu(np.zeros(5, np.float32)), to_gpu(np.ones((5, dt), np.float32)))
    dt_eff = 5 if dt is None else dt
    codes = crosslayer.pool(x, a, pca=pca, output="codes")
    assert codes.bits.dtype == torch.uint64 and tuple(codes.bits.shape) == (0, 3, 2, 1)
    assert codes.channel_mean.dtype == torch.float32 and tuple(codes.channel_mean.shape) == (0, 3)
    assert codes.Dt == dt_eff
    out, mean = crosslayer.pool(x, a, pca=pca, return_channel_mean=True)
    assert out.dtype == torch.float32 and tuple(out.shape) == (0, 3 * dt_eff)
    assert mean.dtype == torch.float32 and tuple(mean.shape) == (0, 3)
    assert out.device == mean.device == codes.bits.device == x.device


# ---- gram / search ----------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(na=st.integers(0, 70), nb=st.integers(0, 140), dk=st.integers(1, 9), dt=st.integers(1, 200),
       normalize=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gram_matches_reference(na, nb, dk, dt, normalize, seed):
    rng = np.random.default_rng(seed)
    a, b = random_codes(rng, na, dk, dt), random_codes(rng, nb, dk, dt)
    if na:
        a.bits[rng.integers(na)] = 0  # an all-zero code: normalised, its row is 0, not NaN
    got_ab = crosslayer.gram(to_gpu_codes(a), to_gpu_codes(b), normalize=normalize).cpu().numpy()
    got_aa = crosslayer.gram(to_gpu_codes(a), normalize=normalize).cpu().numpy()
    assert got_ab.shape == (na, nb) and got_aa.shape == (na, na)
    if normalize:
        # float64 like the host path; sqrt(nnz_a) * sqrt(nnz_b) and sqrt(nnz_a * nnz_b) differ by a few ulps
        assert got_ab.dtype == got_aa.dtype == np.float64
        np.testing.assert_allclose(got_ab, reference.cosine_gram_reference(a.bits, b.bits, dt), rtol=1e-12, atol=0)
        np.testing.assert_allclose(got_aa, reference.cosine_gram_reference(a.bits, a.bits, dt), rtol=1e-12, atol=0)
    else:
        assert got_ab.dtype == got_aa.dtype == np.int32
        np.testing.assert_array_equal(got_ab, reference.gram_reference(a.bits, b.bits, dt))
        np.testing.assert_array_equal(got_aa, reference.gram_reference(a.bits, a.bits, dt))


def test_normalized_gram_of_no_codes(rng):
    none, some = to_gpu_codes(random_codes(rng, 0, 3, 70)), to_gpu_codes(random_codes(rng, 4, 3, 70))
    for got, shape in ((crosslayer.gram(none, normalize=True), (0, 0)),
                       (crosslayer.gram(none, some, normalize=True), (0, 4)),
                       (crosslayer.gram(some, none, normalize=True), (4, 0))):
        assert got.dtype == torch.float64 and tuple(got.shape) == shape


@settings(max_examples=30, deadline=None)
@given(nq=st.integers(0, 5), nd=st.integers(0, 300), dk=st.integers(1, 12),
       dt=st.sampled_from([1, 63, 64, 100, 128, 256, 512, 1000, 1024]), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_search_matches_reference(nq, nd, dk, dt, seed, data):
    channels = data.draw(st.one_of(st.none(), st.integers(1, dk)), label="channels")
    k = data.draw(st.integers(1, nd + 3), label="k")  # k > nd keeps all nd items
    rng = np.random.default_rng(seed)
    queries, database = random_codes(rng, nq, dk, dt), random_codes(rng, nd, dk, dt)
    if data.draw(st.booleans(), label="duplicate items"):  # equal scores of different ids
        database.bits[: nd // 2] = database.bits[nd // 2 : 2 * (nd // 2)]
    want_scores, want_ids = reference.search_reference(
        queries.bits, queries.channel_mean, database.bits, dt, k, channels
    )
    if channels is not None:  # the means are small integers, so the tie rule decides
        selection = _device.select_channels_device(to_gpu(queries.channel_mean), channels)
        assert selection.dtype == torch.int32
        np.testing.assert_array_equal(selection.cpu().numpy(),
                                      reference.select_channels_reference(queries.channel_mean, channels))
    scores, ids = crosslayer.search(to_gpu_codes(queries), to_gpu_codes(database), k=k, channels=channels)
    assert scores.dtype == torch.int32 and ids.dtype == torch.int64
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
    np.testing.assert_array_equal(ids.cpu().numpy(), want_ids)


def test_chunked_search_equals_reference(rng):
    dk, dt, nd, k, channels = 16, 512, 1000, 25, 5
    queries, database = random_codes(rng, 4, dk, dt), random_codes(rng, nd, dk, dt)
    database.bits[500:600] = database.bits[100:200]  # ties across segments
    want_scores, want_ids = reference.search_reference(
        queries.bits, queries.channel_mean, database.bits, dt, k, channels
    )
    gq, gdb = to_gpu(queries.bits), to_gpu(database.bits)
    selection = _device.select_channels_device(to_gpu(queries.channel_mean), channels)
    whole = _device.search_device(gq, gdb, dt, selection, k)
    merged = None
    for start in range(0, nd, 300):
        segment = gdb[start : start + 300]
        if merged is None:
            merged = _device.search_device(gq, segment, dt, selection, k, id_base=start)
        else:
            merged = _device.search_device(gq, segment, dt, selection, k, id_base=start, existing=merged)
    for scores, ids in (whole, merged):
        np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
        np.testing.assert_array_equal(ids.cpu().numpy(), want_ids)


def test_search_rejects_bad_channels_and_k(rng):
    q, db = to_gpu(random_codes(rng, 2, 4, 64).bits), to_gpu(random_codes(rng, 5, 4, 64).bits)
    bad = to_gpu(np.array([[0, 4], [1, 2]], np.int32))
    with pytest.raises(ValueError, match="channels: expected channel indices"):
        _device.search_device(q, db, 64, bad, 3)
    with pytest.raises(ValueError, match="k: expected"):
        _device.search_device(q, db, 64, to_gpu(np.zeros((2, 1), np.int32)), 6)


def test_public_gram_and_search_on_gpu_codes_equal_host(rng):
    local = rng.standard_normal((6, 70, 4, 4)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((6, 9, 4, 4)), 0).astype(np.float32)
    gpu_codes = crosslayer.pool(to_gpu(local), to_gpu(guidance), output="codes")
    host_codes = gpu_codes.to_host()
    np.testing.assert_array_equal(crosslayer.gram(gpu_codes).cpu().numpy(), crosslayer.gram(host_codes))
    np.testing.assert_allclose(crosslayer.gram(gpu_codes, normalize=True).cpu().numpy(),
                               crosslayer.gram(host_codes, normalize=True), rtol=1e-12, atol=1e-12)
    scores, ids = crosslayer.search(gpu_codes[:2], gpu_codes, k=4, channels=5)
    want_scores, want_ids = crosslayer.search(host_codes[:2], host_codes, k=4, channels=5)
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
    np.testing.assert_array_equal(ids.cpu().numpy(), want_ids)
    with pytest.raises(TypeError, match="on the GPU but codes_b on the host"):
        crosslayer.gram(gpu_codes, host_codes)


# ---- compact codes: expanded on the device, then the 2-plane kernels (csrc/cuda/search_cuda.cu) -----------------

@settings(max_examples=20, deadline=None)
@given(na=st.integers(0, 70), nb=st.integers(0, 140), dk=st.sampled_from([1, 9, 65, 70]),
       dt=st.sampled_from([1, 63, 64, 100, 320]), dead=st.sampled_from([0.0, 0.1, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_compact_gram_on_the_gpu_equals_the_cpu(na, nb, dk, dt, dead, seed):
    from _codes import random_compact_codes

    from crosslayer._native import core

    rng = np.random.default_rng(seed)
    a, b = random_compact_codes(rng, na, dk, dt, dead), random_compact_codes(rng, nb, dk, dt, dead)
    ga, gb = to_gpu(a.bits), to_gpu(b.bits)
    for other, gother, n_other, want in ((b, gb, nb, crosslayer.gram(a, b)), (a, ga, na, crosslayer.gram(a))):
        out = torch.empty((na, n_other), dtype=torch.int32, device="cuda")
        core.gram_cuda(ga.data_ptr(), na, gother.data_ptr(), n_other, dk, dt, out.data_ptr(),
                       torch.cuda.current_stream().cuda_stream, torch.cuda.current_device(), 1)
        np.testing.assert_array_equal(out.cpu().numpy(), want)
        np.testing.assert_array_equal(want, reference.compact_gram_reference(a.bits, other.bits, dk, dt))


@settings(max_examples=20, deadline=None)
@given(nq=st.integers(1, 5), nd=st.integers(1, 300), dk=st.sampled_from([1, 12, 70]),
       dt=st.sampled_from([1, 64, 100, 128, 320, 512]), dead=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_compact_search_on_the_gpu_equals_the_cpu(nq, nd, dk, dt, dead, seed, data):
    from _codes import random_compact_codes

    from crosslayer._native import core
    from crosslayer.search import select_channels

    rng = np.random.default_rng(seed)
    channels = data.draw(st.integers(1, dk), label="channels")
    k = data.draw(st.integers(1, nd), label="k")
    queries, database = random_compact_codes(rng, nq, dk, dt, dead), random_compact_codes(rng, nd, dk, dt, dead)
    want_scores, want_ids = crosslayer.search(queries, database, k=k, channels=channels)
    selection = to_gpu(select_channels(queries.channel_mean, channels))
    gq, gd = to_gpu(queries.bits), to_gpu(database.bits)
    scores = torch.empty((nq, k), dtype=torch.int32, device="cuda")
    ids = torch.empty((nq, k), dtype=torch.int64, device="cuda")
    core.search_cuda(gq.data_ptr(), nq, gd.data_ptr(), nd, dk, dt, selection.data_ptr(), channels, k, 0, False,
                     scores.data_ptr(), ids.data_ptr(), torch.cuda.current_stream().cuda_stream,
                     torch.cuda.current_device(), 1)
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
    np.testing.assert_array_equal(ids.cpu().numpy(), want_ids)
