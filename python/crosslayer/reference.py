"""Clear, slow numpy reference of every kernel. Tests compare the compiled kernels against these functions.

Everything is computed in float64 unless a function says otherwise. Shapes follow the kernels' contracts
(csrc/include/crosslayer/*.h):

    local      (n, Dt_in, H, W)   layer t activations
    guidance   (n, Dk, H, W)      layer t+1 activations
    P          (n, Dk, Dt)        cross-layer pooled representation, before normalisation
    bits       (n, Dk, 2, ceil(Dt/64)) uint64: plane 0 = nonzero, plane 1 = negative, little-endian bits
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


# ---- PCA on local features -------------------------------------------------------------------------------------

def local_features(local: np.ndarray) -> np.ndarray:
    """(n, Dt, H, W) -> (n*H*W, Dt): one row per spatial position."""
    n, dt = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    return np.asarray(local, dtype=np.float64).reshape(n, dt, positions).transpose(0, 2, 1).reshape(-1, dt)


def pca_fit(features: np.ndarray, n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decorrelating PCA: returns (mean (Dt,), projection (Dt, n_components)), components by decreasing variance.

    Without n_components the projection is a full rotation (decorrelation without reduction, as the paper does for
    OConv layers). Each component's sign is fixed so its largest-magnitude coefficient is positive (deterministic).
    """
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / max(len(x) - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvecs = eigvecs[:, order]
    k = x.shape[1] if n_components is None else n_components
    proj = eigvecs[:, :k]
    flip = np.sign(proj[np.abs(proj).argmax(axis=0), np.arange(k)])
    flip[flip == 0] = 1
    return mean, proj * flip


def pca_apply(features: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(M, Dt_in) -> (M, Dt): centre, then project."""
    return (np.asarray(features, dtype=np.float64) - mean) @ np.asarray(projection, dtype=np.float64)


# ---- cross-layer pooling -----------------------------------------------------------------------------------------

def cross_layer_pool(local: np.ndarray, guidance: np.ndarray, pca: tuple | None = None) -> np.ndarray:
    """P[b, k] = sum_i guidance[b, k, i] * x'_i, with x'_i the (PCA-applied) local feature at position i.

    Returns (n, Dk, Dt) float64.
    """
    local = np.asarray(local, dtype=np.float64)
    guidance = np.asarray(guidance, dtype=np.float64)
    n, dt_in = local.shape[:2]
    dk = guidance.shape[1]
    positions = int(np.prod(local.shape[2:]))
    x = local.reshape(n, dt_in, positions).transpose(0, 2, 1)  # (n, positions, Dt_in)
    if pca is not None:
        mean, proj = pca
        x = (x - np.asarray(mean, dtype=np.float64)) @ np.asarray(proj, dtype=np.float64)
    a = guidance.reshape(n, dk, positions)
    return np.einsum("bki,bij->bkj", a, x)


def cross_layer_max_pool(local: np.ndarray, guidance: np.ndarray, pca: tuple | None = None) -> np.ndarray:
    """P[b, k, j] = max_i guidance[b, k, i] * x'_ij: max instead of sum over positions. (n, Dk, Dt) float64."""
    local = np.asarray(local, dtype=np.float64)
    guidance = np.asarray(guidance, dtype=np.float64)
    n, dt_in = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    x = local.reshape(n, dt_in, positions).transpose(0, 2, 1)
    if pca is not None:
        x = (x - np.asarray(pca[0], dtype=np.float64)) @ np.asarray(pca[1], dtype=np.float64)
    a = guidance.reshape(n, guidance.shape[1], positions)
    return (a[:, :, :, None] * x[:, None, :, :]).max(axis=2)


def channel_mean(guidance: np.ndarray) -> np.ndarray:
    """Mean guidance activation of every channel over the spatial positions: (n, Dk)."""
    g = np.asarray(guidance, dtype=np.float64)
    return g.reshape(g.shape[0], g.shape[1], int(np.prod(g.shape[2:]))).mean(axis=2)


def l2_normalize_channels(pooled: np.ndarray) -> np.ndarray:
    """Each P[b, k] scaled to unit L2 norm; an all-zero channel stays zero."""
    norms = np.linalg.norm(pooled, axis=-1, keepdims=True)
    return np.divide(pooled, norms, out=np.zeros_like(pooled), where=norms > 0)


def signed_sqrt(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.sqrt(np.abs(values))


def representation(local, guidance, pca=None) -> np.ndarray:
    """The float representation (n, Dk*Dt), channel-major: pooled, per-channel L2, then signed square root."""
    return representation_from_pooled(cross_layer_pool(local, guidance, pca))


def representation_from_pooled(pooled: np.ndarray) -> np.ndarray:
    """The float representation (n, Dk*Dt) of pooled values P (n, Dk, Dt): per-channel L2, then signed square root."""
    out = signed_sqrt(l2_normalize_channels(np.asarray(pooled, dtype=np.float64)))
    return out.reshape(out.shape[0], out.shape[1] * out.shape[2])


# ---- sign codes -------------------------------------------------------------------------------------------------

def sign_quantize(values: np.ndarray) -> np.ndarray:
    """sign(P) in {-1, 0, +1} as int8."""
    return np.sign(values).astype(np.int8)


def words_per_plane(dt: int) -> int:
    return (dt + WORD_BITS - 1) // WORD_BITS


def pack_ternary(signs: np.ndarray) -> np.ndarray:
    """(..., Dt) ternary int8 -> (..., 2, ceil(Dt/64)) uint64 bit-planes (nonzero, negative); padding bits zero."""
    signs = np.asarray(signs)
    dt = signs.shape[-1]
    words = words_per_plane(dt)
    padded = np.zeros(signs.shape[:-1] + (words * WORD_BITS,), dtype=np.int8)
    padded[..., :dt] = signs
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=np.uint64))
    planes = []
    for plane in (padded != 0, padded < 0):
        grouped = plane.reshape(plane.shape[:-1] + (words, WORD_BITS)).astype(np.uint64)
        planes.append((grouped * weights).sum(axis=-1, dtype=np.uint64))
    return np.stack(planes, axis=-2)


def unpack_ternary(bits: np.ndarray, dt: int) -> np.ndarray:
    """Inverse of pack_ternary: (..., 2, words) uint64 -> (..., Dt) int8."""
    bits = np.asarray(bits, dtype=np.uint64)
    shifts = np.arange(WORD_BITS, dtype=np.uint64)
    expanded = (bits[..., None] >> shifts) & np.uint64(1)  # (..., 2, words, 64)
    flat = expanded.reshape(bits.shape[:-2] + (2, bits.shape[-1] * WORD_BITS))[..., :dt].astype(np.int8)
    nonzero, negative = flat[..., 0, :], flat[..., 1, :]
    return nonzero * (1 - 2 * negative)


def encode_codes(local, guidance, pca=None) -> np.ndarray:
    """Packed sign codes (n, Dk, 2, words) of the pooled representation (normalisation does not change signs)."""
    return pack_ternary(sign_quantize(cross_layer_pool(local, guidance, pca)))


def ternary_dot(bits_q: np.ndarray, bits_x: np.ndarray, dt: int, channels=None) -> int:
    """Dot product of two single-image codes (Dk, 2, words) over `channels` (all when None)."""
    q = unpack_ternary(bits_q, dt).astype(np.int64)
    x = unpack_ternary(bits_x, dt).astype(np.int64)
    if channels is not None:
        q, x = q[list(channels)], x[list(channels)]
    return int((q * x).sum())


# ---- compact sign codes (csrc/include/crosslayer/compact_codes.h) ------------------------------------------------

def _pack_bits(flags: np.ndarray) -> np.ndarray:
    """(..., m) bool -> (..., ceil(m/64)) uint64, bit j of word j // 64 at position j % 64, padding zero."""
    m = flags.shape[-1]
    words = words_per_plane(m)
    padded = np.zeros(flags.shape[:-1] + (words * WORD_BITS,), dtype=np.uint64)
    padded[..., :m] = flags
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=np.uint64))
    return (padded.reshape(flags.shape[:-1] + (words, WORD_BITS)) * weights).sum(axis=-1, dtype=np.uint64)


def _unpack_bits(words: np.ndarray, m: int) -> np.ndarray:
    """Inverse of _pack_bits: (..., ceil(m/64)) uint64 -> (..., m) bool."""
    shifts = np.arange(WORD_BITS, dtype=np.uint64)
    bits = (np.asarray(words, np.uint64)[..., None] >> shifts) & np.uint64(1)
    return bits.reshape(words.shape[:-1] + (words.shape[-1] * WORD_BITS,))[..., :m].astype(bool)


def pack_compact(pooled: np.ndarray) -> np.ndarray:
    """Pooled values (n, Dk, Dt) -> compact codes (n, ceil(Dk/64) + Dk*ceil(Dt/64)) uint64: a channel is live when
    any value is nonzero; in a live channel a value's sign bit is set when it is negative (an exact zero is +1)."""
    pooled = np.asarray(pooled)
    n, dk, dt = pooled.shape
    live = (pooled != 0).any(axis=2)
    sign = _pack_bits((pooled < 0) & live[:, :, None])
    return np.concatenate([_pack_bits(live), sign.reshape(n, dk * words_per_plane(dt))], axis=1)


def unpack_compact(bits: np.ndarray, dk: int, dt: int) -> np.ndarray:
    """Compact codes (n, words) -> ternary values (n, Dk, Dt) int8: +-1 in live channels, 0 in dead ones."""
    bits = np.asarray(bits, np.uint64)
    n = len(bits)
    live_w = words_per_plane(dk)
    live = _unpack_bits(bits[:, :live_w], dk)
    negative = _unpack_bits(bits[:, live_w:].reshape(n, dk, words_per_plane(dt)), dt)
    return (live[:, :, None] * (1 - 2 * negative.astype(np.int8))).astype(np.int8)


def compact_from_ternary(signs: np.ndarray) -> np.ndarray:
    """Ternary values (n, Dk, Dt) -> compact codes, a channel live when any value is nonzero (zeros -> +1)."""
    return pack_compact(np.asarray(signs, np.float32))


def compact_gram_reference(bits_a: np.ndarray, bits_b: np.ndarray, dk: int, dt: int) -> np.ndarray:
    """All-pairs ternary dot products of compact codes over every channel: (len(a), len(b)) int64."""
    a = unpack_compact(bits_a, dk, dt).reshape(len(bits_a), dk * dt).astype(np.int64)
    b = unpack_compact(bits_b, dk, dt).reshape(len(bits_b), dk * dt).astype(np.int64)
    return a @ b.T


def compact_search_reference(query_bits, query_channel_mean, database_bits, dk: int, dt: int, k: int,
                             channels: int | None):
    """search_reference on compact codes: per query, every item scored over the query's selected channels,
    sum over channels live in both of Dt - 2 * (differing signs); the k best, ties to the smaller id."""
    n = len(database_bits)
    keep = min(k, n)
    selection = (np.tile(np.arange(dk), (len(query_bits), 1)) if channels is None
                 else select_channels_reference(query_channel_mean, channels))
    database = unpack_compact(database_bits, dk, dt).astype(np.int64)
    queries = unpack_compact(query_bits, dk, dt).astype(np.int64)
    scores = np.zeros((len(query_bits), keep), np.int32)
    ids = np.zeros((len(query_bits), keep), np.int64)
    for q, chosen in enumerate(selection):
        all_scores = [int((database[i][chosen] * queries[q][chosen]).sum()) for i in range(n)]
        order = sorted(range(n), key=lambda i: (-all_scores[i], i))[:keep]
        scores[q] = [all_scores[i] for i in order]
        ids[q] = order
    return scores, ids


# ---- popcount engine: Gram matrix, channel selection, masked top-k search ----------------------------------------

def gram_reference(bits_a: np.ndarray, bits_b: np.ndarray, dt: int) -> np.ndarray:
    """All-pairs ternary dot products over every channel: (len(a), len(b)) int64."""
    dk = bits_a.shape[1]
    a = unpack_ternary(bits_a, dt).reshape(len(bits_a), dk * dt).astype(np.int64)
    b = unpack_ternary(bits_b, dt).reshape(len(bits_b), dk * dt).astype(np.int64)
    return a @ b.T


def cosine_gram_reference(bits_a: np.ndarray, bits_b: np.ndarray, dt: int) -> np.ndarray:
    """gram_reference divided by sqrt(nnz_a * nnz_b) (cosine of the ternary vectors), 0 where a code is all zero:
    (len(a), len(b)) float64."""
    dk = bits_a.shape[1]
    nnz_a = np.count_nonzero(unpack_ternary(bits_a, dt).reshape(len(bits_a), dk * dt), axis=1)
    nnz_b = np.count_nonzero(unpack_ternary(bits_b, dt).reshape(len(bits_b), dk * dt), axis=1)
    scale = np.sqrt(np.outer(nnz_a, nnz_b).astype(np.float64))
    dots = gram_reference(bits_a, bits_b, dt).astype(np.float64)
    return np.divide(dots, scale, out=np.zeros(dots.shape, np.float64), where=scale > 0)


def select_channels_reference(channel_mean: np.ndarray, channels: int) -> np.ndarray:
    """Per query, the `channels` channels of largest mean, ties to the smaller index, listed in increasing index."""
    selected = []
    for means in np.asarray(channel_mean):
        ranked = sorted(range(len(means)), key=lambda c: (-float(means[c]), c))
        selected.append(sorted(ranked[:channels]))
    return np.asarray(selected, dtype=np.int64).reshape(len(selected), channels)


def search_reference(query_bits, query_channel_mean, database_bits, dt: int, k: int, channels: int | None):
    """Masked top-k (paper eq. 3 on sign codes): per query score every database item over that query's selected
    channels (all when `channels` is None) and keep the k best by decreasing score, ties to the smaller id.
    Returns (scores (nq, min(k, n)) int32, ids (nq, min(k, n)) int64)."""
    dk = query_bits.shape[1]
    n = len(database_bits)
    keep = min(k, n)
    if channels is None:
        selection = np.tile(np.arange(dk), (len(query_bits), 1))
    else:
        selection = select_channels_reference(query_channel_mean, channels)
    database = unpack_ternary(database_bits, dt).astype(np.int64)  # (n, Dk, Dt)
    scores = np.zeros((len(query_bits), keep), np.int32)
    ids = np.zeros((len(query_bits), keep), np.int64)
    for q, (bits, chosen) in enumerate(zip(query_bits, selection)):
        query = unpack_ternary(bits, dt).astype(np.int64)[chosen]  # (channels, Dt)
        all_scores = [int((database[i][chosen] * query).sum()) for i in range(n)]
        order = sorted(range(n), key=lambda i: (-all_scores[i], i))[:keep]
        scores[q] = [all_scores[i] for i in order]
        ids[q] = order
    return scores, ids


def prefix_scores_reference(query_bits, query_channel_mean, database_bits, dt: int, b: int,
                            channels: int | None) -> np.ndarray:
    """The coarse stage's score (`crosslayer.retrieval.prefix_scan`), (nq, n) int64: over each query's selected
    channels live in both codes (a channel is live when any of its components is nonzero), the dot product of the
    first b components' signs read as +1 (nonnegative: zero counts as +1 in a live channel) or -1."""
    dk = query_bits.shape[1]
    if channels is None:
        selection = np.tile(np.arange(dk), (len(query_bits), 1))
    else:
        selection = select_channels_reference(query_channel_mean, channels)

    def signs_and_live(bits):
        values = unpack_ternary(bits, dt)
        return np.where(values[..., :b] < 0, -1, 1).astype(np.int64), (values != 0).any(axis=-1)

    query_signs, query_live = signs_and_live(np.asarray(query_bits))
    item_signs, item_live = signs_and_live(np.asarray(database_bits))
    scores = np.zeros((len(query_bits), len(database_bits)), np.int64)
    for q, chosen in enumerate(selection):
        both = query_live[q][chosen][None, :] & item_live[:, chosen]  # (n, channels)
        dots = (item_signs[:, chosen] * query_signs[q][chosen][None]).sum(axis=-1)  # (n, channels)
        scores[q] = (dots * both).sum(axis=1)
    return scores


# ---- retrieval baselines (SPoC, Babenko & Lempitsky 2015) ---------------------------------------------------------

def spoc(activations_learn: np.ndarray, activations: np.ndarray, dim: int, prior: bool = False) -> np.ndarray:
    """SPoC descriptors of `activations` (n, C, H, W), whitening learnt on `activations_learn`: sum-pool (with
    `prior`, each position (y, x) weighted by exp(-((y - H/2)^2 + (x - W/2)^2) / (2 sigma^2)) at cell centres,
    sigma = min(H, W) / 6: a third of the centre's distance to the closest border), L2, PCA-whitening to `dim`
    components (covariance eigenvectors, largest coefficient positive), L2."""
    def pooled_l2(acts):
        acts = np.asarray(acts, dtype=np.float64)
        if prior:
            height, width = acts.shape[2:]
            sigma = min(height, width) / 6
            weights = np.array([[np.exp(-((y + 0.5 - height / 2) ** 2 + (x + 0.5 - width / 2) ** 2) / (2 * sigma**2))
                                 for x in range(width)] for y in range(height)])
            acts = acts * weights
        pooled = acts.sum(axis=(2, 3))
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    learn = pooled_l2(activations_learn)
    mean = learn.mean(axis=0)
    cov = (learn - mean).T @ (learn - mean) / (len(learn) - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1][:dim]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    eigvecs = eigvecs * np.sign(eigvecs[np.abs(eigvecs).argmax(axis=0), np.arange(dim)])
    whitened = (pooled_l2(activations) - mean) @ eigvecs / np.sqrt(eigvals)
    return whitened / np.linalg.norm(whitened, axis=1, keepdims=True)


# ---- float32 rounding bound of the CPU kernel and the numpy variants (parity checks) -------------------------------
#
# Each pooled value P[k, j] is a sum of N products, and with PCA each projected feature x'[i, j] is itself a sum of
# Dt_in products of centred values; float32 arithmetic errs by at most (N + Dt_in + 2) u times the sum of absolute
# terms, u = 2^-24 (Higham's gamma_n bound, first order).

FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


def float32_pool_bound(local: np.ndarray, guidance: np.ndarray, pca: tuple | None = None) -> np.ndarray:
    """Per pooled value (n, Dk, Dt) float64: (N + Dt_in + 2) u sum_i |a_ik| sum_c |x_ic - mean_c| |W_cj|
    (|x_ij| without PCA), how far a float32 computation of P may be from the exact one."""
    local = np.asarray(local, dtype=np.float64)
    n, dt_in = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    x = local.reshape(n, dt_in, positions).transpose(0, 2, 1)
    if pca is not None:
        mean, proj = pca
        x = np.abs(x - np.asarray(mean, dtype=np.float64)) @ np.abs(np.asarray(proj, dtype=np.float64))
    a = np.abs(np.asarray(guidance, dtype=np.float64)).reshape(n, guidance.shape[1], positions)
    return (positions + dt_in + 2) * FLOAT32_UNIT_ROUNDOFF * np.einsum("bki,bij->bkj", a, np.abs(x))


# ---- TF32 tolerance of the GPU kernel (parity checks) ------------------------------------------------------------
#
# The CUDA pooling kernel multiplies on the tensor cores in TF32: each operand is rounded to a 10-bit mantissa
# (unit roundoff u = 2^-11), products accumulate in float32. With PCA, x' = (x - mean) W is computed that way and
# rounded again before the second product. Propagating the roundings gives, for every pooled value,
#   |P_gpu - P| <= (4u + K * 2^-24) * sum_i |a_ik| S_ij,   S_ij = sum_c (|x_ic| + |mean_c|) |W_cj|  (|x_ij| without PCA)
# We use TF32_SIGN_TOLERANCE = 2^-8 (twice 4u, which also covers the float32 accumulation terms for K <= 10^4):
# a code bit may differ from the float64 sign only where |P| <= TF32_SIGN_TOLERANCE * sum_i |a_ik| S_ij.

TF32_SIGN_TOLERANCE = 2.0 ** -8


def tf32_sign_bound(local: np.ndarray, guidance: np.ndarray, pca: tuple | None = None) -> np.ndarray:
    """Per pooled value (n, Dk, Dt) float64: how far from zero a value must be for its TF32 sign to be certain."""
    local = np.abs(np.asarray(local, dtype=np.float64))
    guidance = np.abs(np.asarray(guidance, dtype=np.float64))
    n, dt_in = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    x = local.reshape(n, dt_in, positions).transpose(0, 2, 1)
    if pca is not None:
        mean, proj = pca
        x = (x + np.abs(np.asarray(mean, dtype=np.float64))) @ np.abs(np.asarray(proj, dtype=np.float64))
    a = guidance.reshape(n, guidance.shape[1], positions)
    return TF32_SIGN_TOLERANCE * np.einsum("bki,bij->bkj", a, x)


def sign_violations(signs: np.ndarray, pooled: np.ndarray, bound: np.ndarray) -> int:
    """Count of values whose sign differs from sign(pooled) although |pooled| exceeds the rounding bound."""
    return int(np.count_nonzero((np.asarray(signs) != np.sign(pooled)) & (np.abs(pooled) > bound)))


def tf32_round(values: np.ndarray) -> np.ndarray:
    """float32 -> the TF32 value the tensor core uses, as float32: the CUDA kernel adds 0x1000 to the bit pattern
    and the tensor core ignores the low 13 mantissa bits (tf32_operand / tf32_value in csrc/cuda/tf32_gemm.cuh),
    i.e. round to nearest on those 13 bits, ties away from zero. Inputs must be finite."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def cross_layer_pool_tf32(local: np.ndarray, guidance: np.ndarray, pca: tuple | None = None) -> np.ndarray:
    """numpy emulation of the CUDA pooling kernel's arithmetic, (n, Dk, Dt) float32: TF32 operands, float32
    accumulation; with PCA, the centring in float32 before the operand's rounding, the projection rounded once, and
    the projected features xp stored rounded to TF32 (Epilogue::StoreTf32). Products of two TF32 values are exact in
    float32, so only the accumulation order (not emulated) separates this from the tensor cores."""
    local = np.asarray(local, dtype=np.float32)
    guidance = np.asarray(guidance, dtype=np.float32)
    n, dt_in = local.shape[:2]
    positions = int(np.prod(local.shape[2:]))
    x = local.reshape(n, dt_in, positions).transpose(0, 2, 1)  # (n, positions, Dt_in)
    if pca is not None:
        mean, proj = (np.asarray(p, dtype=np.float32) for p in pca)
        x = tf32_round(np.matmul(tf32_round(x - mean), tf32_round(proj), dtype=np.float32))
    a = tf32_round(guidance.reshape(n, guidance.shape[1], positions))
    return np.matmul(a, tf32_round(x), dtype=np.float32)


def masked_cosine_reference(query_bits, query_channel_mean, database_bits, dt: int, channels: int | None) -> np.ndarray:
    """(nq, n) float64: each masked ternary dot product (`ternary_dot` over the query's selected channels) divided by
    sqrt(nnz_q * nnz_x), the nonzero counts of the query and the database code over those same channels; 0 where
    either is all zero. The scale `CodeIndex.search(normalize=True)` reports."""
    signs_q = unpack_ternary(query_bits, dt).astype(np.int64)
    signs_x = unpack_ternary(database_bits, dt).astype(np.int64)
    dk = signs_q.shape[1]
    out = np.zeros((len(signs_q), len(signs_x)), np.float64)
    selection = select_channels_reference(query_channel_mean, dk if channels is None else channels)
    for q in range(len(signs_q)):
        chosen_q = signs_q[q, selection[q]]
        for x in range(len(signs_x)):
            chosen_x = signs_x[x, selection[q]]
            norm = np.sqrt(float(np.count_nonzero(chosen_q)) * float(np.count_nonzero(chosen_x)))
            out[q, x] = float((chosen_q * chosen_x).sum()) / norm if norm > 0 else 0.0
    return out


# ---- SCFV and Table 5 (eval) ------------------------------------------------------------------------------------

def lasso_code(feature: np.ndarray, dictionary: np.ndarray, alpha: float) -> np.ndarray:
    """argmin_u 1/2 ||x - u B||^2 + alpha ||u||_1 of one feature x (D,), atoms B (K, D), by sklearn's coordinate
    descent to a tight tolerance (sklearn's Lasso scales the squared loss by 1/D, hence alpha / D)."""
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=alpha / len(feature), fit_intercept=False, tol=1e-12, max_iter=100_000)
    model.fit(np.asarray(dictionary, np.float64).T, np.asarray(feature, np.float64))
    return model.coef_


def scfv(local: np.ndarray, pca, dictionary: np.ndarray, scale: float, alpha: float) -> np.ndarray:
    """The sparse-coding Fisher vector (n, K*D), codeword-major: per image sum_i u_ik (x_i - u_i B) over positions i,
    x_i the PCA-applied local feature divided by `scale`, u_i its lasso code; then signed square root and L2."""
    local = np.asarray(local, np.float64)
    n = local.shape[0]
    features = local_features(local).reshape(n, -1, local.shape[1])
    if pca is not None:
        features = pca_apply(features.reshape(-1, local.shape[1]), *pca).reshape(n, features.shape[1], -1)
    features = features / scale
    atoms = np.asarray(dictionary, np.float64)
    out = np.zeros((n, atoms.shape[0], atoms.shape[1]))
    for b in range(n):
        for x in features[b]:
            u = lasso_code(x, atoms, alpha)
            residual = x - u @ atoms
            for k in range(len(u)):
                out[b, k] += u[k] * residual
    out = signed_sqrt(out.reshape(n, -1))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def region_representation(local: np.ndarray, guidance: np.ndarray) -> np.ndarray:
    """Cross-layer pooling over regions instead of positions (Table 5): local (n, R, D), guidance (n, R, K) ->
    (n, K*D), P_k = sum_r guidance[r, k] local[r], per-channel L2, signed square root."""
    local = np.asarray(local, np.float64)
    guidance = np.asarray(guidance, np.float64)
    pooled = np.zeros((local.shape[0], guidance.shape[2], local.shape[2]))
    for b in range(local.shape[0]):
        for r in range(local.shape[1]):
            pooled[b] += np.outer(guidance[b, r], local[b, r])
    out = signed_sqrt(l2_normalize_channels(pooled))
    return out.reshape(out.shape[0], -1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Along the last axis."""
    logits = np.asarray(logits, np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


# ---- image preparation (the fused kernel crosslayer/prepare_image.h, via crosslayer.images) ----------------------

def pillow_resize(rgb: np.ndarray, side: int, policy: str = "square", fill=(124, 116, 104)) -> np.ndarray:
    """side x side x 3 uint8 by Pillow itself: Image.resize(BILINEAR) to the policy's size, then the crop or the pad
    (`crosslayer.images.resize` promises exactly these integers)."""
    from PIL import Image

    height, width = rgb.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if policy == "square":
        return np.asarray(image.resize((side, side), Image.BILINEAR))
    scale = side / min(height, width) if policy == "center-crop" else side / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    scaled = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    if policy == "center-crop":
        top, left = (new_h - side) // 2, (new_w - side) // 2
        return np.ascontiguousarray(scaled[top : top + side, left : left + side])
    if policy != "pad":
        raise ValueError(f"unknown policy {policy!r}")
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = np.asarray(fill, np.uint8)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


def prepared_image(rgb: np.ndarray, side: int, policy: str, mean, std, fill=(124, 116, 104)) -> np.ndarray:
    """The network input 3 x side x side float32: `pillow_resize`, then `crosslayer.images.normalize` (numpy's
    float32 x * scale - offset). `crosslayer.images.prepare` must equal it bit for bit."""
    from crosslayer.images import normalize

    return normalize(pillow_resize(rgb, side, policy, fill), mean, std)
