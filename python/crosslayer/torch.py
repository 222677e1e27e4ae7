"""Cross-layer pooling as PyTorch operators: ``torch.ops.crosslayer.pool_codes`` and ``torch.ops.crosslayer.pool_float``.

Registered with `torch.library.custom_op` (the compiled core does not link libtorch), each with a fake (meta)
implementation, so the pooling works inside ``torch.compile(fullgraph=True)`` graphs. CPU tensors run the CPU
kernel (`crosslayer.pool` on numpy views, no copy for contiguous float32); CUDA tensors the CUDA kernel on the
current stream (`crosslayer.pool`'s device route). Not differentiable: the codes are signs, and the float
representation is used as a fixed feature.

    import crosslayer.torch as xlt
    bits, channel_mean = xlt.pool_codes(local, guidance, pca_mean, pca_projection)  # Codes.bits layout, uint64
    representation = xlt.pool_float(local, guidance)                              # (n, Dk*Dt) float32
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from crosslayer.errors import UsageError
from crosslayer.pooling import pool

__all__ = ["pool_codes", "pool_float"]


def _pca(pca_mean: Optional[Tensor], pca_projection: Optional[Tensor]):
    if (pca_mean is None) != (pca_projection is None):
        raise UsageError("pca_mean, pca_projection: expected both tensors or both None")
    return None if pca_mean is None else (pca_mean, pca_projection)


def _host(tensor: Optional[Tensor]):
    return None if tensor is None else tensor.detach().numpy()


def _run(local, guidance, pca_mean, pca_projection, output: str):
    pca = _pca(pca_mean, pca_projection)
    if local.is_cuda or guidance.is_cuda:
        return pool(local, guidance, pca, output=output, return_channel_mean=output == "float")
    if local.dtype != torch.float32 or guidance.dtype != torch.float32:
        raise UsageError(f"local, guidance: expected float32 CPU tensors (bfloat16/float16 only on CUDA), got "
                         f"{local.dtype} and {guidance.dtype}")
    host_pca = None if pca is None else (_host(pca[0]), _host(pca[1]))
    return pool(_host(local), _host(guidance), host_pca, output=output, return_channel_mean=output == "float")


def _as_tensor(array, like: Tensor) -> Tensor:
    return array if isinstance(array, Tensor) else torch.from_numpy(np.ascontiguousarray(array)).to(like.device)


@torch.library.custom_op("crosslayer::pool_codes", mutates_args=())
def pool_codes(local: Tensor, guidance: Tensor, pca_mean: Optional[Tensor] = None,
               pca_projection: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Sign codes of the cross-layer pooling of `local` (n, Dt_in, H, W) guided by `guidance` (n, Dk, H, W), with
    the optional PCA (mean (Dt_in,), projection (Dt_in, Dt)). Returns (bits (n, Dk, 2, ceil(Dt/64)) uint64 in the
    `crosslayer.Codes` layout, channel_mean (n, Dk) float32): ``crosslayer.pool(..., output="codes")``."""
    codes = _run(local, guidance, pca_mean, pca_projection, "codes")
    return _as_tensor(codes.bits, local), _as_tensor(codes.channel_mean, local)


@torch.library.custom_op("crosslayer::pool_float", mutates_args=())
def pool_float(local: Tensor, guidance: Tensor, pca_mean: Optional[Tensor] = None,
               pca_projection: Optional[Tensor] = None) -> Tensor:
    """The float representation (n, Dk*Dt) float32, channel-major, per-channel L2 then signed square root:
    ``crosslayer.pool(..., output="float")``."""
    representation, _ = _run(local, guidance, pca_mean, pca_projection, "float")
    return _as_tensor(representation, local)


def _output_dims(local: Tensor, guidance: Tensor, pca_projection: Optional[Tensor]):
    dt = local.shape[1] if pca_projection is None else pca_projection.shape[1]
    return local.shape[0], guidance.shape[1], dt


@pool_codes.register_fake
def _pool_codes_fake(local, guidance, pca_mean=None, pca_projection=None):
    n, dk, dt = _output_dims(local, guidance, pca_projection)
    bits = local.new_empty((n, dk, 2, (dt + 63) // 64), dtype=torch.uint64)
    return bits, local.new_empty((n, dk), dtype=torch.float32)


@pool_float.register_fake
def _pool_float_fake(local, guidance, pca_mean=None, pca_projection=None):
    n, dk, dt = _output_dims(local, guidance, pca_projection)
    return local.new_empty((n, dk * dt), dtype=torch.float32)
