"""Linear kernels (Gram matrices) of stored representations, computed blockwise so a data set's worth of float
features is never in memory at once: float16 rows are converted to float32 a block at a time and multiplied with
BLAS; sign codes use the exact popcount Gram of `crosslayer.gram`."""

from __future__ import annotations

import numpy as np

DEFAULT_BLOCK_BYTES = 512 << 20  # float32 bytes of one block of rows held in memory


def _block_rows(dim: int, block_bytes: int) -> int:
    return max(1, int(block_bytes // max(1, 4 * dim)))


def streaming_gram(rows, columns_index, block_bytes: int = DEFAULT_BLOCK_BYTES, progress=None) -> np.ndarray:
    """K[i, j] = <rows[i], rows[columns_index[j]]> for every stored row i, as float64 (n, len(columns_index)).

    rows: (n, dim) array or memmap of any float dtype (read a block at a time). Peak memory is about two blocks of
    `block_bytes` plus the result.
    """
    n = rows.shape[0]
    dim = int(np.prod(rows.shape[1:], dtype=np.int64))
    columns_index = np.asarray(columns_index, dtype=np.int64)
    out = np.zeros((n, len(columns_index)), np.float64)
    step = _block_rows(dim, block_bytes)
    total = -(-len(columns_index) // step) * -(-n // step) if n and len(columns_index) else 0
    done = 0
    for c0 in range(0, len(columns_index), step):
        cols = columns_index[c0 : c0 + step]
        column_block = np.asarray(rows[np.sort(cols)], dtype=np.float32).reshape(len(cols), dim)
        # rows[...] with a sorted index reads the memmap in order; undo the sort to keep columns_index's order
        column_block = column_block[np.argsort(np.argsort(cols))]
        for r0 in range(0, n, step):
            row_block = np.asarray(rows[r0 : r0 + step], dtype=np.float32).reshape(-1, dim)
            out[r0 : r0 + len(row_block), c0 : c0 + len(cols)] = row_block @ column_block.T
            done += 1
            if progress is not None:
                progress(done, total)
    return out


def codes_gram(bits, dt: int, columns_index) -> np.ndarray:
    """Exact ternary dot products of sign codes, (n, len(columns_index)) as float64, via `crosslayer.gram`.

    bits: (n, Dk, 2, words) uint64 (a memmap is fine).
    """
    import crosslayer
    from crosslayer.codes import Codes

    bits = np.ascontiguousarray(bits)
    columns_index = np.asarray(columns_index, dtype=np.int64)
    means = np.zeros(bits.shape[:2], np.float32)  # the Gram does not use guidance means
    every = Codes(bits, means, dt)
    chosen = every[columns_index]  # rows of checked codes: no second scan of the bits
    return np.asarray(crosslayer.gram(every, chosen), dtype=np.float64)
