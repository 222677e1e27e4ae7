"""The compact sign-code layout and its conversions (contract: csrc/include/crosslayer/compact_codes.h).

Per image, uint64 words: ``live[ceil(Dk/64)]`` (bit k: channel k has any nonzero value) then
``sign[Dk][ceil(Dt/64)]`` (bit j of channel k: P[k][j] < 0; all zero for a dead channel; padding bits zero). A batch
is ``bits`` (n, compact_words_per_image(Dk, Dt)). Dk is not recoverable from that width alone, so callers carry it
(`Codes` takes it from its channel means).

A pooled channel is zero only when its guidance channel is zero everywhere, so on real codes a channel's nonzero
plane is all ones or all zeros and this layout is lossless; a "partial" channel (some values exactly zero) cannot be
stored, and `two_plane_to_compact` refuses it unless told ``lossy=True`` (zeros then read back as +1).
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError
from crosslayer.formats import words_per_plane

TWO_PLANE = "two_plane"
COMPACT = "compact"
LAYOUTS = (TWO_PLANE, COMPACT)

_CHUNK_BYTES = 1 << 24  # conversions work in chunks of about this many input bytes, so temporaries stay small


def live_words(dk: int) -> int:
    return (int(dk) + 63) // 64


def compact_words_per_image(dk: int, dt: int) -> int:
    return live_words(dk) + int(dk) * words_per_plane(dt)


def bytes_per_image(layout: str, dk: int, dt: int) -> int:
    """Bytes of one image's bits in `layout` (channel means not included)."""
    if layout == COMPACT:
        return 8 * compact_words_per_image(dk, dt)
    return 8 * int(dk) * 2 * words_per_plane(dt)


def check_layout(layout, name: str = "layout") -> str:
    if layout not in LAYOUTS:
        raise UsageError(f"{name}: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def live_plane(bits: np.ndarray, dk: int) -> np.ndarray:
    """View of the live words (n, ceil(Dk/64)) of compact `bits`."""
    return bits[:, : live_words(dk)]


def sign_planes(bits: np.ndarray, dk: int, dt: int) -> np.ndarray:
    """View of the sign rows (n, Dk, ceil(Dt/64)) of compact `bits`."""
    return bits[:, live_words(dk):].reshape(len(bits), int(dk), words_per_plane(dt))


def live_mask(bits: np.ndarray, dk: int) -> np.ndarray:
    """(n, Dk) bool: which channels of compact `bits` are live."""
    live = np.ascontiguousarray(live_plane(bits, dk)).view(np.uint8)
    return np.unpackbits(live, axis=1, bitorder="little")[:, : int(dk)].astype(bool)


def pack_live(mask: np.ndarray) -> np.ndarray:
    """(n, Dk) bool -> (n, ceil(Dk/64)) uint64 live words, padding bits zero."""
    n, dk = mask.shape
    packed = np.zeros((n, live_words(dk) * 8), np.uint8)
    packed[:, : (dk + 7) // 8] = np.packbits(mask, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False)


def full_row(dt: int) -> np.ndarray:
    """(ceil(Dt/64),) uint64: every value of a channel set, padding clear."""
    words = words_per_plane(dt)
    row = np.full(words, np.iinfo(np.uint64).max, np.uint64)
    if dt % 64:
        row[-1] = np.uint64((1 << (dt % 64)) - 1)
    return row


def _chunks(n: int, item_bytes: int):
    step = max(_CHUNK_BYTES // max(item_bytes, 1), 1)
    for start in range(0, n, step):
        yield start, min(start + step, n)


def two_plane_to_compact(bits: np.ndarray, dt: int, lossy: bool = False) -> np.ndarray:
    """(n, Dk, 2, words) 2-plane codes -> (n, compact words) compact codes.

    A channel with some but not all values zero has no compact form: UsageError naming the first such item and
    channel, unless ``lossy=True`` (its zeros become +1)."""
    n, dk = bits.shape[:2]
    out = np.empty((n, compact_words_per_image(dk, dt)), np.uint64)
    full = full_row(dt)
    for start, stop in _chunks(n, bits[0].nbytes if n else 1):
        nonzero, negative = bits[start:stop, :, 0, :], bits[start:stop, :, 1, :]
        live = nonzero.any(axis=2)
        if not lossy:
            partial = live & (nonzero != full).any(axis=2)
            if partial.any():
                item, channel = np.argwhere(partial)[0]
                raise UsageError(
                    f"bits: item {start + int(item)} channel {int(channel)} is partly zero (some values 0, others "
                    "not); the compact layout stores a channel as all nonzero or all zero. Pass lossy=True to code "
                    "its zeros as +1")
        out[start:stop, : live_words(dk)] = pack_live(live)
        # a dead channel's negative plane is already zero (negative is a subset of nonzero)
        out[start:stop, live_words(dk):] = negative.reshape(stop - start, -1)
    return out


def compact_to_two_plane(bits: np.ndarray, dk: int, dt: int) -> np.ndarray:
    """(n, compact words) compact codes -> (n, Dk, 2, words) 2-plane codes (lossless)."""
    n = len(bits)
    words = words_per_plane(dt)
    out = np.empty((n, int(dk), 2, words), np.uint64)
    full = full_row(dt)
    for start, stop in _chunks(n, bits[0].nbytes * 2 if n else 1):
        chunk = bits[start:stop]
        live = live_mask(chunk, dk)
        out[start:stop, :, 0, :] = np.where(live[:, :, None], full, np.uint64(0))
        out[start:stop, :, 1, :] = sign_planes(chunk, dk, dt)
    return out


def invalid_compact_reason(bits: np.ndarray, dk: int, dt: int) -> str | None:
    """Which rule of the compact layout `bits` breaks, naming the first bad item; None when valid."""
    dk, dt = int(dk), int(dt)
    for start, stop in _chunks(len(bits), bits[0].nbytes if len(bits) else 1):
        chunk = bits[start:stop]
        if dk % 64:
            stray = (live_plane(chunk, dk)[:, -1] >> np.uint64(dk % 64)) != 0
            if stray.any():
                return f"item {start + int(np.flatnonzero(stray)[0])} has live bits set at channels >= Dk={dk}"
        signs = sign_planes(chunk, dk, dt)
        if dt % 64:
            padded = ((signs[:, :, -1] >> np.uint64(dt % 64)) != 0).any(axis=1)
            if padded.any():
                return (f"item {start + int(np.flatnonzero(padded)[0])} has padding bits set (positions >= Dt={dt} "
                        "in the last word of a sign row must be zero)")
        dead_signed = (~live_mask(chunk, dk) & signs.any(axis=2)).any(axis=1)
        if dead_signed.any():
            return (f"item {start + int(np.flatnonzero(dead_signed)[0])} has sign bits in a dead channel (a channel "
                    "whose live bit is clear must have an all-zero sign row)")
    return None


def nonzero_counts(bits: np.ndarray, dk: int, dt: int) -> np.ndarray:
    """(n,) int64 nonzero values of each compact code: Dt per live channel."""
    return np.bitwise_count(live_plane(bits, dk)).sum(axis=1, dtype=np.int64) * int(dt)


def masked_nonzero_counts(bits: np.ndarray, dk: int, dt: int, selection: np.ndarray) -> np.ndarray:
    """Per row i, the nonzero values of compact code `bits[i]` over channels `selection[i]`: (n,) int64."""
    live = live_mask(bits, dk)
    rows = np.arange(len(bits))[:, None]
    return live[rows, selection].sum(axis=1, dtype=np.int64) * int(dt)


def take_channels(bits: np.ndarray, dk: int, dt: int, channels: np.ndarray) -> np.ndarray:
    """Compact codes of only `channels` (in that order) of compact `bits`: (n, compact words of len(channels))."""
    channels = np.asarray(channels, np.int64)
    live = live_mask(bits, dk)[:, channels]
    signs = sign_planes(bits, dk, dt)[:, channels]
    return np.concatenate([pack_live(live), signs.reshape(len(bits), -1)], axis=1)
