"""Routing of GPU arrays, checked on the CPU with stand-in objects (no GPU needed)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crosslayer
from crosslayer import _device, reference


class FakeDeviceArray:
    """Exports __cuda_array_interface__ like a GPU array does; never dereferenced by these tests."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False), "version": 3}


def test_mixing_host_and_device_arrays_names_both(rng):
    x = rng.random((1, 3, 2, 2), dtype=np.float32)
    with pytest.raises(TypeError, match=r"a_t1 on the GPU but x_t on the host"):
        crosslayer.pool(x, FakeDeviceArray((1, 3, 2, 2)))


def test_mixing_pca_on_host_with_device_activations(rng):
    mean, proj = np.zeros(3, np.float32), np.eye(3, dtype=np.float32)
    with pytest.raises(TypeError, match=r"pca\[0\] \(mean\), pca\[1\] \(projection\) on the host"):
        crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)), pca=(mean, proj))


def test_cpu_only_build_says_so(monkeypatch):
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: False)
    with pytest.raises(RuntimeError, match="crosslayer was built without CUDA"):
        crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)))


def test_unsupported_gpu_framework_is_named(monkeypatch):
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: True)
    with pytest.raises(TypeError, match="x_t: GPU arrays of"):
        crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)))


class FakeDLPackDeviceArray:
    """Exports only DLPack, of CUDA memory (kDLCUDA = 2); never dereferenced by these tests."""

    def __dlpack__(self, stream=None):
        raise AssertionError("the boundary must not import DLPack capsules")

    def __dlpack_device__(self):
        return (2, 0)


def test_dlpack_only_gpu_array_is_told_what_to_pass(monkeypatch):
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: True)
    with pytest.raises(TypeError, match=r"x_t: GPU arrays of type .*FakeDLPackDeviceArray are not supported; "
                                        r"GPU inputs must be torch CUDA tensors or CuPy arrays.*torch\.from_dlpack"):
        crosslayer.pool(FakeDLPackDeviceArray(), FakeDLPackDeviceArray())


def test_dlpack_only_gpu_array_on_a_cpu_only_build(monkeypatch, rng):
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: False)
    with pytest.raises(RuntimeError, match="crosslayer was built without CUDA"):
        crosslayer.pool(FakeDLPackDeviceArray(), FakeDLPackDeviceArray())
    # beside a host array it is named as the GPU one, not taken for a host array
    with pytest.raises(TypeError, match="a_t1 on the GPU but x_t on the host"):
        crosslayer.pool(rng.random((1, 3, 2, 2), dtype=np.float32), FakeDLPackDeviceArray())


def test_gpu_array_reaching_a_host_check_does_not_suggest_a_cuda_build():
    from crosslayer._validate import as_float32_array

    for value in (FakeDLPackDeviceArray(), FakeDeviceArray((1, 2))):
        with pytest.raises(TypeError, match=r"x: a GPU array \(.*\) was given where a host array is needed; "
                                            r"pass a numpy array$"):
            as_float32_array(value, "x")


def test_public_pool_passes_check_finite_to_the_device_path(monkeypatch):
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: True)
    seen = []
    monkeypatch.setattr(_device, "pool_device", lambda *args, **kwargs: seen.append(kwargs.get("check_finite")))
    for flag in (True, False):
        crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)), check_finite=flag)
    crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)))
    assert seen == [True, False, True]


def test_compact_layout_on_gpu_arrays_is_refused_before_the_kernel(monkeypatch):
    """The CUDA kernel writes 2-plane codes only: layout="compact" is named, nothing is launched."""
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: True)
    launched = []
    monkeypatch.setattr(_device, "pool_device", lambda *args, **kwargs: launched.append(args))
    with pytest.raises(crosslayer.UsageError, match=r"layout: the CUDA kernel writes 2-plane codes only.*to_host"):
        crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)), output="codes", layout="compact")
    crosslayer.pool(FakeDeviceArray((1, 3, 2, 2)), FakeDeviceArray((1, 3, 2, 2)), output="codes", layout="two_plane")
    assert len(launched) == 1


def test_finiteness_of_all_inputs_is_read_back_once(monkeypatch):
    torch = pytest.importorskip("torch")
    reads = []
    real_read_back = _device._read_back
    monkeypatch.setattr(_device, "_read_back", lambda *args: reads.append(args) or real_read_back(*args))

    def array(*values):  # CPU tensors stand in for device ones: the reductions are the same torch calls
        value = torch.tensor(values)
        return _device.DeviceArray(value, 0, tuple(value.shape), "<f4", "torch", 0)

    arrays = {"x_t": array(1.0, 2.0), "a_t1": array(float("nan")), "pca[0] (mean)": array(float("-inf"), 0.0)}
    assert _device._non_finite(arrays, "torch") == ["a_t1", "pca[0] (mean)"]
    assert _device._non_finite({"x_t": array(1.0), "a_t1": array()}, "torch") == []
    assert len(reads) == 2


def test_host_arrays_are_not_routed(rng):
    assert _device.route("pool", x_t=rng.random((1, 2)), a_t1=None) is False


def _fake_device_codes():
    return crosslayer.DeviceCodes(FakeDeviceArray((1, 3, 2, 1), "<u8"), FakeDeviceArray((1, 3)), 5)


def test_pool_gram_and_search_decide_host_or_device_in_one_place(monkeypatch, rng):
    """Each public operation asks `_device.route` once, with every array or code argument it was given."""
    asked = []
    real_route = _device.route
    monkeypatch.setattr(_device, "route", lambda operation, **args: asked.append((operation, sorted(args)))
                        or real_route(operation, **args))
    x = rng.random((1, 3, 2, 2), dtype=np.float32)
    codes = crosslayer.pool(x, x, output="codes")
    crosslayer.gram(codes)
    crosslayer.search(codes, codes, k=1, channels=None)
    assert asked == [("pool", ["a_t1", "pca[0] (mean)", "pca[1] (projection)", "x_t"]),
                     ("gram", ["codes_a", "codes_b"]), ("search", ["database", "queries"])]


def test_device_codes_are_exported_and_routed(monkeypatch, rng):
    assert crosslayer.DeviceCodes is _device.DeviceCodes and "DeviceCodes" in crosslayer.__all__
    host = crosslayer.pool(rng.random((1, 3, 2, 2), dtype=np.float32), rng.random((1, 3, 2, 2), dtype=np.float32),
                           output="codes")
    with pytest.raises(TypeError, match=r"^gram: codes_a on the GPU but codes_b on the host"):
        crosslayer.gram(_fake_device_codes(), host)
    with pytest.raises(TypeError, match=r"^search: database on the GPU but queries on the host"):
        crosslayer.search(host, _fake_device_codes())
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: False)
    with pytest.raises(RuntimeError, match="without CUDA, so search cannot take GPU arrays"):
        crosslayer.search(_fake_device_codes(), _fake_device_codes())


def test_a_gpu_array_where_codes_belong_is_named(monkeypatch):
    monkeypatch.setattr(_device, "cuda_available_in_build", lambda: True)
    with pytest.raises(TypeError, match="codes_a: expected crosslayer.Codes or crosslayer.DeviceCodes"):
        crosslayer.gram(FakeDeviceArray((1, 3, 2, 1), "<u8"))


@st.composite
def tf32_pooling_inputs(draw):
    n = draw(st.integers(1, 3))
    dt_in = draw(st.integers(1, 150))  # mostly not a multiple of 64: partial code words
    dk = draw(st.integers(1, 12))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))  # h = w = 1: one position
    offset = draw(st.sampled_from([0.0, 5.0]))  # post-ReLU layers have a large mean: exercises the centring
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    local = (rng.standard_normal((n, dt_in, h, w)) + offset).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    guidance[:, draw(st.lists(st.integers(0, dk - 1), max_size=2))] = 0
    local[:, draw(st.lists(st.integers(0, dt_in - 1), max_size=2))] = 0
    pca = None
    if draw(st.booleans()):
        mean, proj = reference.pca_fit(rng.standard_normal((2 * dt_in + 8, dt_in)) + offset,
                                       draw(st.integers(1, dt_in)))
        pca = (mean.astype(np.float32), proj.astype(np.float32))
    return local, guidance, pca


@given(tf32_pooling_inputs())
def test_tf32_sign_bound_covers_an_emulation_of_the_gpu_arithmetic(inputs):
    """The bound that judges the GPU codes is sound: the kernel's TF32 arithmetic, emulated in numpy, stays within
    it of the float64 pooled values (observed: within a quarter of it), so its codes never differ from the float64
    signs outside it. Sign flips need a value within rounding of zero, which random inputs rarely give, so the
    value check is what makes a too-small bound fail here on almost any input."""
    local, guidance, pca = inputs
    emulated = reference.cross_layer_pool_tf32(local, guidance, pca)
    pooled = reference.cross_layer_pool(local, guidance, pca)
    bound = reference.tf32_sign_bound(local, guidance, pca)
    assert (np.abs(emulated - pooled) <= bound).all()
    assert reference.sign_violations(np.sign(emulated), pooled, bound) == 0


def test_tf32_round_is_round_half_away_on_the_13_dropped_bits():
    one = np.float32(1.0)
    ulp = np.float32(2.0**-10)  # TF32 keeps 10 mantissa bits
    values = np.array([one + ulp / 2, one + ulp / 2 - np.float32(2.0**-23), -(one + ulp / 2), one + ulp], np.float32)
    np.testing.assert_array_equal(reference.tf32_round(values), [one + ulp, one, -(one + ulp), one + ulp])


def test_sign_violations_counts_only_values_beyond_the_bound(rng):
    local = rng.standard_normal((2, 5, 3, 3))
    guidance = rng.random((2, 4, 3, 3))
    pooled = reference.cross_layer_pool(local, guidance)
    bound = reference.tf32_sign_bound(local, guidance)
    flipped = -np.sign(pooled)
    assert reference.sign_violations(flipped, pooled, bound) == np.count_nonzero(np.abs(pooled) > bound) > 0


def test_device_codes_integer_index_out_of_range_raises():
    # DeviceCodes only indexes its arrays; numpy arrays stand in for the framework's here
    bits, means = np.arange(2 * 3 * 2 * 1, dtype=np.uint64).reshape(2, 3, 2, 1), np.zeros((2, 3), np.float32)
    codes = _device.DeviceCodes(bits, means, 10)
    for position in (2, 5, -3):
        with pytest.raises(IndexError, match="out of range for 2 items"):
            codes[position]
    assert np.array_equal(codes[-1].bits, bits[1:]) and np.array_equal(codes[np.int64(0)].bits, bits[:1])
    assert len(codes[5:]) == 0 and len(codes[:]) == 2
