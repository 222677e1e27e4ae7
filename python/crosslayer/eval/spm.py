"""Direct pooling of one conv layer over a spatial pyramid: sum pooling (signed square root, then L2) and max
pooling (then L2). Level l splits the map into 2^l x 2^l cells; the cells' pooled vectors are concatenated."""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError
from crosslayer.l2 import l2_normalize

POOLINGS = ("sum", "max")


def cell_edges(size: int, cells: int) -> np.ndarray:
    """Boundaries of `cells` near-equal cells along an axis of `size` positions (each cell non-empty if possible)."""
    return np.floor(np.arange(cells + 1) * size / cells + 0.5).astype(np.int64)


def spm_dim(channels: int, levels) -> int:
    return channels * sum(4**level for level in levels)


def spm_pool(maps: np.ndarray, levels=(0, 1, 2), pooling: str = "sum") -> np.ndarray:
    """(n, C, H, W) -> (n, C * sum_l 4^l) float32, cells in row-major order per level, channels inside a cell.

    sum: cell sums, then signed square root, then L2 over the whole vector; max: cell maxima, then L2.
    An empty cell (map smaller than the grid) pools to zeros.
    """
    if pooling not in POOLINGS:
        raise UsageError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4:
        raise UsageError(f"maps: expected (n, C, H, W), got shape {maps.shape}")
    levels = tuple(int(level) for level in levels)
    if not levels or any(level < 0 for level in levels):
        raise UsageError(f"levels: expected non-negative pyramid levels, got {levels}")
    n, c, h, w = maps.shape
    parts = []
    for level in levels:
        cells = 2**level
        rows, cols = cell_edges(h, cells), cell_edges(w, cells)
        for r in range(cells):
            for q in range(cells):
                block = maps[:, :, rows[r] : rows[r + 1], cols[q] : cols[q + 1]]
                if block.size == 0:
                    parts.append(np.zeros((n, c), np.float32))
                elif pooling == "sum":
                    parts.append(block.sum(axis=(2, 3), dtype=np.float64).astype(np.float32))
                else:
                    parts.append(block.max(axis=(2, 3)))
    out = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)
    if pooling == "sum":
        out = np.sign(out) * np.sqrt(np.abs(out))
    return l2_normalize(out.astype(np.float32, copy=False))


def spm_level_slice(rows: np.ndarray, channels, stored_levels, wanted_levels) -> np.ndarray:
    """The rows `spm_pool` gives at `wanted_levels`, from rows it gave at `stored_levels` (sum or max alike): each
    level is a contiguous block, the signed square root is elementwise and the L2 a scale of the whole vector, so a
    level subset is its blocks re-normalised. `channels`: the channel count of each pooled layer, in row order (rows
    of several layers are unit vectors concatenated and scaled by 1/sqrt(layers), as `encode_main` stores them)."""
    rows = np.asarray(rows, dtype=np.float32)
    channels = [int(c) for c in channels]
    stored, wanted = tuple(int(v) for v in stored_levels), tuple(int(v) for v in wanted_levels)
    missing = sorted(set(wanted) - set(stored))
    if not wanted or missing or len(set(wanted)) != len(wanted):
        raise UsageError(f"wanted_levels: expected distinct levels among the stored {stored}, got {wanted}")
    width = sum(spm_dim(c, stored) for c in channels)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise UsageError(f"rows: expected (n, {width}) rows of levels {stored} over channels {channels}, got shape {rows.shape}")
    parts, offset = [], 0
    for c in channels:
        starts = dict(zip(stored, offset + np.cumsum([0] + [c * 4**level for level in stored[:-1]])))
        blocks = [rows[:, starts[level] : starts[level] + c * 4**level] for level in wanted]
        parts.append(l2_normalize(np.concatenate(blocks, axis=1)))
        offset += spm_dim(c, stored)
    return np.concatenate(parts, axis=1) / np.float32(np.sqrt(len(parts)))
