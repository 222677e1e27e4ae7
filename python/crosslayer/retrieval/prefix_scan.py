"""The coarse stage's kernels: the masked prefix score of one query over a channel-major table, and the top-N
selection of its scores. Compiled with numba (the scan must run at memory speed: 50 channels x 1M items a query).

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
from crosslayer.errors import UsageError

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


_kernels = {}


def _compiled():
    if _kernels:
        return _kernels
    try:
        from numba import njit, types
        from numba.core.extending import intrinsic
    except ImportError:
        raise UsageError("candidates: two-stage search needs numba (pip install numba)") from None

    @intrinsic
    def popcount(typingctx, value):
        if not isinstance(value, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            function = builder.module.declare_intrinsic("llvm.ctpop", [args[0].type])
            return builder.call(function, [args[0]])
        return value(value), codegen

    @njit(nogil=True, cache=True)
    def accumulate(table, query_words, channels, b, top, out):
        """out[i] += the prefix score of item i over `channels` (the query's words for them in `query_words`);
        score arithmetic in out's type, so the loop vectorises at the word's width."""
        score = out.dtype.type
        word = table.dtype.type
        mask = word((1 << b) - 1)
        for s in range(channels.size):
            w = query_words[s]
            if (w >> top) == 0:  # a dead query channel compares as zero with everything
                continue
            column = table[channels[s]]
            for i in range(column.size):
                x = column[i]
                live = score(x >> top)
                out[i] += live * (score(b) - score(2) * score(popcount(word((x ^ w) & mask))))

    @njit(nogil=True, cache=True)
    def top_ids(scores, n, low, excluded):
        """The ids of the n largest scores, ties to the smaller id, none of those scored `excluded` (< low); fewer
        than n when fewer are not excluded. Scores lie in [low, -low]: a counting pass finds the cut."""
        high = -low
        counts = np.zeros(high - low + 1, np.int64)
        for v in scores:
            if v != excluded:
                counts[v - low] += 1
        taken, cut = 0, high - low
        while cut > 0 and taken + counts[cut] < n:
            taken += counts[cut]
            cut -= 1
        threshold = cut + low
        out = np.empty(min(n, scores.size), np.int64)
        k = 0
        for i in range(scores.size):
            if scores[i] > threshold and scores[i] != excluded:
                out[k] = i
                k += 1
        for i in range(scores.size):
            if k >= out.size:
                break
            if scores[i] == threshold and scores[i] != excluded:
                out[k] = i
                k += 1
        return out[:k]

    _kernels.update(accumulate=accumulate, top_ids=top_ids)
    return _kernels


def shortlist_one(tables, query_words: np.ndarray, channels: np.ndarray, b: int, n: int, deleted: np.ndarray,
                  total: int) -> np.ndarray:
    """(n,) int64 ids of the n items of best prefix score for one query (-1 pads), ties to the smaller id.
    tables: [(table (Dk, count), id_base)] covering ids 0..total-1 in order; deleted: ids never proposed."""
    kernels = _compiled()
    score = SCORE_TYPES[tables[0][0].dtype.itemsize * 8] if tables else np.int32
    scores = np.zeros(total, score)
    for table, base in tables:
        kernels["accumulate"](table, query_words, channels, b, table.dtype.itemsize * 8 - 1,
                              scores[base:base + table.shape[1]])
    low = -len(channels) * b
    excluded = low - 1
    if len(deleted):
        scores[deleted] = excluded
    found = kernels["top_ids"](scores, n, low - 1, excluded)
    out = np.full(n, -1, np.int64)
    out[:len(found)] = found
    return out
