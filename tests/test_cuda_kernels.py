"""CUDA kernels against the CPU kernel and the numpy reference (skipped without a GPU and a CUDA build)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crosslayer
from crosslayer import _device, reference

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(not crosslayer.build_info()["cuda"], reason="crosslayer built without CUDA"),
]


def to_gpu(array):
    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


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


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_pool_codes_match_reference_within_tf32_bound(shape, seed):
    n, dt_in, dk, h, w, dt = shape
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, dt_in, h, w)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    guidance[:, :1] = 0  # an all-zero channel
    pca = None if dt is None else random_pca(rng, dt_in, dt)
    gpu_pca = None if pca is None else tuple(to_gpu(p) for p in pca)
    codes = crosslayer.pool(to_gpu(local), to_gpu(guidance), pca=gpu_pca, output="codes")
    host = codes.to_host()
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
    squared = lambda v: v * np.abs(v)  # undoes the signed square root, which amplifies rounding near zero
    for b in range(n):
        err = np.linalg.norm(squared(got[b]) - squared(expected[b]))
        assert err <= 2e-3 * max(np.linalg.norm(squared(expected[b])), 1e-30)
    dt_eff = dt_in if dt is None else dt
    assert np.all(got.reshape(n, dk, dt_eff)[:, -1] == 0)
    np.testing.assert_allclose(mean.cpu().numpy(), reference.channel_mean(guidance), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pool_accepts_16_bit_activations(rng, dtype):
    local = rng.standard_normal((2, 70, 5, 5)).astype(np.float32)
    guidance = rng.random((2, 65, 5, 5)).astype(np.float32)
    torch_dtype = getattr(torch, dtype)
    x16, a16 = to_gpu(local).to(torch_dtype), to_gpu(guidance).to(torch_dtype)
    codes = crosslayer.pool(x16, a16, output="codes").to_host()
    local_r, guidance_r = x16.float().cpu().numpy(), a16.float().cpu().numpy()  # the values the kernel saw
    pooled = reference.cross_layer_pool(local_r, guidance_r)
    assert reference.sign_violations(codes.signs(), pooled, reference.tf32_sign_bound(local_r, guidance_r)) == 0


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


def test_pool_empty_batch():
    x = torch.zeros((0, 5, 2, 2), device="cuda")
    a = torch.zeros((0, 3, 2, 2), device="cuda")
    codes = crosslayer.pool(x, a, output="codes")
    assert tuple(codes.bits.shape) == (0, 3, 2, 1)


# ---- gram / search ----------------------------------------------------------------------------------------------

def random_codes(rng, n, dk, dt):
    return reference.pack_ternary(rng.integers(-1, 2, size=(n, dk, dt)).astype(np.int8))


def dots(q_bits, x_bits, dt, channels=None):
    q = reference.unpack_ternary(q_bits, dt).astype(np.int64)
    x = reference.unpack_ternary(x_bits, dt).astype(np.int64)
    if channels is None:
        return np.einsum("akj,bkj->ab", q, x)
    return np.stack([np.einsum("kj,bkj->b", q[i][channels[i]], x[:, channels[i]]) for i in range(len(q))])


def top_k(scores, k, id_base=0):
    ids = np.arange(scores.shape[1]) + id_base
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@settings(max_examples=25, deadline=None)
@given(na=st.integers(0, 70), nb=st.integers(0, 140), dk=st.integers(1, 9), dt=st.integers(1, 200),
       seed=st.integers(0, 2**31 - 1))
def test_gram_matches_reference(na, nb, dk, dt, seed):
    rng = np.random.default_rng(seed)
    a, b = random_codes(rng, na, dk, dt), random_codes(rng, nb, dk, dt)
    got = _device.gram_device(to_gpu(a), to_gpu(b), dt).cpu().numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, dots(a, b, dt))


@settings(max_examples=30, deadline=None)
@given(nq=st.integers(0, 5), nd=st.integers(1, 300), dk=st.integers(1, 12), dt=st.sampled_from([1, 63, 64, 100, 128, 256, 512, 1000, 1024]),
       seed=st.integers(0, 2**31 - 1), data=st.data())
def test_search_matches_reference(nq, nd, dk, dt, seed, data):
    rng = np.random.default_rng(seed)
    n_channels = data.draw(st.integers(0, dk))
    k = data.draw(st.integers(0, nd))
    queries, database = random_codes(rng, nq, dk, dt), random_codes(rng, nd, dk, dt)
    if data.draw(st.booleans()):  # many ties
        database[: nd // 2] = database[nd // 2 : 2 * (nd // 2)]
    channels = np.array([rng.permutation(dk)[:n_channels] for _ in range(nq)], dtype=np.int32).reshape(nq, n_channels)
    scores, ids = _device.search_device(to_gpu(queries), to_gpu(database), dt, to_gpu(channels), k, id_base=7)
    want_scores, want_ids = top_k(dots(queries, database, dt, channels), k, id_base=7)
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
    np.testing.assert_array_equal(ids.cpu().numpy(), want_ids)


def test_chunked_search_equals_whole_search(rng):
    dk, dt, nd, k = 16, 512, 1000, 25
    queries, database = random_codes(rng, 4, dk, dt), random_codes(rng, nd, dk, dt)
    database[500:600] = database[100:200]  # ties across segments
    channels = to_gpu(np.stack([rng.permutation(dk)[:5] for _ in range(4)]).astype(np.int32))
    gq, gdb = to_gpu(queries), to_gpu(database)
    whole = _device.search_device(gq, gdb, dt, channels, k)
    merged = None
    for start in range(0, nd, 300):
        segment = gdb[start : start + 300]
        if merged is None:
            merged = _device.search_device(gq, segment, dt, channels, k, id_base=start)
        else:
            merged = _device.search_device(gq, segment, dt, channels, k, id_base=start, existing=merged)
    np.testing.assert_array_equal(merged[0].cpu().numpy(), whole[0].cpu().numpy())
    np.testing.assert_array_equal(merged[1].cpu().numpy(), whole[1].cpu().numpy())


def test_search_rejects_bad_channels_and_k(rng):
    q, db = to_gpu(random_codes(rng, 2, 4, 64)), to_gpu(random_codes(rng, 5, 4, 64))
    bad = to_gpu(np.array([[0, 4], [1, 2]], np.int32))
    with pytest.raises(ValueError, match="channels: expected channel indices"):
        _device.search_device(q, db, 64, bad, 3)
    with pytest.raises(ValueError, match="k: expected"):
        _device.search_device(q, db, 64, to_gpu(np.zeros((2, 1), np.int32)), 6)
