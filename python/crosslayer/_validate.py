"""Argument checks shared by the public API: every failure names the argument and what was expected."""

from __future__ import annotations

import os

import numpy as np

from crosslayer.errors import UsageError

# More threads than this only adds scheduling overhead; a larger request (10**10, say) is capped rather than handed to
# OpenMP, which would try to start them all.
MAX_THREADS = 4 * (os.cpu_count() or 1)


def as_float32_array(value, name: str, ndim: int | None = None, allow_copy: bool = True,
                     check_finite: bool = True) -> np.ndarray:
    """Returns `value` as a C-contiguous float32 ndarray, rejecting wrong types, dimensions and (unless
    ``check_finite=False``) non-finite values."""
    if hasattr(value, "__cuda_array_interface__") or is_gpu_dlpack(value):
        raise TypeError(f"{name}: a GPU array ({_type_name(value)}) was given where a host array is needed; "
                        "pass a numpy array")
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
            raise TypeError(f"{name}: expected an array of float32, got {type(value).__name__}") from exc
    if value.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array (float32), got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise UsageError(f"{name}: expected a {ndim}-d array, got shape {value.shape}")
    if value.dtype != np.float32 or not value.flags.c_contiguous:
        if not allow_copy:
            raise UsageError(f"{name}: expected a C-contiguous float32 array")
        value = np.ascontiguousarray(value, dtype=np.float32)
    if check_finite and value.size and not np.isfinite(value).all():
        raise UsageError(f"{name}: contains NaN or Inf")
    return value


def _type_name(value) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def unsupported_gpu_array(name: str, value) -> TypeError:
    """The error for a GPU array of a kind the CUDA boundary cannot read (e.g. one that exports only DLPack)."""
    return TypeError(
        f"{name}: GPU arrays of type {_type_name(value)} are not supported; GPU inputs must be torch CUDA tensors or "
        "CuPy arrays (read through __cuda_array_interface__). Convert it first, e.g. torch.from_dlpack(array) or "
        "cupy.from_dlpack(array)"
    )


def is_gpu_dlpack(value) -> bool:
    """True for a DLPack exporter whose data is not in host memory."""
    device = getattr(value, "__dlpack_device__", None)
    if device is None or isinstance(value, np.ndarray):
        return False
    try:
        return int(device()[0]) != 1  # kDLCPU == 1
    except Exception:  # noqa: BLE001
        return False


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise UsageError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_num_threads(value) -> int:
    """A kernel's thread count: an integer >= 0, 0 meaning the OpenMP default; capped at MAX_THREADS."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"num_threads: expected an integer >= 0 (0 = the OpenMP default), got {type(value).__name__}")
    if value < 0:
        raise UsageError(f"num_threads: expected an integer >= 0 (0 = the OpenMP default), got {value}")
    return min(int(value), MAX_THREADS)


def check_layer_pair(x_shape: tuple, a_shape: tuple) -> None:
    """The two layers of a pooling call: (n, Dt, H, W) and (n, Dk, H, W), same n and spatial layout, non-empty."""
    n, dt_in, h, w = x_shape
    if a_shape[0] != n:
        raise UsageError(f"a_t1: batch size {a_shape[0]} differs from x_t's {n}")
    if tuple(a_shape[2:]) != (h, w):
        raise UsageError(f"a_t1: spatial size {tuple(a_shape[2:])} differs from x_t's {(h, w)}; the layers must share a layout")
    if dt_in < 1 or a_shape[1] < 1 or h * w < 1:
        raise UsageError(f"x_t/a_t1: need at least one channel and one position, got {tuple(x_shape)} and {tuple(a_shape)}")
