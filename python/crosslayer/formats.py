"""The one home of crosslayer's on-disk formats: every versioned file is written and read through here.

JSON document (`write_json`/`read_json`; index manifests, the image-index marker, caches' metadata, evaluation
records; `document_text`/`parse_json` for one kept inside another file)::

    {"format": NAME, "version": V, "crc32": C, ...body}      C = crc32 of the body alone (keys sorted, compact)

Code file (`CodeFile`; `Codes.save/load`, `CodeIndex` segments and exports), version 4, little-endian::

    header (72 bytes)  magic "XLCODES\\0", version u32, header size u32, n u64, Dk u32, Dt u32, words per plane u32,
                       key block bytes u64, identity 16 bytes (encoder identity digest, ASCII, zero padded),
                       layout u32 (0: 2-plane, 1: compact), reserved u32 (0), crc32 u32
    bits               2-plane: uint64 (n, Dk, 2, words); compact: uint64 (n, ceil(Dk/64) + Dk*words)   at offset 72
    channel means      float32 (n, Dk)                     after the bits
    key block          JSON list of n strings (or nulls)   after the means; absent when its size is 0
    crc32 covers the header (less its crc field) and then every payload byte in order.
    Version 3 (still read): the same without the layout and reserved fields (a 64-byte header), bits always 2-plane.

Encoder file (`write_zip_document`/`read_zip_document`), a zip of ``document.json`` (a JSON document as above
whose body also records each array's crc32, shape and dtype) and one ``NAME.npy`` per array.

Side array (`write_npy`/`check_npy`): a plain ``.npy`` file; its size and crc32 live in the manifest naming it.

Writers are atomic (`crosslayer._atomic.atomic_write`): a reader sees the old file or the complete new one. Readers
check the format name, the version and the checksum, and raise `FormatError` (or a subclass) naming the file and
what is wrong — never another exception, whatever the bytes.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.errors import FormatError, UsageError

_RESERVED = ("format", "version", "crc32")
_CRC_CHUNK = 1 << 24


# ---- JSON documents ---------------------------------------------------------------------------------------------
def _body_checksum(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def document_text(format: str, version: int, body: dict) -> str:
    """The text of a JSON document (see `write_json`), for documents kept inside another file (a PNG text chunk);
    `parse_json` reads it back."""
    clash = [key for key in _RESERVED if key in body]
    if clash:
        raise UsageError(f"body: keys {clash} are reserved for the document header")
    return json.dumps({"format": format, "version": int(version), "crc32": _body_checksum(body), **body}, indent=1)


def write_json(path, format: str, version: int, body: dict) -> None:
    """Writes `body` atomically as a document of `format` and `version`, with the crc32 of the body."""
    text = document_text(format, version, body)
    with atomic_write(path, "w") as handle:
        handle.write(text)


def parse_json(data: bytes, where, format: str, versions, what: str | None = None, error=FormatError) -> dict:
    """The body of the document `data` (see `read_json`); `where` names it in messages."""
    what = what or format
    versions = (versions,) if isinstance(versions, int) else tuple(versions)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise error(f"{where}: not a {what} (not valid JSON)") from None
    if not isinstance(document, dict) or document.get("format") != format:
        raise error(f"{where}: not a {what}")
    version = document.get("version")
    if isinstance(version, bool) or version not in versions:
        readable = ", ".join(str(v) for v in versions)
        raise error(f"{where}: {what} version {version!r}; this crosslayer reads version {readable}")
    body = {key: value for key, value in document.items() if key not in _RESERVED}
    if document.get("crc32") != _body_checksum(body):
        raise error(f"{where}: damaged {what} (checksum mismatch)")
    body["version"] = version
    return body


def read_json(path, format: str, versions, what: str | None = None, error=FormatError) -> dict:
    """The body of a document written by `write_json`, after checking its format, version (one of `versions`, an
    int or a collection) and checksum; ``body["version"]`` is kept for readers of several versions.

    `what` names the file in messages (default: the format name); `error` is the FormatError subclass raised."""
    path = Path(path)
    what = what or format
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no {what} here (file not found)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    return parse_json(data, path, format, versions, what, error)


# ---- code files -------------------------------------------------------------------------------------------------
class CodesFormatError(FormatError):
    """A code file is not one, is of another version, or is damaged."""


def words_per_plane(dt: int) -> int:
    return (int(dt) + 63) // 64


def file_crc(path, start: int = 0, seed: int = 0, length: int | None = None) -> int:
    """crc32 of `path`'s bytes from `start` (`length` of them, default to the end), continuing from `seed`."""
    crc, left = seed, length
    with open(path, "rb") as handle:
        handle.seek(start)
        while left is None or left > 0:
            chunk = handle.read(_CRC_CHUNK if left is None else min(_CRC_CHUNK, left))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            if left is not None:
                left -= len(chunk)
    return crc


CODE_LAYOUTS = ("two_plane", "compact")  # index = the layout field of a version 4 code file


@dataclass(frozen=True)
class CodeFile:
    """The header of a code file and where its parts lie. `parse` checks everything the header alone can tell.
    Written as version 4; version 3 files (64-byte header, 2-plane bits) are still read."""

    n: int
    Dk: int
    Dt: int
    key_bytes: int = 0
    identity: str | None = None
    crc: int = 0
    layout: str = "two_plane"
    version: int = 4

    MAGIC = b"XLCODES\x00"
    VERSION = 4
    VERSIONS = (3, 4)
    HEADER = struct.Struct("<8sIIQIIIQ16sIII")
    HEADER_V3 = struct.Struct("<8sIIQIIIQ16sI")
    IDENTITY_BYTES = 16

    @property
    def words(self) -> int:
        return words_per_plane(self.Dt)

    @property
    def header_struct(self) -> struct.Struct:
        return self.HEADER_V3 if self.version == 3 else self.HEADER

    @property
    def bits_offset(self) -> int:
        return self.header_struct.size

    @property
    def image_words(self) -> int:
        """uint64 words of one image's bits in this file's layout."""
        if self.layout == "compact":
            return (self.Dk + 63) // 64 + self.Dk * self.words
        return self.Dk * 2 * self.words

    @property
    def bits_shape(self) -> tuple:
        if self.layout == "compact":
            return (self.n, self.image_words)
        return (self.n, self.Dk, 2, self.words)

    @property
    def means_offset(self) -> int:
        return self.bits_offset + self.n * self.image_words * 8

    @property
    def keys_offset(self) -> int:
        return self.means_offset + self.n * self.Dk * 4

    @property
    def size(self) -> int:
        return self.keys_offset + self.key_bytes

    def pack(self, crc: int | None = None) -> bytes:
        identity = (self.identity or "").encode("ascii")
        crc = self.crc if crc is None else crc
        if self.version == 3:
            return self.HEADER_V3.pack(self.MAGIC, 3, self.HEADER_V3.size, self.n, self.Dk, self.Dt, self.words,
                                       self.key_bytes, identity, crc)
        return self.HEADER.pack(self.MAGIC, self.version, self.HEADER.size, self.n, self.Dk, self.Dt, self.words,
                                self.key_bytes, identity, CODE_LAYOUTS.index(self.layout), 0, crc)

    def checksum_seed(self) -> int:
        """The crc32 state the payload's checksum continues from: that of the header less its crc field."""
        return zlib.crc32(self.pack(0)[:-4])

    @classmethod
    def parse(cls, header: bytes, where, error=CodesFormatError) -> "CodeFile":
        if len(header) < cls.HEADER_V3.size:
            raise error(f"{where}: truncated header ({len(header)} bytes); not a crosslayer code file")
        magic, version = struct.unpack_from("<8sI", header)
        if magic != cls.MAGIC:
            raise error(f"{where}: not a crosslayer code file (bad magic {magic!r})")
        if version not in cls.VERSIONS:
            raise error(f"{where}: code file version {version}; this crosslayer reads versions 3 and 4")
        layout_code = reserved = 0
        if version == 3:
            _, _, header_size, n, dk, dt, words, key_bytes, identity, crc = cls.HEADER_V3.unpack_from(header)
            expected_size = cls.HEADER_V3.size
        else:
            if len(header) < cls.HEADER.size:
                raise error(f"{where}: truncated header ({len(header)} bytes); not a crosslayer code file")
            (_, _, header_size, n, dk, dt, words, key_bytes, identity, layout_code, reserved,
             crc) = cls.HEADER.unpack_from(header)
            expected_size = cls.HEADER.size
        if (header_size != expected_size or dk < 1 or dt < 1 or words != words_per_plane(dt)
                or layout_code >= len(CODE_LAYOUTS) or reserved != 0):
            raise error(f"{where}: inconsistent header (Dk={dk}, Dt={dt}, words={words}, layout={layout_code})")
        identity = identity.rstrip(b"\x00")
        try:
            text = identity.decode("ascii") if identity else None
        except UnicodeDecodeError:
            raise error(f"{where}: inconsistent header (identity is not ASCII)") from None
        return cls(n, dk, dt, key_bytes, text, crc, CODE_LAYOUTS[layout_code], version)

    @classmethod
    def read_header(cls, path, error=CodesFormatError) -> tuple["CodeFile", int]:
        """(the header of the code file at `path`, the file's size); `error` for anything wrong."""
        try:
            with open(path, "rb") as handle:
                header = handle.read(cls.HEADER.size)
                size = handle.seek(0, 2)
        except OSError as exc:
            raise error(f"{path}: cannot read the code file: {exc.strerror or exc}") from None
        parsed = cls.parse(header, path, error)
        if size != parsed.size:
            raise error(f"{path}: expected {parsed.size} bytes for {parsed.n} codes, file has {size} "
                        "(truncated or extended)")
        return parsed, size

    @staticmethod
    def key_block(keys) -> bytes:
        return b"" if keys is None else json.dumps(list(keys)).encode()

    @classmethod
    def write(cls, path, bits: np.ndarray, channel_mean: np.ndarray, Dt: int, identity=None, keys=None) -> "CodeFile":
        """Writes a code file (version 4) atomically; returns its header (with the crc32). The layout follows
        `bits`: 2-plane (n, Dk, 2, words) or compact (n, words an image, Dk from `channel_mean`)."""
        if identity is not None and (not identity.isascii() or len(identity) > cls.IDENTITY_BYTES):
            raise UsageError(f"identity: expected at most {cls.IDENTITY_BYTES} ASCII characters, got {identity!r}")
        block = cls.key_block(keys)
        payload = (bits.astype("<u8", copy=False).tobytes(), channel_mean.astype("<f4", copy=False).tobytes(), block)
        layout = "compact" if bits.ndim == 2 else "two_plane"
        header = cls(len(bits), channel_mean.shape[1], int(Dt), len(block), identity, layout=layout)
        crc = header.checksum_seed()
        for part in payload:
            crc = zlib.crc32(part, crc)
        with atomic_write(path) as handle:
            handle.write(header.pack(crc))
            for part in payload:
                handle.write(part)
        return CodeFile(header.n, header.Dk, header.Dt, header.key_bytes, identity, crc, layout)

    @classmethod
    def read(cls, path, error=CodesFormatError):
        """(header, bits (`header.bits_shape`) uint64, channel means (n, Dk) float32, keys or None), checksum
        checked."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise error(f"{path}: cannot read the code file: {exc.strerror or exc}") from None
        header = cls.parse(data[: cls.HEADER.size], path, error)
        if len(data) != header.size:
            raise error(f"{path}: expected {header.size} bytes for {header.n} codes, file has {len(data)} "
                        "(truncated or extended)")
        if zlib.crc32(memoryview(data)[header.bits_offset:], header.checksum_seed()) != header.crc:
            raise error(f"{path}: checksum mismatch (file is damaged)")
        n, dk = header.n, header.Dk
        bits = np.frombuffer(data, "<u8", n * header.image_words, header.bits_offset).astype(np.uint64)
        means = np.frombuffer(data, "<f4", n * dk, header.means_offset).astype(np.float32)
        keys = header.parse_keys(data[header.keys_offset:], path, error) if header.key_bytes else None
        return header, bits.reshape(header.bits_shape), means.reshape(n, dk), keys

    def parse_keys(self, block: bytes, where, error=CodesFormatError) -> list:
        try:
            keys = json.loads(block)
        except (ValueError, RecursionError):
            raise error(f"{where}: damaged key block (not valid JSON)") from None
        if not isinstance(keys, list) or len(keys) != self.n or not all(k is None or isinstance(k, str) for k in keys):
            raise error(f"{where}: damaged key block (expected {self.n} strings)")
        return keys

    def verify(self, path, error=CodesFormatError) -> None:
        """Checks the payload on disk against this header's crc32 (reads the file once)."""
        try:
            crc = file_crc(path, self.bits_offset, self.checksum_seed())
        except OSError as exc:
            raise error(f"{path}: cannot read the code file: {exc.strerror or exc}") from None
        if crc != self.crc:
            raise error(f"{path}: checksum mismatch (file is damaged)")


# ---- side arrays (.npy) -----------------------------------------------------------------------------------------
def write_npy(path, array: np.ndarray) -> dict:
    """Writes `array` atomically as a .npy file; returns {"size", "crc32"} of what was written, for a manifest."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    data = buffer.getvalue()
    with atomic_write(path) as handle:
        handle.write(data)
    return {"size": len(data), "crc32": zlib.crc32(data)}


def check_npy(path, size: int, crc32: int | None, error=FormatError) -> None:
    """Checks a side array file's size (and, given `crc32`, its checksum) against its manifest entry."""
    try:
        actual = Path(path).stat().st_size
        if actual != size:
            raise error(f"{path}: {actual} bytes, the manifest commits {size} (truncated or extended)")
        if crc32 is not None and file_crc(path) != crc32:
            raise error(f"{path}: checksum mismatch (side array is damaged)")
    except OSError as exc:
        raise error(f"{path}: committed side array is missing or unreadable ({exc.strerror or exc})") from None


def _npy_header(dtype, shape) -> bytes:
    """The .npy header `np.save` writes for a C-ordered array of `dtype` and `shape` (format 1.0)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def open_npy(path, dtype: str, shape: tuple, error=FormatError) -> np.ndarray:
    """A read-only memory map of a .npy file, refused unless its header is exactly the one `write_npy` writes for
    `dtype` and `shape` (the header is compared, never parsed: numpy's parser raises arbitrary errors on damage)."""
    header = _npy_header(dtype, shape)
    try:
        with open(path, "rb") as handle:
            found = handle.read(len(header))
    except OSError as exc:
        raise error(f"{path}: not a readable side array ({exc.strerror or exc})") from None
    if found != header:
        raise error(f"{path}: not a side array of {np.dtype(dtype)} {tuple(shape)} (header differs)")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=len(header), shape=tuple(shape))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not a readable side array ({exc})") from None


# ---- zip documents (the encoder file) ---------------------------------------------------------------------------
_ZIP_DOCUMENT = "document.json"
_MAX_MEMBER_BYTES = 1 << 30
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError, NotImplementedError,
               RuntimeError, zlib.error, struct.error)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_zip_document(path, format: str, version: int, body: dict, arrays: dict) -> None:
    """Writes a zip of a JSON document (`body` plus each array's crc32, dtype and shape) and the arrays as .npy."""
    blobs = {name: _npy_bytes(array) for name, array in arrays.items()}
    described = {name: {"crc32": zlib.crc32(blob), "dtype": np.asarray(arrays[name]).dtype.str,
                        "shape": list(np.shape(arrays[name]))} for name, blob in blobs.items()}
    text = document_text(format, version, {**body, "arrays": described})
    with atomic_write(path) as handle:
        with zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(_ZIP_DOCUMENT, text)
            for name, blob in blobs.items():
                archive.writestr(f"{name}.npy", blob)


def _zip_member(archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > _MAX_MEMBER_BYTES:
        raise UsageError(f"{name} claims {info.file_size} bytes")
    return archive.read(info)


def read_zip_document(path, format: str, versions, what: str, error=FormatError, arrays: bool = True):
    """(body, {name: array}) of a file written by `write_zip_document`, every checksum, dtype and shape checked;
    with ``arrays=False`` only the body (the arrays are neither read nor checked)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            body = parse_json(_zip_member(archive, _ZIP_DOCUMENT), path, format, versions, what, error)
            described = body.get("arrays")
            if not isinstance(described, dict):
                raise error(f"{path}: damaged {what} (no array table)")
            if not arrays:
                return body, {}
            loaded = {}
            for name, entry in described.items():
                blob = _zip_member(archive, f"{name}.npy")
                if not isinstance(entry, dict) or zlib.crc32(blob) != entry.get("crc32"):
                    raise error(f"{path}: damaged {what} (array {name!r} fails its checksum)")
                array = np.load(io.BytesIO(blob), allow_pickle=False)
                if array.dtype.str != entry.get("dtype") or list(array.shape) != entry.get("shape"):
                    raise error(f"{path}: damaged {what} (array {name!r} is not the {entry.get('dtype')} "
                                f"{entry.get('shape')} recorded)")
                loaded[name] = array
    except FileNotFoundError:
        raise error(f"{path}: no {what} here (file not found)") from None
    except _ZIP_ERRORS as exc:
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None
    return body, loaded
