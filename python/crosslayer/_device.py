"""The single dispatch point for GPU arrays: `pool`, `gram` and `search` route device inputs through here.

Accepts PyTorch CUDA tensors and CuPy arrays (anything with ``__cuda_array_interface__`` whose framework we can
allocate with) without linking either: torch tensors are read through ``data_ptr()`` (their
``__cuda_array_interface__`` has no bfloat16), others through ``__cuda_array_interface__``. Kernels run on the
caller's current stream of the arrays' device; outputs are allocated by the inputs' framework on that device.
Two checks synchronise, each with a single device->host read: `pool_device`'s finiteness check (every input reduced
on the device, the flags read back together; skipped with ``check_finite=False``) and `search_device`'s range check
of the channel indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosslayer._native import core
from crosslayer._validate import check_layer_pair, is_gpu_dlpack, unsupported_gpu_array
from crosslayer.codes import item_slice
from crosslayer.errors import UsageError

_INPUT_TYPES = {"<f4": 0, "bfloat16": 1, "<f2": 2}


def cuda_available_in_build() -> bool:
    return bool(core.build_info()["cuda"])


def require_cuda_build(operation: str) -> None:
    if not cuda_available_in_build():
        raise RuntimeError(
            f"crosslayer was built without CUDA, so {operation} cannot take GPU arrays; rebuild with nvcc present "
            "(CROSSLAYER_CUDA=ON pip install . or python tools/dev_build.py --cuda ON), or pass numpy arrays"
        )


def _framework(value) -> str | None:
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        return "torch" if getattr(value, "is_cuda", False) else None
    if hasattr(value, "__cuda_array_interface__"):
        return "cupy" if module == "cupy" else "other"
    # Routed to the device path so that it is rejected there with what to pass instead, not read as a host array.
    return "dlpack" if is_gpu_dlpack(value) else None


def _float32(value):
    """A floating-point GPU array of another precision as float32 in its own framework (the PCA is small; the host
    path converts it likewise). Anything else is returned as is for `view` to judge."""
    framework = _framework(value)
    if framework == "torch" and value.is_floating_point() and str(value.dtype) != "torch.float32":
        return value.float()
    if framework == "cupy" and value.dtype.kind == "f" and value.dtype != np.float32:
        return value.astype(np.float32)
    return value


def is_device_array(value) -> bool:
    """True for a GPU array (torch CUDA tensor, any __cuda_array_interface__ exporter, a DLPack exporter of device
    memory); `view` accepts only the first two, and of the second only CuPy."""
    return value is not None and _framework(value) is not None


def _on_gpu(value) -> bool:
    return isinstance(value, DeviceCodes) or is_device_array(value)


def route(operation: str, **arguments) -> bool:
    """The one host/device decision of `pool`, `gram` and `search`: True when the arguments (arrays, or `Codes` /
    `DeviceCodes`) are on the GPU, False when none is; None arguments are ignored. Mixing the two is a TypeError
    naming them; GPU arguments on a build without CUDA a RuntimeError saying how to get one."""
    given = {name: value for name, value in arguments.items() if value is not None}
    on_gpu = [name for name, value in given.items() if _on_gpu(value)]
    if not on_gpu:
        return False
    on_host = [name for name in given if name not in on_gpu]
    if on_host:
        raise TypeError(
            f"{operation}: {', '.join(on_gpu)} on the GPU but {', '.join(on_host)} on the host; "
            "pass all arrays on one device"
        )
    require_cuda_build(operation)
    return True


@dataclass(frozen=True)
class DeviceArray:
    """What the kernels need of a validated, C-contiguous device array."""

    value: object  # the (possibly made contiguous) array, kept alive for the call
    address: int
    shape: tuple
    dtype: str  # "<f4", "<f2", "bfloat16", "<u8", "<i4", "<i8"
    framework: str
    device: int


_TORCH_DTYPES = {
    "float32": "<f4", "float16": "<f2", "bfloat16": "bfloat16", "uint64": "<u8", "int32": "<i4", "int64": "<i8",
}


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= max(int(extent), 1)
    return tuple(reversed(strides))


def view(value, name: str, dtypes: tuple, ndim: int | None = None) -> DeviceArray:
    """Validates a device array (dtype among `dtypes`, `ndim`) and returns its address; non-contiguous torch/CuPy
    arrays are copied to contiguous ones."""
    framework = _framework(value)
    if framework == "torch":
        if not value.is_contiguous():
            value = value.contiguous()
        dtype = _TORCH_DTYPES.get(str(value.dtype).replace("torch.", ""), str(value.dtype))
        shape, address, device = tuple(value.shape), int(value.data_ptr()), int(value.device.index or 0)
    elif framework in ("cupy", "other"):
        if framework == "cupy" and not value.flags.c_contiguous:
            import cupy

            value = cupy.ascontiguousarray(value)
        interface = value.__cuda_array_interface__
        shape, dtype = tuple(interface["shape"]), interface["typestr"]
        strides = interface.get("strides")
        if dtype in ("<f4", "<f2", "<u8", "<i4", "<i8") and strides is not None:
            if tuple(strides) != _c_strides(shape, np.dtype(dtype).itemsize):
                raise UsageError(f"{name}: expected a C-contiguous array, got strides {tuple(strides)}")
        if framework != "cupy":
            raise unsupported_gpu_array(name, value)
        address, device = int(interface["data"][0]), int(value.device.id)
    elif framework == "dlpack":
        raise unsupported_gpu_array(name, value)
    else:
        raise TypeError(f"{name}: expected a GPU array (torch CUDA tensor or CuPy array), got {type(value).__name__}")
    if dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {' or '.join(dtypes)}, got {dtype}")
    if ndim is not None and len(shape) != ndim:
        raise UsageError(f"{name}: expected a {ndim}-d array, got shape {shape}")
    return DeviceArray(value, address, shape, dtype, framework, device)


def same_device(arrays: dict) -> tuple[str, int]:
    """The (framework, device) all `arrays` share; a TypeError/ValueError naming the odd one otherwise."""
    first_name, first = next(iter(arrays.items()))
    for name, arr in arrays.items():
        if arr.framework != first.framework:
            raise TypeError(f"{name}: a {arr.framework} array, but {first_name} is a {first.framework} array")
        if arr.device != first.device:
            raise UsageError(f"{name}: on cuda:{arr.device}, but {first_name} is on cuda:{first.device}")
    return first.framework, first.device


def current_stream(framework: str, device: int) -> int:
    if framework == "torch":
        import torch

        return int(torch.cuda.current_stream(device).cuda_stream)
    import cupy

    with cupy.cuda.Device(device):
        return int(cupy.cuda.get_current_stream().ptr)


def empty(framework: str, device: int, shape: tuple, dtype: str):
    if framework == "torch":
        import torch

        torch_dtype = {"<f4": torch.float32, "<u8": torch.uint64, "<i4": torch.int32, "<i8": torch.int64}[dtype]
        return torch.empty(shape, dtype=torch_dtype, device=f"cuda:{device}")
    import cupy

    with cupy.cuda.Device(device):
        return cupy.empty(shape, dtype=np.dtype(dtype))


def _address(array) -> int:
    if type(array).__module__.split(".")[0] == "torch":
        return int(array.data_ptr())
    return int(array.__cuda_array_interface__["data"][0])


def _read_back(framework: str, scalars: list) -> list:
    """0-d device arrays of one framework and device as Python values, in one device->host copy (one sync)."""
    if framework == "torch":
        import torch

        return torch.stack(scalars).tolist()
    import cupy

    return cupy.stack(scalars).tolist()


def _non_finite(arrays: dict, framework: str) -> list[str]:
    """Names of the arrays holding NaN or Inf; one sync for all of them."""
    if framework == "torch":
        import torch

        flags = [torch.isfinite(arr.value).all() for arr in arrays.values()]
    else:
        import cupy

        flags = [cupy.isfinite(arr.value).all() for arr in arrays.values()]
    return [name for name, finite in zip(arrays, _read_back(framework, flags)) if not finite]


@dataclass(frozen=True)
class DeviceCodes:
    """Sign codes on the GPU: ``bits`` (n, Dk, 2, ceil(Dt/64)) uint64 and ``channel_mean`` (n, Dk) float32, both
    arrays of the input's framework. ``to_host()`` gives the `Codes` of the same values.

    Made by the CUDA pooling kernel, whose bits keep the layout's rules, so they are not scanned on the GPU; bits
    built by hand are checked when they come to the host (`to_host`)."""

    bits: object
    channel_mean: object
    Dt: int

    @property
    def Dk(self) -> int:
        return int(self.bits.shape[1])

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    def __getitem__(self, index) -> "DeviceCodes":
        """``codes[i]`` is the batch of item i alone (IndexError out of range); slices select as the framework does."""
        index = item_slice(index, len(self))
        return DeviceCodes(self.bits[index], self.channel_mean[index], self.Dt)

    def to_host(self):
        from crosslayer.codes import Codes

        return Codes(_to_numpy(self.bits), _to_numpy(self.channel_mean), self.Dt)


def _to_numpy(array) -> np.ndarray:
    if type(array).__module__.split(".")[0] == "torch":
        return array.cpu().numpy()
    return array.get()


# ---- operations ---------------------------------------------------------------------------------------------------

def pool_device(x_t, a_t1, pca=None, output: str = "float", return_channel_mean: bool = False,
                check_finite: bool = True):
    """`crosslayer.pool` on GPU arrays (same contract); x_t / a_t1 may be float32, bfloat16 or float16."""
    activations = ("<f4", "bfloat16", "<f2")
    arrays = {"x_t": view(x_t, "x_t", activations, ndim=4), "a_t1": view(a_t1, "a_t1", activations, ndim=4)}
    x, a = arrays["x_t"], arrays["a_t1"]
    if x.dtype != a.dtype:
        raise TypeError(f"a_t1: dtype {a.dtype} differs from x_t's {x.dtype}")
    check_layer_pair(x.shape, a.shape)
    n, dt_in, h, w = x.shape
    dt, mean_address, proj_address = dt_in, 0, 0
    if pca is not None:
        if not isinstance(pca, (tuple, list)) or len(pca) != 2:
            raise TypeError("pca: expected a (mean, projection) pair or None")
        arrays["pca[0] (mean)"] = mean = view(_float32(pca[0]), "pca[0] (mean)", ("<f4",), ndim=1)
        arrays["pca[1] (projection)"] = proj = view(_float32(pca[1]), "pca[1] (projection)", ("<f4",), ndim=2)
        if mean.shape[0] != dt_in:
            raise UsageError(f"pca[0] (mean): expected length {dt_in} (channels of x_t), got {mean.shape[0]}")
        if proj.shape[0] != dt_in or proj.shape[1] < 1:
            raise UsageError(f"pca[1] (projection): expected shape ({dt_in}, Dt) with Dt >= 1, got {proj.shape}")
        dt, mean_address, proj_address = proj.shape[1], mean.address, proj.address
    framework, device = same_device(arrays)
    if check_finite:
        bad = _non_finite(arrays, framework)
        if bad:
            raise UsageError(f"{', '.join(bad)}: contains NaN or Inf")
    dk = a.shape[1]
    stream = current_stream(framework, device)
    channel_mean = empty(framework, device, (n, dk), "<f4")
    codes = output == "codes"
    out_float = None if codes else empty(framework, device, (n, dk * dt), "<f4")
    out_bits = empty(framework, device, (n, dk, 2, (dt + 63) // 64), "<u8") if codes else None
    core.pool_cuda(
        x.address, a.address, n, dt_in, dk, h * w, dt, mean_address, proj_address, _INPUT_TYPES[x.dtype], codes,
        0 if codes else _address(out_float), _address(out_bits) if codes else 0, _address(channel_mean), stream, device,
    )
    if codes:
        return DeviceCodes(out_bits, channel_mean, int(dt))
    return (out_float, channel_mean) if return_channel_mean else out_float


def _code_matrix(bits, name: str, dt: int) -> DeviceArray:
    arr = view(bits, name, ("<u8",), ndim=4)
    if arr.shape[2] != 2 or arr.shape[3] != (dt + 63) // 64:
        raise UsageError(f"{name}: expected shape (n, Dk, 2, {(dt + 63) // 64}) for Dt={dt}, got {arr.shape}")
    return arr


def gram_device(a_bits, b_bits, dt: int):
    """(len(a), len(b)) int32 ternary dot products over all channels of two GPU code arrays."""
    a, b = _code_matrix(a_bits, "a", dt), _code_matrix(b_bits, "b", dt)
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"b: Dk={b.shape[1]} differs from a's Dk={a.shape[1]}")
    framework, device = same_device({"a": a, "b": b})
    out = empty(framework, device, (a.shape[0], b.shape[0]), "<i4")
    core.gram_cuda(a.address, a.shape[0], b.address, b.shape[0], a.shape[1], dt, _address(out),
                   current_stream(framework, device), device)
    return out


def as_float64(array):
    """A GPU array converted to float64 in its own framework."""
    if _framework(array) == "torch":
        import torch

        return array.to(torch.float64)
    return array.astype(np.float64)


def nonzero_counts_device(bits):
    """Nonzero values of each GPU code (popcount of its nonzero plane): (n,) int64 in the codes' framework."""
    framework = _framework(bits)
    if framework == "torch":
        import torch

        if bits.shape[0] == 0:  # an empty tensor's strides need not allow the byte view below
            return torch.zeros(0, dtype=torch.int64, device=bits.device)
        table = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64, device=bits.device)
        planes = bits[:, :, 0, :].contiguous().view(torch.uint8)
        return table[planes.long()].sum(dim=(1, 2))
    import cupy

    if bits.shape[0] == 0:
        return cupy.zeros(0, dtype=cupy.int64)
    table = cupy.asarray([bin(i).count("1") for i in range(256)], dtype=cupy.int64)
    planes = cupy.ascontiguousarray(bits[:, :, 0, :]).view(cupy.uint8)
    return table[planes].sum(axis=(1, 2))


def select_channels_device(channel_mean, channels: int):
    """`search.select_channels` on the GPU: per row the `channels` largest means (ties to the smaller index), in
    increasing index order, int32."""
    framework = _framework(channel_mean)
    if framework == "torch":
        import torch

        ranked = torch.sort(-channel_mean, dim=1, stable=True).indices[:, :channels]
        return torch.sort(ranked, dim=1).values.to(torch.int32).contiguous()
    import cupy

    ranked = cupy.argsort(-channel_mean, axis=1)[:, :channels]  # CuPy's sort is stable
    return cupy.ascontiguousarray(cupy.sort(ranked, axis=1).astype(cupy.int32))


def search_device(query_bits, database_bits, dt: int, channels, k: int, id_base: int = 0, existing=None):
    """Top-k (scores int32 (nq, k), ids int64 (nq, k)) of each query over `channels` (nq, n_channels) int32.

    `existing`: a previous segment's (scores, ids) with ids < id_base, merged into the ranking (they are not
    modified); then k may exceed the segment's size. Ties rank the smaller id first.
    """
    queries, database = _code_matrix(query_bits, "queries", dt), _code_matrix(database_bits, "database", dt)
    if queries.shape[1] != database.shape[1]:
        raise UsageError(f"database: Dk={database.shape[1]} differs from the queries' Dk={queries.shape[1]}")
    chans = view(channels, "channels", ("<i4",), ndim=2)
    nq, dk = queries.shape[0], queries.shape[1]
    if chans.shape[0] != nq or chans.shape[1] > dk:
        raise UsageError(f"channels: expected shape ({nq}, n_channels <= {dk}), got {chans.shape}")
    arrays = {"queries": queries, "database": database, "channels": chans}
    k = int(k)
    available = database.shape[0] + (k if existing is not None else 0)
    if k < 0 or k > available:
        raise UsageError(f"k: expected 0 <= k <= {available} (database items{' + merged' if existing else ''}), got {k}")
    framework, device = same_device(arrays)
    scores = empty(framework, device, (nq, k), "<i4")
    ids = empty(framework, device, (nq, k), "<i8")
    if existing is not None:
        prev_scores = view(existing[0], "existing[0] (scores)", ("<i4",), ndim=2)
        prev_ids = view(existing[1], "existing[1] (ids)", ("<i8",), ndim=2)
        if prev_scores.shape != (nq, k) or prev_ids.shape != (nq, k):
            raise UsageError(f"existing: expected (scores, ids) of shape ({nq}, {k})")
        same_device({**arrays, "existing[0] (scores)": prev_scores, "existing[1] (ids)": prev_ids})
        scores[...] = prev_scores.value
        ids[...] = prev_ids.value
    if chans.shape[1] and nq:
        low, high = _read_back(framework, [chans.value.min(), chans.value.max()])
        if low < 0 or high >= dk:
            raise UsageError(f"channels: expected channel indices in [0, {dk}), got values in [{low}, {high}]")
    core.search_cuda(queries.address, nq, database.address, database.shape[0], dk, dt, chans.address,
                     chans.shape[1], k, int(id_base), existing is not None, _address(scores), _address(ids),
                     current_stream(framework, device), device)
    return scores, ids
