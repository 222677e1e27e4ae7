"""`Codes`: a batch of 2-bit sign codes with their per-channel guidance means, and its versioned file format.

Layout (see csrc/include/crosslayer/codes.h): ``bits`` is uint64 (n, Dk, 2, ceil(Dt/64)); plane 0 marks nonzero
values, plane 1 negative ones, bit j of a plane in word j // 64 at position j % 64; padding bits are zero and the
negative plane is a subset of the nonzero plane. ``channel_mean`` is float32 (n, Dk). The kernels trust these two
rules (a set padding bit changes every score it touches), so bits given by a caller or read from a file are checked
once; codes our own kernels produce, and slices and concatenations of checked codes, skip the scan.
"""

from __future__ import annotations

import operator
import struct
import zlib
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.errors import FormatError

MAGIC = b"XLCODES\x00"
# Version 2: the crc32 covers the header (all of it but the crc field) and the payload; version 1 (still read) covered
# only the payload, so a flipped n, Dk or Dt loaded with the wrong shape.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# magic, version, header size, n, Dk, Dt, words per plane, crc32; the crc field is last so the checksummed bytes are
# the file's bytes in order with those 4 left out.
_HEADER = struct.Struct("<8sIIQIIII")
_CRC_FIELD_SIZE = 4
# rows of bits scanned at a time by the validity check, so its temporaries stay small for any batch size
_CHECK_CHUNK_BYTES = 1 << 24


def words_per_plane(dt: int) -> int:
    return (int(dt) + 63) // 64


def checksum_seed(header: bytes, version: int) -> int:
    """The crc32 state a code file's payload checksum continues from: the header's for version 2, none for 1."""
    if version >= 2:
        return zlib.crc32(header[: _HEADER.size - _CRC_FIELD_SIZE])
    return 0


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


class CodesFormatError(FormatError):
    """A code file is not one, is of another version, or is damaged."""


class Codes:
    """Sign codes of n images: ``bits`` (n, Dk, 2, words) uint64 and ``channel_mean`` (n, Dk) float32."""

    __slots__ = ("bits", "channel_mean", "Dt")

    def __init__(self, bits: np.ndarray, channel_mean: np.ndarray, Dt: int):
        """Checks the shapes and that the bits keep the layout's rules (zero padding, negative within nonzero):
        ValueError naming the argument otherwise."""
        self._set(bits, channel_mean, Dt, check_bits=True)

    @classmethod
    def _from_valid_bits(cls, bits: np.ndarray, channel_mean: np.ndarray, Dt: int) -> "Codes":
        """Codes of bits known to keep the layout's rules (our kernels' output, parts of checked codes): the
        shapes are checked, the one-pass scan of the bits is skipped."""
        codes = cls.__new__(cls)
        codes._set(bits, channel_mean, Dt, check_bits=False)
        return codes

    def _set(self, bits, channel_mean, Dt, check_bits: bool) -> None:
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint64 or bits.ndim != 4 or bits.shape[2] != 2:
            raise ValueError("bits: expected a uint64 array of shape (n, Dk, 2, ceil(Dt/64))")
        if isinstance(Dt, bool) or not isinstance(Dt, (int, np.integer)) or Dt < 1:
            raise ValueError(f"Dt: expected a positive integer, got {Dt!r}")
        if bits.shape[1] < 1:
            raise ValueError(f"bits: expected at least one guidance channel (Dk >= 1), got shape {bits.shape}")
        if bits.shape[3] != words_per_plane(Dt):
            raise ValueError(f"bits: last axis has {bits.shape[3]} words, Dt={Dt} needs {words_per_plane(Dt)}")
        channel_mean = np.asarray(channel_mean)
        if channel_mean.shape != bits.shape[:2]:
            raise ValueError(f"channel_mean: expected shape {bits.shape[:2]}, got {channel_mean.shape}")
        bits = np.ascontiguousarray(bits)
        if check_bits:
            reason = invalid_bits_reason(bits, int(Dt))
            if reason is not None:
                raise ValueError(f"bits: {reason}")
        self.bits = bits
        self.channel_mean = np.ascontiguousarray(channel_mean, dtype=np.float32)
        self.Dt = int(Dt)

    # ---- shape --------------------------------------------------------------------------------------------------
    @property
    def Dk(self) -> int:
        return self.bits.shape[1]

    @property
    def words(self) -> int:
        return self.bits.shape[3]

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + self.channel_mean.nbytes

    def __len__(self) -> int:
        return self.bits.shape[0]

    def __getitem__(self, index) -> "Codes":
        """``codes[i]`` is the batch of item i alone (IndexError out of range); slices and index arrays select
        items as numpy does."""
        index = item_slice(index, len(self))
        return Codes._from_valid_bits(self.bits[index], self.channel_mean[index], self.Dt)

    def __repr__(self) -> str:
        return f"Codes(n={len(self)}, Dk={self.Dk}, Dt={self.Dt}, {self.nbytes / max(len(self), 1):.0f} bytes/image)"

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, Codes)
            and self.Dt == other.Dt
            and np.array_equal(self.bits, other.bits)
            and np.array_equal(self.channel_mean, other.channel_mean)
        )

    __hash__ = None

    @staticmethod
    def concatenate(parts) -> "Codes":
        parts = list(parts)
        if not parts:
            raise ValueError("parts: expected at least one Codes")
        first = parts[0]
        for i, part in enumerate(parts):
            if not isinstance(part, Codes):
                raise TypeError(f"parts[{i}]: expected Codes, got {type(part).__name__}")
            if (part.Dk, part.Dt) != (first.Dk, first.Dt):
                raise ValueError(f"parts[{i}]: Dk={part.Dk}, Dt={part.Dt} differs from parts[0] ({first.Dk}, {first.Dt})")
        return Codes._from_valid_bits(
            np.concatenate([p.bits for p in parts]), np.concatenate([p.channel_mean for p in parts]), first.Dt
        )

    @staticmethod
    def empty(Dk: int, Dt: int) -> "Codes":
        bits = np.zeros((0, Dk, 2, words_per_plane(Dt)), np.uint64)
        return Codes._from_valid_bits(bits, np.zeros((0, Dk), np.float32), Dt)

    def signs(self) -> np.ndarray:
        """The ternary values (n, Dk, Dt) int8 (for inspection and tests; O(n·Dk·Dt) memory)."""
        from crosslayer.reference import unpack_ternary

        return unpack_ternary(self.bits, self.Dt)

    # ---- file format --------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the codes atomically: a crash leaves the previous file or the complete new one.

        The bits are checked again first (they may have been changed in place), so no file is written that
        `load` would refuse."""
        reason = invalid_bits_reason(self.bits, self.Dt)
        if reason is not None:
            raise ValueError(f"bits: {reason}; nothing was written")
        payload_bits = self.bits.astype("<u8", copy=False).tobytes()
        payload_mean = self.channel_mean.astype("<f4", copy=False).tobytes()
        fields = (MAGIC, FORMAT_VERSION, _HEADER.size, len(self), self.Dk, self.Dt, self.words)
        seed = checksum_seed(_HEADER.pack(*fields, 0), FORMAT_VERSION)
        crc = zlib.crc32(payload_mean, zlib.crc32(payload_bits, seed))
        header = _HEADER.pack(*fields, crc)
        with atomic_write(path) as handle:
            handle.write(header)
            handle.write(payload_bits)
            handle.write(payload_mean)

    @staticmethod
    def load(path) -> "Codes":
        """Reads a code file of any readable version; CodesFormatError if it is not one, damaged, or its bits
        break the layout's rules."""
        path = Path(path)
        data = path.read_bytes()
        if len(data) < _HEADER.size:
            raise CodesFormatError(f"{path}: truncated header ({len(data)} bytes); not a crosslayer code file")
        magic, version, header_size, n, dk, dt, words, crc = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodesFormatError(f"{path}: not a crosslayer code file (bad magic {magic!r})")
        if version not in READABLE_VERSIONS:
            raise CodesFormatError(
                f"{path}: code file version {version}, this crosslayer reads versions {READABLE_VERSIONS}"
            )
        if header_size != _HEADER.size or dk < 1 or dt < 1 or words != words_per_plane(dt):
            raise CodesFormatError(f"{path}: inconsistent header (Dk={dk}, Dt={dt}, words={words})")
        bits_bytes = n * dk * 2 * words * 8
        mean_bytes = n * dk * 4
        expected = header_size + bits_bytes + mean_bytes
        if len(data) != expected:
            raise CodesFormatError(f"{path}: expected {expected} bytes for {n} codes, file has {len(data)} (truncated or extended)")
        payload_bits = data[header_size : header_size + bits_bytes]
        payload_mean = data[header_size + bits_bytes :]
        seed = checksum_seed(data[: _HEADER.size], version)
        if zlib.crc32(payload_mean, zlib.crc32(payload_bits, seed)) != crc:
            raise CodesFormatError(f"{path}: checksum mismatch (file is damaged)")
        bits = np.frombuffer(payload_bits, dtype="<u8").astype(np.uint64).reshape(n, dk, 2, words)
        mean = np.frombuffer(payload_mean, dtype="<f4").astype(np.float32).reshape(n, dk)
        try:
            return Codes(bits, mean, dt)
        except ValueError as exc:
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
