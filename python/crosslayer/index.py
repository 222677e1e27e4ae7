"""`CodeIndex`: an append-only, crash-safe on-disk index of sign codes, searched through memory maps.

Directory layout (format version 2; version 1, whose segments are all code files of version 1, is still read)::

    MANIFEST.json          what is committed: magic, version, Dk, Dt, count, segments (file, count, id_base,
                           size, crc32, optional key table file and its crc32), and a crc32 of all of it
    seg-00000000.xlc       one segment per append, in the crosslayer code file format (`Codes.save`); its header's
                           crc32 is the segment's crc32 (version 2 files: header and payload, version 1: payload)
    seg-00000000.keys.json optional string keys of that segment's items (e.g. image paths)
    WRITER.lock            fcntl lock held by the single writer

An append writes its segment (and key table) under a temporary name, fsyncs and renames it, and only then
atomically replaces the manifest; a crash at any moment leaves the previous manifest or the new one, each naming
only complete, checksummed segments. Files a crash left behind are removed when the next writer opens.
Readers take no lock: they search the segments of the manifest they opened (a consistent snapshot) while a writer
appends; `reload()` picks up later commits. Item ids are int64 in append order. Committed segments never
change, so an open index reads and checks each key table once and keeps it.

The kernels trust the code layout's rules (zero padding, negative bits within nonzero ones): appended codes are
checked when saved, `open(verify=True)` checks every segment's bits with its checksum, and `get` checks what it
returns. An index opened with verify=False is searched as it is on disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.codes import (
    _HEADER, FORMAT_VERSION as CODES_FORMAT_VERSION, MAGIC as CODES_MAGIC, READABLE_VERSIONS as CODES_READABLE_VERSIONS,
    Codes, checksum_seed, invalid_bits_reason,
)
from crosslayer.errors import CrossLayerError
from crosslayer.search import search_segments

MANIFEST_NAME = "MANIFEST.json"
LOCK_NAME = "WRITER.lock"
INDEX_MAGIC = "crosslayer-code-index"
# Version 2 may hold segments in code file version 2, which version-1 readers would call damaged; an append to a
# version-1 index makes it version 2.
INDEX_VERSION = 2
READABLE_INDEX_VERSIONS = (1, 2)
_SEGMENT_FILE = re.compile(r"^seg-\d{8}\.(xlc|keys\.json)$")
_CRC_CHUNK = 1 << 24


class CodeIndexError(CrossLayerError, ValueError):
    """The index is missing, damaged, of another version, locked by another writer, or misused."""


def _manifest_checksum(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _header_of(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_HEADER.size)


def _file_crc(path: Path, start: int, seed: int = 0) -> int:
    crc = seed
    with open(path, "rb") as handle:
        handle.seek(start)
        while chunk := handle.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


class CodeIndex:
    """Sign codes on disk. Use `CodeIndex.create(path, Dk, Dt)` or `CodeIndex.open(path, mode="r"|"a")`."""

    def __init__(self, path: Path, manifest: dict, lock_handle=None):
        self.path = path
        self._manifest = manifest
        self._lock = lock_handle
        self._maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Checked key tables by (file, crc32): committed segments never change, so a table is read once per index
        # object, and one a later manifest names differently is read afresh.
        self._key_tables: dict[tuple[str, int], list] = {}

    # ---- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, Dk: int, Dt: int) -> "CodeIndex":
        """Creates an empty index in a new (or empty) directory and returns it open for appending."""
        for name, value in (("Dk", Dk), ("Dt", Dt)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CodeIndexError(f"{path}: exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = cls._acquire_writer_lock(path)
        manifest = {"magic": INDEX_MAGIC, "version": INDEX_VERSION, "Dk": int(Dk), "Dt": int(Dt), "count": 0,
                    "segments": []}
        index = cls(path, manifest, lock)
        index._write_manifest(manifest)
        return index

    @classmethod
    def open(cls, path, mode: str = "r", verify: bool = True) -> "CodeIndex":
        """Opens an index for searching (mode "r") or appending too (mode "a", one writer at a time).

        `verify` checks every segment's checksum (reads the whole index once); without it only sizes and headers
        are checked, which is what a very large index wants."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode: expected 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not (path / MANIFEST_NAME).is_file():
            raise CodeIndexError(f"{path}: not a crosslayer code index (no {MANIFEST_NAME})")
        lock = cls._acquire_writer_lock(path) if mode == "a" else None
        try:
            manifest = cls._read_manifest(path)
            index = cls(path, manifest, lock)
            index._check_segments(verify)
            if lock is not None:
                index._remove_uncommitted_files()
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return index

    @staticmethod
    def _acquire_writer_lock(path: Path):
        handle = open(path / LOCK_NAME, "a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CodeIndexError(f"{path}: another process has the index open for appending") from None
        return handle

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        try:
            document = json.loads((path / MANIFEST_NAME).read_bytes())
            body, checksum = document["body"], document["crc32"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CodeIndexError(f"{path / MANIFEST_NAME}: unreadable manifest ({exc})") from None
        if not isinstance(body, dict) or body.get("magic") != INDEX_MAGIC:
            raise CodeIndexError(f"{path}: not a crosslayer code index (bad manifest magic)")
        if body.get("version") not in READABLE_INDEX_VERSIONS:
            raise CodeIndexError(
                f"{path}: index version {body.get('version')}, this crosslayer reads versions {READABLE_INDEX_VERSIONS}"
            )
        if _manifest_checksum(body) != checksum:
            raise CodeIndexError(f"{path / MANIFEST_NAME}: checksum mismatch (manifest is damaged)")
        return body

    def _write_manifest(self, body: dict) -> None:
        document = {"body": body, "crc32": _manifest_checksum(body)}
        with atomic_write(self.path / MANIFEST_NAME) as handle:
            handle.write(json.dumps(document, indent=1).encode())
        self._manifest = body

    def _segment_layout(self, count: int) -> tuple[int, int]:
        """(bytes of bits, bytes of channel means) of a segment of `count` items."""
        dk, dt = self.Dk, self.Dt
        return count * dk * 2 * ((dt + 63) // 64) * 8, count * dk * 4

    def _check_segments(self, verify: bool) -> None:
        expected_base = 0
        for segment in self._manifest["segments"]:
            file = self.path / segment["file"]
            if segment["id_base"] != expected_base:
                raise CodeIndexError(f"{self.path}: manifest segments are not contiguous at {segment['file']}")
            expected_base += segment["count"]
            bits_bytes, mean_bytes = self._segment_layout(segment["count"])
            size = _HEADER.size + bits_bytes + mean_bytes
            try:
                actual = file.stat().st_size
                with open(file, "rb") as handle:
                    header = handle.read(_HEADER.size)
            except OSError as exc:
                raise CodeIndexError(f"{file}: committed segment is missing or unreadable ({exc})") from None
            if actual != size or segment["size"] != size:
                raise CodeIndexError(f"{file}: {actual} bytes, the manifest commits {size} (truncated or extended)")
            magic, version, header_size, n, dk, dt, words, crc = _HEADER.unpack(header)
            if version not in CODES_READABLE_VERSIONS or (magic, header_size, n, dk, dt, crc) != (
                CODES_MAGIC, _HEADER.size, segment["count"], self.Dk, self.Dt, segment["crc32"]
            ):
                raise CodeIndexError(f"{file}: segment header does not match the manifest (damaged)")
            if verify:
                self._verify_segment(segment, checksum_seed(header, version))
        if expected_base != self._manifest["count"]:
            raise CodeIndexError(f"{self.path}: manifest count {self._manifest['count']} != sum of segments")

    def _verify_segment(self, segment: dict, seed: int) -> None:
        file = self.path / segment["file"]
        if _file_crc(file, _HEADER.size, seed) != segment["crc32"]:
            raise CodeIndexError(f"{file}: checksum mismatch (segment is damaged)")
        # Segments written before codes were checked on save (or by other tools) may break the layout's rules.
        reason = invalid_bits_reason(self._segment_arrays(segment)[0], self.Dt)
        if reason is not None:
            raise CodeIndexError(f"{file}: invalid code bits: {reason}")
        if segment.get("keys"):
            self._read_key_table(segment)  # from disk, not the cache: verification looks at what is there now

    def verify(self) -> None:
        """Checks every committed segment against its checksum; raises CodeIndexError on damage."""
        self._check_segments(verify=True)

    def _remove_uncommitted_files(self) -> None:
        committed = set()
        for segment in self._manifest["segments"]:
            committed.add(segment["file"])
            if segment.get("keys"):
                committed.add(segment["keys"])
        for entry in self.path.iterdir():
            leftover_segment = _SEGMENT_FILE.match(entry.name) and entry.name not in committed
            leftover_temporary = entry.name.startswith(".") and entry.name.endswith(".tmp")
            if leftover_segment or leftover_temporary:
                entry.unlink(missing_ok=True)

    def reload(self) -> None:
        """Reads the current manifest (picks up appends committed since this index was opened)."""
        self._manifest = self._read_manifest(self.path)
        self._check_segments(verify=False)

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def Dk(self) -> int:
        return self._manifest["Dk"]

    @property
    def Dt(self) -> int:
        return self._manifest["Dt"]

    def __len__(self) -> int:
        return self._manifest["count"]

    @property
    def writable(self) -> bool:
        return self._lock is not None

    def __repr__(self) -> str:
        return f"CodeIndex({str(self.path)!r}, n={len(self)}, Dk={self.Dk}, Dt={self.Dt}, segments={len(self._manifest['segments'])})"

    # ---- appending ------------------------------------------------------------------------------------------------
    def append(self, codes: Codes, keys=None) -> np.ndarray:
        """Commits `codes` (with optional string `keys`, one per item) and returns their ids (int64)."""
        self._require_open()
        if not self.writable:
            raise CodeIndexError(f"{self.path}: opened read-only; open with mode='a' to append")
        if not isinstance(codes, Codes):
            raise TypeError(f"codes: expected crosslayer.Codes, got {type(codes).__name__}")
        if (codes.Dk, codes.Dt) != (self.Dk, self.Dt):
            raise ValueError(f"codes: Dk={codes.Dk}, Dt={codes.Dt} differs from the index (Dk={self.Dk}, Dt={self.Dt})")
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys: expected a sequence of strings, one per item, got a single string")
        if keys is not None:
            keys = list(keys)
            if len(keys) != len(codes) or not all(isinstance(key, str) for key in keys):
                raise ValueError(f"keys: expected {len(codes)} strings (one per item)")
        id_base = len(self)
        if len(codes) == 0:
            return np.zeros(0, np.int64)
        number = len(self._manifest["segments"])
        segment = {"file": f"seg-{number:08d}.xlc", "count": len(codes), "id_base": id_base}
        file = self.path / segment["file"]
        codes.save(file)  # checks the bits first
        segment["size"] = file.stat().st_size
        # the checksum of what reached the disk: a write damaged on its way there fails the header's own checksum
        segment["crc32"] = _file_crc(file, _HEADER.size, checksum_seed(_header_of(file), CODES_FORMAT_VERSION))
        if keys is not None:
            data = json.dumps(keys).encode()
            segment["keys"] = f"seg-{number:08d}.keys.json"
            segment["keys_crc32"] = zlib.crc32(data)
            with atomic_write(self.path / segment["keys"]) as handle:
                handle.write(data)
        body = dict(self._manifest, version=INDEX_VERSION, count=id_base + len(codes),
                    segments=self._manifest["segments"] + [segment])
        self._write_manifest(body)
        return np.arange(id_base, id_base + len(codes), dtype=np.int64)

    # ---- reading --------------------------------------------------------------------------------------------------
    def _segment_arrays(self, segment: dict) -> tuple[np.ndarray, np.ndarray]:
        """Memory maps of a segment's bits (n, Dk, 2, words) and channel means (n, Dk)."""
        if segment["file"] not in self._maps:
            n, dk, words = segment["count"], self.Dk, (self.Dt + 63) // 64
            bits_bytes, _ = self._segment_layout(n)
            file = self.path / segment["file"]
            bits = np.memmap(file, dtype="<u8", mode="r", offset=_HEADER.size, shape=(n, dk, 2, words))
            means = np.memmap(file, dtype="<f4", mode="r", offset=_HEADER.size + bits_bytes, shape=(n, dk))
            self._maps[segment["file"]] = (bits, means)
        return self._maps[segment["file"]]

    def search(self, queries: Codes, k: int = 10, channels: int | None = 50, num_threads: int = 0):
        """Masked top-k over every committed item (see `crosslayer.search`): (scores int32, ids int64),
        each (n_queries, min(k, len(index)))."""
        self._require_open()
        if not isinstance(queries, Codes):
            raise TypeError(f"queries: expected crosslayer.Codes, got {type(queries).__name__}")
        if (queries.Dk, queries.Dt) != (self.Dk, self.Dt):
            raise ValueError(f"queries: Dk={queries.Dk}, Dt={queries.Dt} differs from the index (Dk={self.Dk}, Dt={self.Dt})")
        segments = [(self._segment_arrays(s)[0], s["id_base"]) for s in self._manifest["segments"]]
        return search_segments(queries, segments, k, channels, num_threads)

    def _locate(self, ids) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"ids: expected ids in [0, {len(self)})")
        bases = np.array([s["id_base"] for s in self._manifest["segments"]], np.int64)
        return ids, np.searchsorted(bases, ids, side="right") - 1

    def get(self, ids) -> Codes:
        """The codes of the given ids (read from the memory maps)."""
        self._require_open()
        ids, which = self._locate(ids)
        words = (self.Dt + 63) // 64
        bits = np.empty((len(ids), self.Dk, 2, words), np.uint64)
        means = np.empty((len(ids), self.Dk), np.float32)
        for row, (item, number) in enumerate(zip(ids, which)):
            segment = self._manifest["segments"][number]
            seg_bits, seg_means = self._segment_arrays(segment)
            bits[row] = seg_bits[item - segment["id_base"]]
            means[row] = seg_means[item - segment["id_base"]]
        try:
            return Codes(bits, means, self.Dt)  # the segments may not have been verified at open
        except ValueError as exc:
            raise CodeIndexError(f"{self.path}: {exc}") from None

    def keys(self, ids) -> list:
        """The string keys of the given ids (None for items appended without keys)."""
        self._require_open()
        ids, which = self._locate(ids)
        out = []
        for item, number in zip(ids, which):
            segment = self._manifest["segments"][number]
            table = self._key_table(segment)
            out.append(None if table is None else table[item - segment["id_base"]])
        return out

    def _key_table(self, segment: dict) -> list | None:
        """A segment's checked key table (None if it has none), read from disk once."""
        if not segment.get("keys"):
            return None
        cache_key = (segment["keys"], segment["keys_crc32"])
        if cache_key not in self._key_tables:
            self._key_tables[cache_key] = self._read_key_table(segment)
        return self._key_tables[cache_key]

    def _read_key_table(self, segment: dict) -> list:
        file = self.path / segment["keys"]
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise CodeIndexError(f"{file}: committed key table is missing ({exc})") from None
        if zlib.crc32(data) != segment["keys_crc32"]:
            raise CodeIndexError(f"{file}: checksum mismatch (key table is damaged)")
        table = json.loads(data)
        if not isinstance(table, list) or len(table) != segment["count"]:
            raise CodeIndexError(f"{file}: expected {segment['count']} keys (key table is damaged)")
        return table

    # ---- closing --------------------------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._manifest is None:
            raise CodeIndexError(f"{self.path}: index is closed")

    def close(self) -> None:
        self._maps.clear()
        self._key_tables.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._manifest = None

    def __enter__(self) -> "CodeIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
