"""`pool`: the cross-layer pooling operation, validated and dispatched to the compiled kernel; `finish_pooled`: its
last step alone, for pooled values computed elsewhere (OpenVINO's graph at bf16: `crosslayer.backbones.runtime`).
`sign_pack_path` / `set_sign_pack_path`: which implementation packs the codes' signs (every path gives the same bits;
tests and benchmarks force one)."""

from __future__ import annotations

import numpy as np

from crosslayer import _device
from crosslayer._native import core
from crosslayer._validate import as_float32_array, check_layer_pair, check_num_threads
from crosslayer.codes import Codes, words_per_plane
from crosslayer.compact import COMPACT, LAYOUTS, TWO_PLANE, compact_words_per_image
from crosslayer.errors import UsageError

OUTPUTS = ("float", "codes")


def sign_pack_path() -> str:
    """The sign packing path the CPU pooling's codes use ("avx512" or "portable")."""
    return core.sign_pack_path()


def sign_pack_paths() -> list[str]:
    """Sign packing paths this CPU supports, fastest first."""
    return list(core.sign_pack_paths())


def set_sign_pack_path(name: str) -> None:
    """Forces a sign packing path (process-wide; each pooling call reads it when it starts). ValueError naming the
    path when it is unknown or this CPU lacks it."""
    core.set_sign_pack_path(name)


def _check_output_layout(output, layout) -> None:
    if output not in OUTPUTS:
        raise UsageError(f"output: expected one of {OUTPUTS}, got {output!r}")
    if layout not in LAYOUTS:
        raise UsageError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if output == "float" and layout != TWO_PLANE:
        raise UsageError(f"layout: {layout!r} is a layout of codes; output='float' takes none (leave the default)")


def _code_bits(n: int, dk: int, dt: int, layout: str) -> np.ndarray:
    """The kernel's output buffer of `layout`; the binding tells the layouts apart by its number of axes."""
    if layout == COMPACT:
        return np.empty((n, compact_words_per_image(dk, dt)), dtype=np.uint64)
    return np.empty((n, dk, 2, words_per_plane(dt)), dtype=np.uint64)


def _check_pca(pca, dt_in: int, check_finite: bool):
    if pca is None:
        return None, None
    if not isinstance(pca, (tuple, list)) or len(pca) != 2:
        raise TypeError("pca: expected a (mean, projection) pair or None")
    mean = as_float32_array(pca[0], "pca[0] (mean)", ndim=1, check_finite=check_finite)
    proj = as_float32_array(pca[1], "pca[1] (projection)", ndim=2, check_finite=check_finite)
    if mean.shape[0] != dt_in:
        raise UsageError(f"pca[0] (mean): expected length {dt_in} (channels of x_t), got {mean.shape[0]}")
    if proj.shape[0] != dt_in or proj.shape[1] < 1:
        raise UsageError(f"pca[1] (projection): expected shape ({dt_in}, Dt) with Dt >= 1, got {proj.shape}")
    return mean, proj


def pool(x_t, a_t1, pca=None, output: str = "float", return_channel_mean: bool = False, num_threads: int = 0,
         check_finite: bool = True, layout: str = TWO_PLANE):
    """Cross-layer pooling of local features `x_t` guided by the next layer's activations `a_t1`.

    x_t:  (n, Dt_in, H, W) float32 — layer t, as onnxruntime returns it.
    a_t1: (n, Dk, H, W) float32 — layer t+1 at the same H, W.
    pca:  optional (mean (Dt_in,), projection (Dt_in, Dt)); the projection may reduce (Dt < Dt_in).
    output: "float" -> (n, Dk*Dt) float32, channel-major, per-channel L2 then signed square root;
            "codes" -> `Codes` (2-bit signs plus per-channel mean guidance activation).
    layout: of the codes, "two_plane" (the default) or "compact" (`Codes.compact(lossy=True)` of the same codes,
            packed by the kernel itself: a live bit per channel and one sign plane, an exact zero inside a live
            channel coded +1). output="float" takes the default only.
    return_channel_mean: with output="float", also return the (n, Dk) mean guidance activations.
    check_finite: reject NaN/Inf in x_t, a_t1 and pca with a ValueError (the default). False skips that pass over
            the inputs, on the GPU also its device->host synchronisation (one per call). On the CPU the kernel still
            raises a ValueError when a pooled value is not finite (NaN/Inf input, or |P| overflowing float32 from
            finite input); on the GPU such output is unspecified (never a crash).

    GPU arrays (torch CUDA tensors, CuPy arrays; float32, bfloat16 or float16 activations) run the CUDA kernel on
    the caller's current stream and return arrays of the same framework ("codes" -> `DeviceCodes`); the tensor
    cores compute in TF32, so values within TF32 rounding of zero may get another sign than on the CPU. The CUDA
    kernel writes 2-plane codes only (layout="compact" is a UsageError there: `DeviceCodes.to_host().compact()`).
    num_threads: CPU threads, 0 for the OpenMP default; at most 4 per CPU core (larger values are capped).
    """
    num_threads = check_num_threads(num_threads)
    _check_output_layout(output, layout)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite: expected a bool, got {type(check_finite).__name__}")
    check_finite = bool(check_finite)
    pca_parts = tuple(pca) if isinstance(pca, (tuple, list)) and len(pca) == 2 else (None, None)
    if _device.route("pool", x_t=x_t, a_t1=a_t1, **{"pca[0] (mean)": pca_parts[0], "pca[1] (projection)": pca_parts[1]}):
        if layout != TWO_PLANE:
            raise UsageError("layout: the CUDA kernel writes 2-plane codes only; pool with the default layout and "
                             "convert on the host (DeviceCodes.to_host().compact())")
        return _device.pool_device(x_t, a_t1, pca, output, return_channel_mean, check_finite=check_finite)
    x_t = as_float32_array(x_t, "x_t", ndim=4, check_finite=check_finite)
    a_t1 = as_float32_array(a_t1, "a_t1", ndim=4, check_finite=check_finite)
    check_layer_pair(x_t.shape, a_t1.shape)
    n, dt_in = x_t.shape[:2]
    mean, proj = _check_pca(pca, dt_in, check_finite)
    dk = a_t1.shape[1]
    dt = dt_in if proj is None else proj.shape[1]
    channel_mean = np.empty((n, dk), dtype=np.float32)
    if output == "float":
        out = np.empty((n, dk * dt), dtype=np.float32)
        core.pool_cpu(x_t, a_t1, mean, proj, out, None, channel_mean, num_threads)
        return (out, channel_mean) if return_channel_mean else out
    bits = _code_bits(n, dk, dt, layout)
    core.pool_cpu(x_t, a_t1, mean, proj, None, bits, channel_mean, num_threads)
    # the kernel keeps the layout's rules: padding zero, negative within nonzero (compact: dead channels unsigned)
    return Codes._from_valid_bits(bits, channel_mean, dt)


def finish_pooled(pooled, channel_mean=None, output: str = "float", num_threads: int = 0, check_finite: bool = True,
                  layout: str = TWO_PLANE):
    """The last step of `pool` on pooled values P computed elsewhere (e.g. inside a runtime's graph), by the same
    kernel: "float" -> (n, Dk*Dt) float32, per-channel L2 then signed square root; "codes" -> `Codes` of sign(P)
    in `layout` ("two_plane" or "compact", as in `pool`) with `channel_mean` (n, Dk) as their mean guidance
    activations (required for codes).

    pooled: (n, Dk, Dt) float32, P[b, k, :] = sum_i a_ik x'_i as `pool` defines it. check_finite: as in `pool`
    (the kernel reports non-finite pooled values as a ValueError either way)."""
    num_threads = check_num_threads(num_threads)
    _check_output_layout(output, layout)
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite: expected a bool, got {type(check_finite).__name__}")
    pooled = as_float32_array(pooled, "pooled", ndim=3, check_finite=bool(check_finite))
    n, dk, dt = pooled.shape
    if dk < 1 or dt < 1:
        raise UsageError(f"pooled: expected (n, Dk, Dt) with Dk, Dt >= 1, got shape {pooled.shape}")
    if output == "float":
        out = np.empty((n, dk * dt), dtype=np.float32)
        core.finish_pooled_cpu(pooled, out, None, num_threads)
        return out
    if channel_mean is None:
        raise UsageError("channel_mean: codes need the (n, Dk) mean guidance activations, got None")
    channel_mean = as_float32_array(channel_mean, "channel_mean", ndim=2, check_finite=bool(check_finite))
    if channel_mean.shape != (n, dk):
        raise UsageError(f"channel_mean: expected shape {(n, dk)} (n, Dk of pooled), got {channel_mean.shape}")
    bits = _code_bits(n, dk, dt, layout)
    core.finish_pooled_cpu(pooled, None, bits, num_threads)
    return Codes._from_valid_bits(bits, np.array(channel_mean), dt)
