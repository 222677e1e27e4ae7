"""Popcount similarity on sign codes: the Gram matrix (linear kernel for an SVM on a precomputed kernel) and the
masked top-k search of the paper (eq. 3: per query, only its `channels` guidance channels of largest mean activation
are compared). Kernels: csrc/cpu/gram_cpu.cpp, csrc/cpu/search_cpu.cpp; contract in csrc/include/crosslayer/search.h.
Both code layouts (2-plane and compact) are scored directly, with the same integers; operands of two layouts are
compared in the layout of the first (codes_a, the database).
"""

from __future__ import annotations

import os

import numpy as np

from crosslayer import _device
from crosslayer._native import core as _core
from crosslayer._validate import check_num_threads, check_positive_int
from crosslayer import compact as _compact
from crosslayer.codes import Codes, common_identity
from crosslayer.errors import UsageError

POPCOUNT_ENV = "CROSSLAYER_POPCOUNT"


def popcount_paths() -> list[str]:
    """Popcount implementations this CPU supports, fastest first."""
    return list(_core.popcount_paths())


def popcount_path() -> str:
    return _core.popcount_path()


def set_popcount_path(name: str) -> None:
    """Forces a popcount implementation (for tests and benchmarks); ValueError when unknown or unsupported here."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _core.set_popcount_path(name)


if os.environ.get(POPCOUNT_ENV):
    try:
        set_popcount_path(os.environ[POPCOUNT_ENV])
    except ValueError as exc:
        raise ImportError(f"{POPCOUNT_ENV}={os.environ[POPCOUNT_ENV]!r}: {exc}") from exc


def _check_codes(value, name: str) -> Codes:
    if not isinstance(value, Codes):
        raise TypeError(f"{name}: expected crosslayer.Codes, got {type(value).__name__}")
    return value


def _check_same_layout(a: Codes, b: Codes, name_a: str, name_b: str) -> None:
    """Same shape and, where both are known, the same encoder identity (IdentityMismatchError naming both)."""
    if (a.Dk, a.Dt) != (b.Dk, b.Dt):
        raise UsageError(f"{name_b}: Dk={b.Dk}, Dt={b.Dt} differs from {name_a} (Dk={a.Dk}, Dt={a.Dt})")
    common_identity({name_a: getattr(a, "identity", None), name_b: getattr(b, "identity", None)})


def nonzero_counts(codes: Codes) -> np.ndarray:
    """Number of nonzero values of each code (n,) int64: the squared norm of its ternary vector."""
    if codes.is_compact:
        return _compact.nonzero_counts(codes.bits, codes.Dk, codes.Dt)
    nonzero_plane = codes.bits[:, :, 0, :]
    # summed over both axes, not reshaped to (n, -1): that reshape is ambiguous for n = 0 and raises
    return np.bitwise_count(nonzero_plane).sum(axis=(1, 2), dtype=np.int64)


def masked_nonzero_counts(bits: np.ndarray, selection: np.ndarray, dk: int | None = None,
                          dt: int | None = None) -> np.ndarray:
    """Per row, the nonzero values of code `bits[i]` (n, Dk, 2, words; or compact (n, words) with its `dk`, `dt`)
    over its channels `selection[i]` (n, c): (n,) int64, the squared norm of the ternary vector a masked search
    compares."""
    if np.ndim(bits) == 2:
        return _compact.masked_nonzero_counts(bits, dk, dt, selection)
    rows = np.arange(len(bits))[:, None]
    return np.bitwise_count(np.asarray(bits)[rows, selection, 0, :]).sum(axis=(1, 2), dtype=np.int64)


def gram(codes_a: Codes, codes_b: Codes | None = None, normalize: bool = False, num_threads: int = 0) -> np.ndarray:
    """Exact ternary dot products of every pair: (len(a), len(b)) int32; ``codes_b=None`` means gram(a, a).

    With ``normalize=True`` each entry is divided by sqrt(nnz_a * nnz_b) (cosine of the ternary vectors; 0 where a
    code is all zero) and the result is float64. Feed it to ``sklearn.svm.SVC(kernel="precomputed")``.
    num_threads: CPU threads, 0 for the OpenMP default; at most 4 per CPU core (larger values are capped).
    """
    num_threads = check_num_threads(num_threads)
    if _device.route("gram", codes_a=codes_a, codes_b=codes_b):
        return _gram_on_device(codes_a, codes_b, normalize)
    codes_a = _check_codes(codes_a, "codes_a")
    if codes_b is not None:
        codes_b = _check_codes(codes_b, "codes_b")
        _check_same_layout(codes_a, codes_b, "codes_a", "codes_b")
        codes_b = codes_b.to_layout(codes_a.layout)
    out = np.empty((len(codes_a), len(codes_a) if codes_b is None else len(codes_b)), np.int32)
    _core.gram_cpu(codes_a.bits, None if codes_b is None else codes_b.bits, codes_a.Dt, out, num_threads, codes_a.Dk)
    if not normalize:
        return out
    norm_a = np.sqrt(nonzero_counts(codes_a).astype(np.float64))
    norm_b = norm_a if codes_b is None else np.sqrt(nonzero_counts(codes_b).astype(np.float64))
    scale = np.outer(norm_a, norm_b)
    return np.divide(out, scale, out=np.zeros(out.shape, np.float64), where=scale > 0)


def _check_device_codes(value, name: str):
    if value is not None and not isinstance(value, _device.DeviceCodes):
        raise TypeError(f"{name}: expected crosslayer.Codes or crosslayer.DeviceCodes, got {type(value).__name__}")
    return value


def _gram_on_device(codes_a, codes_b, normalize: bool):
    _check_device_codes(codes_a, "codes_a"), _check_device_codes(codes_b, "codes_b")
    other = codes_a if codes_b is None else codes_b
    _check_same_layout(codes_a, other, "codes_a", "codes_b")
    out = _device.gram_device(codes_a.bits, other.bits, codes_a.Dt)
    if not normalize:
        return out
    # float64 like the host path (an int32 / float32 division would round to float32)
    norm_a = _device.as_float64(_device.nonzero_counts_device(codes_a.bits)) ** 0.5
    norm_b = norm_a if codes_b is None else _device.as_float64(_device.nonzero_counts_device(codes_b.bits)) ** 0.5
    scale = norm_a[:, None] * norm_b[None, :]
    result = _device.as_float64(out) / scale
    result[scale == 0] = 0
    return result


def select_channels(channel_mean: np.ndarray, channels: int) -> np.ndarray:
    """Per row, the `channels` channel indices of largest mean (ties to the smaller index), in increasing order:
    (n, channels) int32. Increasing order makes the kernel walk each database code forwards."""
    means = np.asarray(channel_mean, dtype=np.float32)
    # A stable sort of the negated means puts equal means in index order.
    ranked = np.argsort(-means, axis=1, kind="stable")[:, :channels]
    return np.ascontiguousarray(np.sort(ranked, axis=1), dtype=np.int32)


def check_search_args(queries: Codes, k, channels, dk: int) -> tuple[int, int]:
    """Validates k and channels against a database of `dk` channels; returns (k, channels) as ints."""
    k = check_positive_int(k, "k")
    if channels is None:
        return k, dk
    channels = check_positive_int(channels, "channels")
    if channels > dk:
        raise UsageError(f"channels: expected at most Dk={dk} guidance channels, got {channels}")
    return k, channels


def search_segments(queries: Codes, segments, k, channels=50, num_threads: int = 0):
    """Top-k over database segments [(bits, id_base), ...] merged as one database; the bits of every segment are in
    the queries' layout ((n, Dk, 2, words) or compact (n, words)).

    Returns (scores (nq, min(k, total)) int32, ids (nq, min(k, total)) int64)."""
    num_threads = check_num_threads(num_threads)
    segments = [(bits, int(base)) for bits, base in segments if len(bits)]
    total = sum(len(bits) for bits, _ in segments)
    k, channels = check_search_args(queries, k, channels, queries.Dk)
    keep = min(k, total)
    nq = len(queries)
    if keep == 0 or nq == 0:
        return np.zeros((nq, keep), np.int32), np.zeros((nq, keep), np.int64)
    if np.ndim(segments[0][0]) != queries.bits.ndim:  # the database's layout decides (2-D bits: compact)
        queries = queries.to_layout(_compact.COMPACT if np.ndim(segments[0][0]) == 2 else _compact.TWO_PLANE)
    selection = select_channels(queries.channel_mean, channels)
    # Sentinel entries rank after every real hit (lowest score, largest id), so every segment can merge.
    scores = np.full((nq, keep), np.iinfo(np.int32).min, np.int32)
    ids = np.full((nq, keep), np.iinfo(np.int64).max, np.int64)
    for bits, id_base in segments:
        _core.search_cpu(queries.bits, bits, queries.Dt, selection, keep, id_base, True, scores, ids, num_threads,
                         queries.Dk)
    return scores, ids


def search(queries: Codes, database: Codes, k: int = 10, channels: int | None = 50, num_threads: int = 0):
    """Masked top-k search of `queries` in `database` (ids are positions in `database`).

    Per query only its `channels` guidance channels of largest mean activation (``Codes.channel_mean``; ties to the
    smaller channel) are compared; ``channels=None`` compares all. Scores are exact ternary dot products.
    Returns (scores (nq, min(k, len(database))) int32 by decreasing score, ids int64; ties to the smaller id).
    GPU codes (`pool` of torch/CuPy arrays with output="codes") are searched on the GPU, results in their framework.
    num_threads: CPU threads, 0 for the OpenMP default; at most 4 per CPU core (larger values are capped).
    """
    num_threads = check_num_threads(num_threads)
    if _device.route("search", queries=queries, database=database):
        return _search_on_device(queries, database, k, channels)
    queries = _check_codes(queries, "queries")
    database = _check_codes(database, "database")
    _check_same_layout(queries, database, "queries", "database")
    return search_segments(queries.to_layout(database.layout), [(database.bits, 0)], k, channels, num_threads)


def _search_on_device(queries, database, k, channels):
    _check_device_codes(queries, "queries"), _check_device_codes(database, "database")
    _check_same_layout(queries, database, "queries", "database")
    k, channels = check_search_args(queries, k, channels, queries.Dk)
    selection = _device.select_channels_device(queries.channel_mean, channels)
    return _device.search_device(queries.bits, database.bits, queries.Dt, selection, min(k, len(database)))
