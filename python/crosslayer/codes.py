"""`Codes`: a batch of 2-bit sign codes with their per-channel guidance means, and its versioned file format.

Layout (see csrc/include/crosslayer/codes.h): ``bits`` is uint64 (n, Dk, 2, ceil(Dt/64)); plane 0 marks nonzero
values, plane 1 negative ones, bit j of a plane in word j // 64 at position j % 64; padding bits are zero.
``channel_mean`` is float32 (n, Dk).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write

MAGIC = b"XLCODES\x00"
FORMAT_VERSION = 1
# magic, version, header size, n, Dk, Dt, words per plane, crc32 of the payload
_HEADER = struct.Struct("<8sIIQIIII")


def words_per_plane(dt: int) -> int:
    return (int(dt) + 63) // 64


class CodesFormatError(ValueError):
    """A code file is not one, is of another version, or is damaged."""


class Codes:
    """Sign codes of n images: ``bits`` (n, Dk, 2, words) uint64 and ``channel_mean`` (n, Dk) float32."""

    __slots__ = ("bits", "channel_mean", "Dt")

    def __init__(self, bits: np.ndarray, channel_mean: np.ndarray, Dt: int):
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint64 or bits.ndim != 4 or bits.shape[2] != 2:
            raise ValueError("bits: expected a uint64 array of shape (n, Dk, 2, ceil(Dt/64))")
        if isinstance(Dt, bool) or not isinstance(Dt, (int, np.integer)) or Dt < 1:
            raise ValueError(f"Dt: expected a positive integer, got {Dt!r}")
        if bits.shape[3] != words_per_plane(Dt):
            raise ValueError(f"bits: last axis has {bits.shape[3]} words, Dt={Dt} needs {words_per_plane(Dt)}")
        channel_mean = np.asarray(channel_mean)
        if channel_mean.shape != bits.shape[:2]:
            raise ValueError(f"channel_mean: expected shape {bits.shape[:2]}, got {channel_mean.shape}")
        self.bits = np.ascontiguousarray(bits)
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
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1 if index != -1 else None)
        return Codes(self.bits[index], self.channel_mean[index], self.Dt)

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
        return Codes(
            np.concatenate([p.bits for p in parts]), np.concatenate([p.channel_mean for p in parts]), first.Dt
        )

    @staticmethod
    def empty(Dk: int, Dt: int) -> "Codes":
        return Codes(np.zeros((0, Dk, 2, words_per_plane(Dt)), np.uint64), np.zeros((0, Dk), np.float32), Dt)

    def signs(self) -> np.ndarray:
        """The ternary values (n, Dk, Dt) int8 (for inspection and tests; O(n·Dk·Dt) memory)."""
        from crosslayer.reference import unpack_ternary

        return unpack_ternary(self.bits, self.Dt)

    # ---- file format --------------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Writes the codes atomically: a crash leaves the previous file or the complete new one."""
        payload_bits = self.bits.astype("<u8", copy=False).tobytes()
        payload_mean = self.channel_mean.astype("<f4", copy=False).tobytes()
        crc = zlib.crc32(payload_mean, zlib.crc32(payload_bits))
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, _HEADER.size, len(self), self.Dk, self.Dt, self.words, crc)
        with atomic_write(path) as handle:
            handle.write(header)
            handle.write(payload_bits)
            handle.write(payload_mean)

    @staticmethod
    def load(path) -> "Codes":
        path = Path(path)
        data = path.read_bytes()
        if len(data) < _HEADER.size:
            raise CodesFormatError(f"{path}: truncated header ({len(data)} bytes); not a crosslayer code file")
        magic, version, header_size, n, dk, dt, words, crc = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CodesFormatError(f"{path}: not a crosslayer code file (bad magic {magic!r})")
        if version != FORMAT_VERSION:
            raise CodesFormatError(f"{path}: code file version {version}, this crosslayer reads version {FORMAT_VERSION}")
        if header_size != _HEADER.size or dk < 1 or dt < 1 or words != words_per_plane(dt):
            raise CodesFormatError(f"{path}: inconsistent header (Dk={dk}, Dt={dt}, words={words})")
        bits_bytes = n * dk * 2 * words * 8
        mean_bytes = n * dk * 4
        expected = header_size + bits_bytes + mean_bytes
        if len(data) != expected:
            raise CodesFormatError(f"{path}: expected {expected} bytes for {n} codes, file has {len(data)} (truncated or extended)")
        payload_bits = data[header_size : header_size + bits_bytes]
        payload_mean = data[header_size + bits_bytes :]
        if zlib.crc32(payload_mean, zlib.crc32(payload_bits)) != crc:
            raise CodesFormatError(f"{path}: checksum mismatch (file is damaged)")
        bits = np.frombuffer(payload_bits, dtype="<u8").astype(np.uint64).reshape(n, dk, 2, words)
        mean = np.frombuffer(payload_mean, dtype="<f4").astype(np.float32).reshape(n, dk)
        return Codes(bits, mean, dt)
