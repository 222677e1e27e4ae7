"""`Codes`: a batch of 2-bit sign codes with their per-channel guidance means (file format: `crosslayer.formats`).

Layout (see csrc/include/crosslayer/codes.h): ``bits`` is uint64 (n, Dk, 2, ceil(Dt/64)); plane 0 marks nonzero
values, plane 1 negative ones, bit j of a plane in word j // 64 at position j % 64; padding bits are zero and the
negative plane is a subset of the nonzero plane. ``channel_mean`` is float32 (n, Dk). The kernels trust these two
rules (a set padding bit changes every score it touches), so bits given by a caller or read from a file are checked
once; codes our own kernels produce, and slices and concatenations of checked codes, skip the scan.

Compact layout (``layout="compact"``, csrc/include/crosslayer/compact_codes.h, `crosslayer.compact`): ``bits`` is
uint64 (n, ceil(Dk/64) + Dk*ceil(Dt/64)): per image a live bit per channel, then one sign plane per channel. Half
the bytes, lossless for codes whose channels are all nonzero or all zero (what pooling produces).
"""

from __future__ import annotations

import operator

import numpy as np

from crosslayer import compact as _compact
from crosslayer.compact import COMPACT, TWO_PLANE
from crosslayer.errors import CrossLayerError, UsageError
from crosslayer.formats import CodeFile, CodesFormatError, words_per_plane  # noqa: F401 (re-exported)

# rows of bits scanned at a time by the validity check, so its temporaries stay small for any batch size
_CHECK_CHUNK_BYTES = 1 << 24


class IdentityMismatchError(CrossLayerError, ValueError):
    """Codes made by two different encoders (another network, weights or PCA) would be compared or mixed."""


def common_identity(named: dict, what: str = "codes") -> str | None:
    """The one known encoder identity among `named` ({argument name: identity or None}); None when none is known.
    IdentityMismatchError naming both when two known identities differ."""
    known = {name: identity for name, identity in named.items() if identity is not None}
    first = None
    for name, identity in known.items():
        if first is None:
            first = (name, identity)
        elif identity != first[1]:
            raise IdentityMismatchError(
                f"{name}: {what} of encoder {identity} cannot be mixed with {first[0]} of encoder {first[1]} "
                "(another network, weights or PCA: the scores would be meaningless)")
    return None if first is None else first[1]


def identity_for_index(index_identity: str | None, name: str, identity: str | None, what: str = "codes") -> str | None:
    """The identity an index keeps after taking `what` of `identity` (argument `name`): `common_identity` of the
    two, except that an index recording an encoder refuses codes whose encoder is unknown (IdentityMismatchError
    saying how to stamp codes whose origin the caller knows). An index without an identity takes any codes."""
    if index_identity is not None and identity is None:
        raise IdentityMismatchError(
            f"{name}: {what} carry no encoder identity but the index records encoder {index_identity}; codes of an "
            "unknown encoder could be another network's (the scores would be meaningless). If you know they were "
            f"made by that encoder, stamp them: codes.with_identity({index_identity!r}) "
            f"(or Codes(bits, channel_mean, Dt, identity={index_identity!r}))")
    return common_identity({"index": index_identity, name: identity}, what)


def invalid_bits_reason(bits: np.ndarray, dt: int) -> str | None:
    """Which rule of the code layout `bits` (n, Dk, 2, words) uint64 breaks, naming the first bad item; None if
    the bits are valid. One pass over the bits, in chunks."""
    tail = dt % 64
    item_bytes = max(bits[0].nbytes, 1) if len(bits) else 1
    step = max(_CHECK_CHUNK_BYTES // item_bytes, 1)
    for start in range(0, len(bits), step):
        chunk = bits[start : start + step]
        if tail:
            padded = (chunk[:, :, :, -1] >> np.uint64(tail)) != 0
            if padded.any():
                item = start + int(np.flatnonzero(padded.reshape(len(chunk), -1).any(axis=1))[0])
                return (f"item {item} has padding bits set (positions >= Dt={dt} in the last word of a plane must "
                        "be zero)")
        stray = (chunk[:, :, 1, :] & ~chunk[:, :, 0, :]) != 0
        if stray.any():
            item = start + int(np.flatnonzero(stray.reshape(len(chunk), -1).any(axis=1))[0])
            return (f"item {item} has a negative bit where its nonzero bit is clear (the negative plane must be a "
                    "subset of the nonzero plane)")
    return None


class Codes:
    """Sign codes of n images: ``bits`` (n, Dk, 2, words) uint64 (``layout`` "two_plane") or (n, compact words)
    (``layout`` "compact", inferred from a 2-D ``bits``) and ``channel_mean`` (n, Dk) float32 (finite).

    ``identity`` is the digest of the encoder that made them (`CrossLayerEncoder.identity_digest`; None: unknown):
    codes of two different known identities are never mixed or compared. ``keys`` are optional per-item strings
    (from a code file written with keys, e.g. `CodeIndex.export`)."""

    __slots__ = ("bits", "channel_mean", "Dt", "identity", "keys", "layout")

    def __init__(self, bits: np.ndarray, channel_mean: np.ndarray, Dt: int, identity: str | None = None, keys=None,
                 layout: str | None = None):
        """Checks the shapes, that the channel means are finite and that the bits keep the layout's rules (zero
        padding, negative within nonzero; compact: no sign bits in a dead channel): UsageError naming the argument
        otherwise. `layout` (None: from the number of axes of `bits`) must agree with `bits`."""
        self._set(bits, channel_mean, Dt, check_bits=True, identity=identity, keys=keys, layout=layout)

    @classmethod
    def _from_valid_bits(cls, bits: np.ndarray, channel_mean: np.ndarray, Dt: int, identity=None, keys=None) -> "Codes":
        """Codes of bits known to keep the layout's rules (our kernels' output, parts of checked codes): the
        shapes are checked, the one-pass scan of the bits is skipped."""
        codes = cls.__new__(cls)
        codes._set(bits, channel_mean, Dt, check_bits=False, identity=identity, keys=keys)
        return codes

    def _set(self, bits, channel_mean, Dt, check_bits: bool, identity=None, keys=None, layout=None) -> None:
        if layout is not None:
            _compact.check_layout(layout)
        if isinstance(bits, np.ndarray) and bits.ndim == 2 and layout in (None, COMPACT):
            layout = COMPACT
        elif layout == COMPACT:
            raise UsageError("bits: layout 'compact' expects a uint64 array of shape (n, ceil(Dk/64) + "
                             "Dk*ceil(Dt/64))")
        else:
            layout = TWO_PLANE
        if layout == TWO_PLANE and (not isinstance(bits, np.ndarray) or bits.dtype != np.uint64 or bits.ndim != 4
                                    or bits.shape[2] != 2):
            raise UsageError("bits: expected a uint64 array of shape (n, Dk, 2, ceil(Dt/64)) (2-plane layout) or "
                             "(n, ceil(Dk/64) + Dk*ceil(Dt/64)) (compact layout)")
        if layout == COMPACT and bits.dtype != np.uint64:
            raise UsageError(f"bits: expected uint64 words, got {bits.dtype}")
        if isinstance(Dt, bool) or not isinstance(Dt, (int, np.integer)) or Dt < 1:
            raise UsageError(f"Dt: expected a positive integer, got {Dt!r}")
        channel_mean = np.asarray(channel_mean)
        if layout == TWO_PLANE:
            if bits.shape[1] < 1:
                raise UsageError(f"bits: expected at least one guidance channel (Dk >= 1), got shape {bits.shape}")
            if bits.shape[3] != words_per_plane(Dt):
                raise UsageError(f"bits: last axis has {bits.shape[3]} words, Dt={Dt} needs {words_per_plane(Dt)}")
            if channel_mean.shape != bits.shape[:2]:
                raise UsageError(f"channel_mean: expected shape {bits.shape[:2]}, got {channel_mean.shape}")
        else:
            # compact bits do not show Dk; the channel means do
            if channel_mean.ndim != 2 or channel_mean.shape[0] != bits.shape[0] or channel_mean.shape[1] < 1:
                raise UsageError(f"channel_mean: expected shape ({bits.shape[0]}, Dk) with Dk >= 1, got "
                                 f"{channel_mean.shape}")
            expected = _compact.compact_words_per_image(channel_mean.shape[1], Dt)
            if bits.shape[1] != expected:
                raise UsageError(f"bits: compact codes of Dk={channel_mean.shape[1]}, Dt={Dt} have {expected} words "
                                 f"an image, got {bits.shape[1]}")
        channel_mean = np.ascontiguousarray(channel_mean, dtype=np.float32)
        if not np.isfinite(channel_mean).all():
            item = int(np.flatnonzero(~np.isfinite(channel_mean).all(axis=1))[0])
            raise UsageError(f"channel_mean: item {item} has a non-finite mean (NaN or infinity); channel selection "
                             "would be arbitrary")
        self._checked_identity(identity)
        if keys is not None:
            if isinstance(keys, (str, bytes)):
                raise UsageError("keys: expected a sequence of strings, one per item, got a single string")
            keys = list(keys)
            if len(keys) != bits.shape[0] or not all(key is None or isinstance(key, str) for key in keys):
                raise UsageError(f"keys: expected {bits.shape[0]} strings (one per item)")
        bits = np.ascontiguousarray(bits)
        if check_bits:
            reason = (invalid_bits_reason(bits, int(Dt)) if layout == TWO_PLANE
                      else _compact.invalid_compact_reason(bits, channel_mean.shape[1], int(Dt)))
            if reason is not None:
                raise UsageError(f"bits: {reason}")
        self.layout = layout
        self.bits = bits
        self.channel_mean = channel_mean
        self.Dt = int(Dt)
        self.identity = identity
        self.keys = keys

    # ---- shape --------------------------------------------------------------------------------------------------
    @property
    def Dk(self) -> int:
        return self.channel_mean.shape[1]

    @property
    def words(self) -> int:
        """uint64 words of one channel's plane, ceil(Dt/64), in either layout."""
        return words_per_plane(self.Dt)

    @property
    def is_compact(self) -> bool:
        return self.layout == COMPACT

    # ---- layout conversions --------------------------------------------------------------------------------------
    def compact(self, lossy: bool = False) -> "Codes":
        """These codes in the compact layout (themselves when already compact). A channel partly zero has no
        compact form: UsageError naming it, unless ``lossy=True`` (its zeros become +1)."""
        if self.is_compact:
            return self
        bits = _compact.two_plane_to_compact(self.bits, self.Dt, lossy=bool(lossy))
        return Codes._from_valid_bits(bits, self.channel_mean, self.Dt, self.identity, self.keys)

    def expanded(self) -> "Codes":
        """These codes in the 2-plane layout (themselves when already so); lossless."""
        if not self.is_compact:
            return self
        bits = _compact.compact_to_two_plane(self.bits, self.Dk, self.Dt)
        return Codes._from_valid_bits(bits, self.channel_mean, self.Dt, self.identity, self.keys)

    def to_layout(self, layout: str, lossy: bool = False) -> "Codes":
        """These codes in `layout` ("two_plane" or "compact")."""
        return self.compact(lossy) if _compact.check_layout(layout) == COMPACT else self.expanded()

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + self.channel_mean.nbytes

    def __len__(self) -> int:
        return self.bits.shape[0]

    def __getitem__(self, index) -> "Codes":
        """``codes[i]`` is the batch of item i alone (IndexError out of range); slices and index arrays select
        items as numpy does."""
        index = item_slice(index, len(self))
        keys = None if self.keys is None else np.array(self.keys, dtype=object)[index].tolist()
        return Codes._from_valid_bits(self.bits[index], self.channel_mean[index], self.Dt, self.identity, keys)

    def __repr__(self) -> str:
        made = f", identity={self.identity}" if self.identity else ""
        return (f"Codes(n={len(self)}, Dk={self.Dk}, Dt={self.Dt}, {self.layout}{made}, "
                f"{self.nbytes / max(len(self), 1):.0f} bytes/image)")

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Codes)
            and self.Dt == other.Dt
            and self.layout == other.layout
            and self.identity == other.identity
            and np.array_equal(self.bits, other.bits)
            and np.array_equal(self.channel_mean, other.channel_mean)
        )

    __hash__ = None

    @staticmethod
    def concatenate(parts) -> "Codes":
        """One batch of every part's items in order, in the first part's layout (others are converted; a 2-plane
        part with a partly-zero channel cannot join compact ones: UsageError); parts of two different known encoder
        identities are refused (IdentityMismatchError). Keys are kept when every part has them."""
        parts = list(parts)
        if not parts:
            raise UsageError("parts: expected at least one Codes")
        first = parts[0]
        for i, part in enumerate(parts):
            if not isinstance(part, Codes):
                raise TypeError(f"parts[{i}]: expected Codes, got {type(part).__name__}")
            if (part.Dk, part.Dt) != (first.Dk, first.Dt):
                raise UsageError(f"parts[{i}]: Dk={part.Dk}, Dt={part.Dt} differs from parts[0] ({first.Dk}, {first.Dt})")
        identity = common_identity({f"parts[{i}]": part.identity for i, part in enumerate(parts)})
        keys = [k for p in parts for k in p.keys] if all(p.keys is not None for p in parts) else None
        parts = [part.to_layout(first.layout) for part in parts]
        return Codes._from_valid_bits(np.concatenate([p.bits for p in parts]),
                                      np.concatenate([p.channel_mean for p in parts]), first.Dt, identity, keys)

    def with_identity(self, identity: str) -> "Codes":
        """The same codes stamped as made by the encoder of digest `identity` (`CrossLayerEncoder.identity_digest`,
        `CodeIndex.identity`): for codes whose origin you know but whose file or constructor did not record it.
        IdentityMismatchError if they already carry another identity."""
        if identity is None:
            raise UsageError("identity: expected an encoder identity digest, got None")
        common_identity({"codes": self.identity, "identity": identity})
        return Codes._from_valid_bits(self.bits, self.channel_mean, self.Dt, self._checked_identity(identity),
                                      self.keys)

    @staticmethod
    def _checked_identity(identity):
        if identity is not None and (not isinstance(identity, str) or not identity.isascii()
                                     or not 0 < len(identity) <= CodeFile.IDENTITY_BYTES):
            raise UsageError(f"identity: expected None or an encoder identity digest (at most "
                             f"{CodeFile.IDENTITY_BYTES} ASCII characters), got {identity!r}")
        return identity

    @staticmethod
    def empty(Dk: int, Dt: int, identity: str | None = None, layout: str = TWO_PLANE) -> "Codes":
        if _compact.check_layout(layout) == COMPACT:
            bits = np.zeros((0, _compact.compact_words_per_image(Dk, Dt)), np.uint64)
        else:
            bits = np.zeros((0, Dk, 2, words_per_plane(Dt)), np.uint64)
        return Codes._from_valid_bits(bits, np.zeros((0, Dk), np.float32), Dt, identity)

    def signs(self) -> np.ndarray:
        """The ternary values (n, Dk, Dt) int8 (for inspection and tests; O(n·Dk·Dt) memory)."""
        from crosslayer.reference import unpack_compact, unpack_ternary

        if self.is_compact:
            return unpack_compact(self.bits, self.Dk, self.Dt)
        return unpack_ternary(self.bits, self.Dt)

    # ---- file format (crosslayer.formats.CodeFile) --------------------------------------------------------------
    def save(self, path, keys=None) -> None:
        """Writes the codes (their identity, and `keys` or else their own keys if any) atomically: a crash leaves
        the previous file or the complete new one.

        The bits and means are checked again first (they may have been changed in place), so no file is written
        that `load` would refuse."""
        try:
            Codes(self.bits, self.channel_mean, self.Dt, self.identity, self.keys if keys is None else keys)
        except UsageError as error:
            raise UsageError(f"{error}; nothing was written") from None
        CodeFile.write(path, self.bits, self.channel_mean, self.Dt, self.identity, self.keys if keys is None else keys)

    @staticmethod
    def load(path) -> "Codes":
        """Reads a code file (with its identity and keys); CodesFormatError if it is not one, damaged, or its bits
        or means break the layout's rules."""
        header, bits, means, keys = CodeFile.read(path)
        try:
            return Codes(bits, means, header.Dt, header.identity, keys)
        except UsageError as exc:
            raise CodesFormatError(f"{path}: {exc}") from None


def item_slice(index, length: int):
    """`index` of a batch of `length` items as numpy indexes it, an integer made a one-item slice (IndexError
    when out of range, as for a list)."""
    try:
        position = operator.index(index)
    except TypeError:
        return index  # a slice or an index array: numpy selects and bounds-checks it
    if not -length <= position < length:
        raise IndexError(f"index {position} is out of range for {length} items")
    position %= length
    return slice(position, position + 1)
