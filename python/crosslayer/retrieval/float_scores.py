"""Cross-layer float (non-binarised) retrieval scores, for reference against the sign codes.

Score of query q and image x over the query's selected channels S: the cosine of the two representations restricted
to S, sum_{k in S} <P_qk, P_xk> / (||P_q,S|| ||P_x,S||). With S = all channels this is the dot product of the
L2-normalised whole representation (per-channel L2 + signed square root, then L2). Scores are computed batch by
batch against all queries, so a database of any size streams through without holding its 1.6 MB/image floats.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError


class FloatQueryScorer:
    """Holds the queries' float representations (nq, Dk*Dt) and their channel selections (S, nq, Dk)."""

    def __init__(self, query_reps: np.ndarray, dk: int, masks: np.ndarray):
        query_reps = np.asarray(query_reps, dtype=np.float32)
        nq = query_reps.shape[0]
        if query_reps.ndim != 2 or query_reps.shape[1] % dk:
            raise UsageError(f"query_reps: expected (n_queries, Dk*Dt) with Dk={dk}, got {query_reps.shape}")
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != (nq, dk):
            raise UsageError(f"masks: expected (settings, {nq}, {dk}), got {masks.shape}")
        self.dk, self.dt = dk, query_reps.shape[1] // dk
        per_channel = query_reps.reshape(nq, dk, self.dt)
        # (Dk, nq, Dt): one matmul per channel against the database batch
        self.queries = np.ascontiguousarray(per_channel.transpose(1, 0, 2))
        self.masks = masks.astype(np.float32)
        query_sq = np.einsum("qkd,qkd->qk", per_channel, per_channel, dtype=np.float64)
        self.query_norms = np.sqrt(np.einsum("sqk,qk->sq", self.masks, query_sq))

    @property
    def settings(self) -> int:
        return self.masks.shape[0]

    def score(self, reps: np.ndarray) -> np.ndarray:
        """(nq, n, settings) float32 cosine scores of a batch of database representations (n, Dk*Dt)."""
        reps = np.asarray(reps, dtype=np.float32)
        n = reps.shape[0]
        nq = self.queries.shape[1]
        out = np.zeros((nq, n, self.settings), np.float32)
        if n == 0:
            return out
        per_channel = reps.reshape(n, self.dk, self.dt)
        # a contiguous (Dk, Dt, n) operand keeps numpy on its BLAS path (a strided view is ~30x slower)
        dots = np.matmul(self.queries, np.ascontiguousarray(per_channel.transpose(1, 2, 0)))  # (Dk, nq, n)
        image_sq = np.einsum("nkd,nkd->nk", per_channel, per_channel, dtype=np.float64)
        for s in range(self.settings):
            numerator = np.einsum("kqn,qk->qn", dots, self.masks[s], dtype=np.float64)
            image_norms = np.sqrt(self.masks[s].astype(np.float64) @ image_sq.T)  # (nq, n)
            denominator = self.query_norms[s][:, None] * image_norms
            out[:, :, s] = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        return out
