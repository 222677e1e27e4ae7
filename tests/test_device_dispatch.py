"""Routing of GPU arrays, checked on the CPU with stand-in objects (no GPU needed)."""

import numpy as np
import pytest

import crosslayer
from crosslayer import _device


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


def test_tf32_bound_flags_only_values_beyond_it(rng):
    from crosslayer import reference

    local = rng.standard_normal((2, 5, 3, 3))
    guidance = rng.random((2, 4, 3, 3))
    pooled = reference.cross_layer_pool(local, guidance)
    bound = reference.tf32_sign_bound(local, guidance)
    assert reference.sign_violations(np.sign(pooled), pooled, bound) == 0
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
