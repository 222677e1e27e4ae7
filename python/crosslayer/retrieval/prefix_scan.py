"""The coarse stage's kernels: the masked prefix score of one query over a channel-major table, and the top-N
selection of its scores, both in the native core (crosslayer/prefix_scan.h: the scan runs at memory speed, 50
channels x 1M items a query, vectorised at the table word's width).

Table layout (`prefix_table`): per guidance channel, one unsigned word per item (uint16 or uint32): bits 0..b-1 are
the signs (1 = negative) of the item's first b code components in that channel, the top bit says whether the channel
is live (nonzero); b = min(word bits - 1, Dt). The prefix score of query q and item x is

    sum over q's selected channels c, live in both, of  b - 2 * popcount(sign_q[c] XOR sign_x[c])  (first b bits)

which for codes whose channels are all-nonzero or all-zero (every code the encoders make: a pooled channel is zero
only where its guidance channel is zero everywhere) is exactly the masked score of the codes cut to their first b PCA
components. `crosslayer.reference.prefix_scores_reference` is its definition in numpy.
"""

from __future__ import annotations

import numpy as np

from crosslayer import compact as _compact
from crosslayer import _core

WORD_TYPES = {16: np.uint16, 32: np.uint32, 64: np.uint64}
SCORE_TYPES = {16: np.int16, 32: np.int32, 64: np.int32}  # |score| <= channels * b: 1280 * 15 fits int16


def prefix_bits(word_bits: int, dt: int) -> int:
    """b: the code components a table word holds."""
    return min(word_bits - 1, dt)


def prefix_table(bits: np.ndarray, word_bits: int, dk: int, dt: int) -> np.ndarray:
    """(Dk, n) channel-major table (the layout of the module docstring) of codes `bits`: 2-plane (n, Dk, 2, words)
    or compact (n, compact words)."""
    b = prefix_bits(word_bits, dt)
    word = WORD_TYPES[word_bits]
    if bits.ndim == 2:  # compact: live bits, then each channel's sign words
        live = _compact.live_mask(bits, dk)
        first = _compact.sign_planes(bits, dk, dt)[:, :, 0]
    else:
        live = (np.asarray(bits[:, :, 0, :]) != 0).any(axis=-1)
        first = np.asarray(bits[:, :, 1, 0])
    signs = (first & np.uint64((1 << b) - 1)).astype(word)
    table = signs | (live.astype(word) << word(word_bits - 1))
    return np.ascontiguousarray(table.T)


def shortlist_one(tables, query_words: np.ndarray, channels: np.ndarray, b: int, n: int, deleted: np.ndarray,
                  total: int, threads: int = 0) -> np.ndarray:
    """(n,) int64 ids of the n items of best prefix score for one query, by decreasing score, ties to the smaller
    id (-1 pads).
    tables: [(table (Dk, count), id_base)] covering ids 0..total-1 in order; deleted: ids never proposed."""
    score = SCORE_TYPES[tables[0][0].dtype.itemsize * 8] if tables else np.int32
    scores = np.zeros(total, score)
    words = np.ascontiguousarray(query_words, dtype=np.uint64)
    chosen = np.ascontiguousarray(channels, dtype=np.int32)
    for table, base in tables:
        _core.prefix_scores(np.ascontiguousarray(table), words, chosen, b, scores[base:base + table.shape[1]],
                            threads)
    low = -len(channels) * b
    excluded = low - 1
    if len(deleted):
        scores[deleted] = excluded
    found = _core.top_scores(scores, n, low, excluded)
    out = np.full(n, -1, np.int64)
    out[:len(found)] = found
    return out
