"""`CodeIndex`: a keyed, crash-safe on-disk store of sign codes with optional side arrays, searched through memory maps.

Directory layout (format version 4; files described in `crosslayer.formats`)::

    MANIFEST.json               the commit (a `formats` JSON document "crosslayer-code-index"): Dk, Dt, layout
                                ("compact", "two_plane", or null until the first codes arrive), count,
                                identity (encoder digest or null), side (name -> dtype, trailing shape), segments
                                (file, count, id_base, size, crc32, keys, side files with size and crc32), deleted
                                (sorted tombstoned ids), next_segment, attributes (a caller's JSON, e.g. the image
                                index's root and failed images)
    seg-00000000.xlc            one segment per append: a code file (with its keys in the key block, if any)
    seg-00000000.NAME.npy       that segment's rows of side array NAME
    WRITER.lock                 fcntl lock held by the single writer

Every change (append, delete, compact, attributes) writes its new files first and then atomically replaces the
manifest: a crash leaves the previous commit or the new one. Files a crash left behind (and files a compaction
replaced) are removed when the next writer opens. Readers take no lock: they read the segments of the manifest
they opened (a consistent snapshot) while a writer commits; `reload()` picks up later commits. A compaction removes
the files it replaced, so a reader opened before it reloads (segments it has already mapped stay readable).

Ids are int64 in append order. Deleted ids are tombstones: `search` skips them exactly (it asks the kernel for k plus
the number deleted and drops them), `get`/`keys`/`side` refuse them, `live_ids()` lists the others. `compact()`
rewrites the segments holding tombstones and renumbers the live items 0..n-1 in their old order (ids change).

Layout: every segment of an index holds its codes in the index's layout (`crosslayer.compact`): set at `create`
or else by the first codes appended; later codes are converted to it (a 2-plane code with a partly-zero channel
cannot join a compact index: UsageError). A version 3 index (before compact codes) opens, is searched and keeps the
2-plane layout when appended to; its manifest is rewritten as version 4 at the next commit.

Verification (`open(..., verify=)`): "lazy" (default) checks each segment's crc32 and bits, and each side array's
crc32, the first time anything reads it in this open — a flipped byte gives a CodeIndexError, never a changed score;
"full" checks everything at open; "none" checks sizes and headers only. `verify()` lists every problem found.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import re
from pathlib import Path

import numpy as np

from crosslayer import compact as _compact
from crosslayer.codes import Codes, IdentityMismatchError, identity_for_index, invalid_bits_reason
from crosslayer.errors import CrossLayerError, FormatError, UsageError
from crosslayer.formats import CodeFile, check_npy, file_crc, open_npy, read_json, write_json, write_npy
from crosslayer.search import check_search_args, masked_nonzero_counts, search_segments, select_channels

MANIFEST_NAME = "MANIFEST.json"
LOCK_NAME = "WRITER.lock"
INDEX_FORMAT = "crosslayer-code-index"
INDEX_VERSION = 4
INDEX_VERSIONS = (3, 4)  # 3: no layout field, 2-plane codes
VERIFY_POLICIES = ("lazy", "full", "none")
_SEGMENT_FILE = re.compile(r"^seg-\d{8}(\.xlc|\.[A-Za-z0-9_]+\.npy)$")
_SIDE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


# Bytes of a segment the lazy/full check reads at a time (its pages are dropped after each chunk).
_VERIFY_CHUNK_BYTES = 64 << 20


def _drop_resident_pages(*maps) -> None:
    """Unmaps the pages the process touched through these read-only file maps (they stay in the page cache)."""
    for array in maps:
        handle = getattr(array, "_mmap", None)
        if handle is not None and hasattr(mmap, "MADV_DONTNEED") and len(handle):
            handle.madvise(mmap.MADV_DONTNEED)


class CodeIndexError(CrossLayerError, ValueError):
    """The index is missing, damaged, of another version, locked by another writer, or misused."""


class CodeIndexFormatError(CodeIndexError, FormatError):
    """A file of the index is damaged, truncated, missing or of another version."""


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _declare_side(side: dict | None) -> dict:
    """{name: {"dtype", "shape"}} from {name: (dtype, trailing shape)}."""
    declared = {}
    for name, spec in (side or {}).items():
        if not isinstance(name, str) or not _SIDE_NAME.match(name):
            raise UsageError(f"side: names are 1-64 letters, digits or underscores, got {name!r}")
        try:
            dtype, shape = spec
            dtype = np.dtype(dtype)
            shape = [int(s) for s in shape]
        except (TypeError, ValueError):
            raise UsageError(f"side[{name!r}]: expected (dtype, trailing shape), got {spec!r}") from None
        if dtype.hasobject or any(s < 0 for s in shape):
            raise UsageError(f"side[{name!r}]: expected a plain dtype and a non-negative shape, got {spec!r}")
        declared[name] = {"dtype": dtype.str, "shape": shape}
    return declared


class CodeIndex:
    """Sign codes on disk. Use `CodeIndex.create(path, Dk, Dt)` or `CodeIndex.open(path, mode="r"|"a")`."""

    def __init__(self, path: Path, manifest: dict, lock_handle=None, verify: str = "lazy"):
        self.path = path
        self._manifest = manifest
        self._lock = lock_handle
        self._verify_policy = verify
        self._maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._side_maps: dict[str, np.ndarray] = {}
        self._checked: set[str] = set()  # files whose checksum was verified in this open
        self._key_tables: dict[str, list | None] = {}
        self._key_ids: dict | None = None  # live key -> id, built on first use for this manifest

    # ---- opening ------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, Dk: int, Dt: int, identity: str | None = None, side: dict | None = None,
               layout: str | None = None) -> "CodeIndex":
        """Creates an empty index in a new (or empty) directory and returns it open for appending.

        layout: "compact" or "two_plane", the layout its segments store (None: that of the first codes appended).

        identity: the encoder digest every appended code must carry (None: taken from the first codes that carry
        one). side: {name: (dtype, trailing shape)} of the side arrays every append gives (else fixed by the first
        append that gives any)."""
        dk, dt = _positive_int(Dk, "Dk"), _positive_int(Dt, "Dt")
        if identity is not None:
            Codes.empty(dk, dt, identity)  # checks its form
        declared = _declare_side(side)
        if layout is not None:
            _compact.check_layout(layout)
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CodeIndexError(f"{path}: exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = cls._acquire_writer_lock(path)
        manifest = {"Dk": dk, "Dt": dt, "layout": layout, "count": 0, "identity": identity, "side": declared,
                    "segments": [],
                    "deleted": [], "next_segment": 0, "attributes": {}}
        index = cls(path, manifest, lock)
        index._commit(manifest)
        return index

    @classmethod
    def open(cls, path, mode: str = "r", verify: str = "lazy") -> "CodeIndex":
        """Opens an index for reading (mode "r") or for changing too (mode "a", one writer at a time).

        verify: "lazy" (each segment checked the first time it is read), "full" (everything checked now) or "none"
        (sizes and headers only)."""
        if mode not in ("r", "a"):
            raise UsageError(f"mode: expected 'r' or 'a', got {mode!r}")
        if verify not in VERIFY_POLICIES:
            raise UsageError(f"verify: expected one of {VERIFY_POLICIES}, got {verify!r}")
        path = Path(path)
        if not (path / MANIFEST_NAME).is_file():
            raise CodeIndexError(f"{path}: not a crosslayer code index (no {MANIFEST_NAME})")
        lock = cls._acquire_writer_lock(path) if mode == "a" else None
        try:
            index = cls(path, cls._read_manifest(path), lock, verify)
            index._check_segments()
            if verify == "full":
                problems = index.verify()
                if problems:
                    raise CodeIndexFormatError("; ".join(problems))
            if lock is not None:
                index._remove_uncommitted_files()
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return index

    @staticmethod
    def _acquire_writer_lock(path: Path):
        try:
            handle = open(path / LOCK_NAME, "a+b")
        except OSError as exc:
            raise CodeIndexError(f"{path}: cannot open the index for writing: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CodeIndexError(f"{path}: another process has the index open for appending") from None
        return handle

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        file = path / MANIFEST_NAME
        body = read_json(file, INDEX_FORMAT, INDEX_VERSIONS, "crosslayer code index manifest", CodeIndexFormatError)
        if body["version"] == 3:
            body["layout"] = _compact.TWO_PLANE
        try:
            _check_manifest(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CodeIndexFormatError(f"{file}: damaged manifest ({type(exc).__name__}: {exc})") from None
        return body

    def _commit(self, body: dict) -> None:
        body = {key: value for key, value in body.items() if key != "version"}
        write_json(self.path / MANIFEST_NAME, INDEX_FORMAT, INDEX_VERSION, body)
        self._manifest = body
        self._key_ids = None

    def _check_segments(self) -> None:
        """Sizes and headers of every committed file against the manifest (cheap: a stat and 64 bytes each)."""
        for segment in self._manifest["segments"]:
            file = self.path / segment["file"]
            try:
                header, size = CodeFile.read_header(file, CodeIndexFormatError)
            except CodeIndexFormatError as exc:
                raise CodeIndexFormatError(f"committed segment is missing, truncated or damaged: {exc}") from None
            if (size, header.n, header.Dk, header.Dt, header.crc, header.key_bytes > 0, header.identity,
                    header.layout) != (
                segment["size"], segment["count"], self.Dk, self.Dt, segment["crc32"], segment["keys"],
                self.identity if header.identity is not None else None, self.layout,
            ):
                raise CodeIndexFormatError(f"{file}: segment header does not match the manifest (damaged)")
            for name, entry in segment["side"].items():
                check_npy(self.path / entry["file"], entry["size"], None, CodeIndexFormatError)

    def _ensure_verified(self, file: str, check) -> None:
        if self._verify_policy != "none" and file not in self._checked:
            check()
            self._checked.add(file)

    def _verify_segment(self, segment: dict) -> None:
        file = self.path / segment["file"]
        header, _ = CodeFile.read_header(file, CodeIndexFormatError)
        header.verify(file, CodeIndexFormatError)
        # codes are checked when saved; a file made by another tool may still break the layout's rules. The check
        # reads a map of its own, chunk by chunk, dropping each chunk's pages: checking a large index must not leave
        # all of it resident in this process (the searches that follow touch only what they read).
        bits, means = self._map_segment(file, header, segment)
        try:
            rows = max(1, _VERIFY_CHUNK_BYTES // max(bits[0].nbytes if len(bits) else 1, means.shape[1] * 4, 1))
            for start in range(0, len(bits), rows):
                chunk = bits[start:start + rows]
                reason = (_compact.invalid_compact_reason(chunk, self.Dk, self.Dt) if self.layout == _compact.COMPACT
                          else invalid_bits_reason(chunk, self.Dt))
                if reason is not None:
                    reason = re.sub(r"^item (\d+)", lambda found: f"item {start + int(found.group(1))}", reason)
                    raise CodeIndexFormatError(f"{file}: invalid code bits: {reason}")
                if not np.isfinite(means[start:start + rows]).all():
                    raise CodeIndexFormatError(f"{file}: non-finite channel means")
                _drop_resident_pages(bits, means)
        finally:
            del bits, means
        if segment["keys"]:
            self._read_key_table(segment)

    def verify(self) -> list[str]:
        """Checks every committed file against its checksum and the layout's rules; returns every problem found
        (an empty list: the index is sound). Reads the whole index."""
        self._require_open()
        problems = []
        try:
            self._check_segments()
        except CodeIndexError as exc:
            problems.append(str(exc))
        for segment in self._manifest["segments"]:
            try:
                self._verify_segment(segment)
                self._checked.add(segment["file"])
            except CrossLayerError as exc:
                problems.append(str(exc))
            for entry in segment["side"].values():
                try:
                    check_npy(self.path / entry["file"], entry["size"], entry["crc32"], CodeIndexFormatError)
                    self._checked.add(entry["file"])
                except CrossLayerError as exc:
                    problems.append(str(exc))
        return problems

    def _committed_files(self) -> set[str]:
        files = set()
        for segment in self._manifest["segments"]:
            files.add(segment["file"])
            files.update(entry["file"] for entry in segment["side"].values())
        return files

    def _remove_uncommitted_files(self) -> None:
        committed = self._committed_files()
        for entry in self.path.iterdir():
            leftover_segment = _SEGMENT_FILE.match(entry.name) and entry.name not in committed
            leftover_temporary = entry.name.startswith(".") and entry.name.endswith(".tmp")
            if leftover_segment or leftover_temporary:
                entry.unlink(missing_ok=True)

    def reload(self) -> None:
        """Reads the current manifest (picks up commits made since this index was opened)."""
        self._require_open()
        self._manifest = self._read_manifest(self.path)
        self._key_ids = None
        self._check_segments()

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def Dk(self) -> int:
        return self._manifest["Dk"]

    @property
    def Dt(self) -> int:
        return self._manifest["Dt"]

    @property
    def identity(self) -> str | None:
        """The digest of the encoder the codes were made with (None: not recorded)."""
        return self._manifest["identity"]

    @property
    def side_names(self) -> list[str]:
        return sorted(self._manifest["side"])

    @property
    def attributes(self) -> dict:
        """The caller's JSON committed with the index (`append(..., attributes=)`, `set_attributes`)."""
        return json.loads(json.dumps(self._manifest["attributes"]))

    def attribute(self, name: str, default=None):
        """One of `attributes` (a copy), without copying all of them (the index's failures may be many)."""
        value = self._manifest["attributes"].get(name, default)
        return value if isinstance(value, (str, int, float, bool, type(None))) else json.loads(json.dumps(value))

    @property
    def deleted(self) -> int:
        """How many items are tombstoned (search skips them; `compact` reclaims their space)."""
        return len(self._manifest["deleted"])

    def __len__(self) -> int:
        """Items committed, deleted ones included (ids run 0..len-1); `live_count` excludes them."""
        return self._manifest["count"]

    @property
    def live_count(self) -> int:
        return len(self) - self.deleted

    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def bytes_on_disk(self) -> int:
        """Bytes of the committed files (segments, side arrays, manifest)."""
        self._require_open()
        total = 0
        for name in (*self._committed_files(), MANIFEST_NAME):
            try:
                total += (self.path / name).stat().st_size
            except OSError:
                pass
        return total

    def summary(self) -> dict:
        return {"count": self.live_count, "deleted": self.deleted, "bytes": self.bytes_on_disk,
                "identity": self.identity, "Dk": self.Dk, "Dt": self.Dt, "segments": len(self._manifest["segments"]),
                "side": {name: dict(spec) for name, spec in self._manifest["side"].items()}}

    def __repr__(self) -> str:
        return (f"CodeIndex({str(self.path)!r}, n={len(self)}, deleted={self.deleted}, Dk={self.Dk}, Dt={self.Dt}, "
                f"segments={len(self._manifest['segments'])})")

    # ---- changing -------------------------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        self._require_open()
        if not self.writable:
            raise CodeIndexError(f"{self.path}: opened read-only; open with mode='a' to change it")

    def append(self, codes: Codes, keys=None, side: dict | None = None, attributes: dict | None = None) -> np.ndarray:
        """Commits `codes` with optional string `keys` (one per item, unique among the live items) and side
        arrays ({name: (n, ...) array}, the names, dtypes and trailing shapes the index declares), and returns their
        ids (int64). `attributes`, when given, replaces the index's attributes in the same commit."""
        self._require_writable()
        if not isinstance(codes, Codes):
            raise TypeError(f"codes: expected crosslayer.Codes, got {type(codes).__name__}")
        if (codes.Dk, codes.Dt) != (self.Dk, self.Dt):
            raise UsageError(f"codes: Dk={codes.Dk}, Dt={codes.Dt} differs from the index (Dk={self.Dk}, Dt={self.Dt})")
        identity = identity_for_index(self.identity, "codes", codes.identity)
        layout = self.layout if self.layout is not None else (codes.layout if len(codes) else None)
        if layout is not None and codes.layout != layout:
            try:
                codes = codes.to_layout(layout)
            except UsageError as exc:
                raise UsageError(f"codes: cannot join an index of {layout} codes: {exc}") from None
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys: expected a sequence of strings, one per item, got a single string")
        if keys is not None:
            keys = list(keys)
            if len(keys) != len(codes) or not all(isinstance(key, str) for key in keys):
                raise UsageError(f"keys: expected {len(codes)} strings (one per item)")
            self._check_new_keys(keys)
        declared, side_rows = self._check_side(side or {}, len(codes))
        attributes = self._check_attributes(attributes)
        id_base = len(self)
        manifest = dict(self._manifest, identity=identity, side=declared, layout=layout)
        if attributes is not None:
            manifest["attributes"] = attributes
        if len(codes) == 0:
            if manifest != self._manifest:
                self._commit(manifest)
            return np.zeros(0, np.int64)
        segment = self._write_segment(manifest["next_segment"], codes, keys, side_rows, identity)
        manifest.update(count=id_base + len(codes), segments=self._manifest["segments"] + [dict(segment, id_base=id_base)],
                        next_segment=manifest["next_segment"] + 1)
        self._commit(manifest)
        return np.arange(id_base, id_base + len(codes), dtype=np.int64)

    def adopt(self, code_file, side_files: dict | None = None, attributes: dict | None = None) -> np.ndarray:
        """Commits a segment written elsewhere (a worker of a distributed build) by renaming its files into the
        index — nothing is copied — and returns its ids. `code_file`: a code file (`Codes.save`, with keys) on the
        index's file system; side_files: {name: .npy file (`formats.write_npy`)} for every side array the index
        declares. Everything is checked first (checksum, code bits, Dk/Dt, identity, keys new and unique, side
        array shapes): a bad file raises CodeIndexFormatError/UsageError and the index is unchanged."""
        self._require_writable()
        code_file, side_files = Path(code_file), {name: Path(p) for name, p in (side_files or {}).items()}
        header, size = CodeFile.read_header(code_file, CodeIndexFormatError)
        header.verify(code_file, CodeIndexFormatError)
        if (header.Dk, header.Dt) != (self.Dk, self.Dt):
            raise UsageError(f"code_file: Dk={header.Dk}, Dt={header.Dt} differs from the index "
                             f"(Dk={self.Dk}, Dt={self.Dt})")
        identity = identity_for_index(self.identity, "code_file", header.identity, "the codes of the file")
        try:
            codes = Codes.load(code_file)  # checks the bits and the key block
        except CrossLayerError as exc:
            raise CodeIndexFormatError(f"{code_file}: {exc}") from None
        if codes.keys is None or any(key is None for key in codes.keys):
            raise UsageError(f"code_file: {code_file} has no key for every item (save it with keys)")
        if self.layout is not None and header.layout != self.layout:
            # the index keeps one layout: the file is rewritten in it (in place, atomically) before it is renamed in
            try:
                codes.to_layout(self.layout).save(code_file)
            except UsageError as exc:
                raise UsageError(f"code_file: cannot join an index of {self.layout} codes: {exc}") from None
            header, size = CodeFile.read_header(code_file, CodeIndexFormatError)
        self._check_new_keys(codes.keys)
        declared, side_entries = self._adopted_side(side_files, header.n)
        attributes = self._check_attributes(attributes)
        number, id_base = self._manifest["next_segment"], len(self)
        name = f"seg-{number:08d}"
        segment = {"file": f"{name}.xlc", "count": header.n, "size": size, "crc32": header.crc, "keys": True,
                   "side": {}, "id_base": id_base}
        code_file.rename(self.path / segment["file"])
        for side_name, path in side_files.items():
            file = f"{name}.{side_name}.npy"
            path.rename(self.path / file)
            segment["side"][side_name] = {"file": file, **side_entries[side_name]}
        manifest = dict(self._manifest, identity=identity, side=declared, layout=header.layout, count=id_base + header.n,
                        segments=self._manifest["segments"] + [segment], next_segment=number + 1)
        if attributes is not None:
            manifest["attributes"] = attributes
        self._commit(manifest)
        return np.arange(id_base, id_base + header.n, dtype=np.int64)

    def _adopted_side(self, side_files: dict, n: int) -> tuple[dict, dict]:
        """(the side declaration after adopting, {name: {"size", "crc32"}}) of a segment's side array files."""
        declared = self._manifest["side"]
        if not declared and side_files:
            if len(self) > 0:
                raise UsageError(f"side_files: the index holds {len(self)} items without side arrays")
            found = {}
            for name, path in side_files.items():
                try:
                    array = np.load(path, mmap_mode="r", allow_pickle=False)
                except Exception as exc:  # numpy's header parser raises arbitrary errors on damage
                    raise CodeIndexFormatError(f"{path}: not a readable .npy file ({exc})") from None
                found[name] = (array.dtype, array.shape[1:])
                del array
            declared = _declare_side(found)
        missing, unknown = sorted(set(declared) - set(side_files)), sorted(set(side_files) - set(declared))
        if missing or unknown:
            raise UsageError(f"side_files: the index declares {sorted(declared)}; missing {missing}, unknown {unknown}")
        entries = {}
        for name, path in side_files.items():
            spec = declared[name]
            open_npy(path, spec["dtype"], (n, *spec["shape"]), CodeIndexFormatError)  # the exact header, n rows
            try:
                entries[name] = {"size": path.stat().st_size, "crc32": file_crc(path)}
            except OSError as exc:
                raise CodeIndexFormatError(f"{path}: unreadable ({exc.strerror or exc})") from None
        return declared, entries

    def set_attributes(self, attributes: dict) -> None:
        """Commits `attributes` (JSON) as the index's attributes."""
        self._require_writable()
        self._commit(dict(self._manifest, attributes=self._check_attributes(attributes)))

    @staticmethod
    def _check_attributes(attributes):
        if attributes is None:
            return None
        try:
            return json.loads(json.dumps(attributes))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"attributes: expected a JSON-serialisable dict ({exc})") from None

    def _check_new_keys(self, keys: list) -> None:
        seen, repeated = set(), []
        for key in keys:
            if key in seen:
                repeated.append(key)
            seen.add(key)
        if repeated:
            raise UsageError(f"keys: given more than once: {repeated[:5]}")
        present = [key for key in keys if key in self._live_key_ids()]
        if present:
            raise UsageError(f"keys: already in the index: {present[:5]} (delete them first)")

    def _check_side(self, side: dict, n: int) -> tuple[dict, dict]:
        """(the side declaration after this append, {name: rows as declared})."""
        if not isinstance(side, dict):
            raise TypeError(f"side: expected a dict of arrays, got {type(side).__name__}")
        side = {name: np.asarray(value) for name, value in side.items()}
        declared = self._manifest["side"]
        if not declared and side:
            if len(self) > 0:
                raise UsageError(f"side: the index holds {len(self)} items without side arrays; side arrays are "
                                 "declared at create or by the first append")
            declared = _declare_side({name: (array.dtype, array.shape[1:]) for name, array in side.items()})
        missing, unknown = sorted(set(declared) - set(side)), sorted(set(side) - set(declared))
        if missing or unknown:
            raise UsageError(f"side: the index declares {sorted(declared)}; missing {missing}, unknown {unknown}")
        rows = {}
        for name, spec in declared.items():
            array, dtype = side[name], np.dtype(spec["dtype"])
            if array.shape != (n, *spec["shape"]):
                raise UsageError(f"side[{name!r}]: expected shape {(n, *spec['shape'])}, got {array.shape}")
            if array.dtype != dtype and not np.can_cast(array.dtype, dtype, "same_kind"):
                raise UsageError(f"side[{name!r}]: expected dtype {dtype}, got {array.dtype}")
            rows[name] = array.astype(dtype, copy=False)
        return declared, rows

    def _write_segment(self, number: int, codes: Codes, keys, side_rows: dict, identity) -> dict:
        """Writes a segment's files (uncommitted until the manifest names them); returns its manifest entry."""
        name = f"seg-{number:08d}"
        stamped = Codes._from_valid_bits(codes.bits, codes.channel_mean, codes.Dt, identity)
        stamped.save(self.path / f"{name}.xlc", keys=keys)  # checks the bits and means first
        # the checksum of what reached the disk: a write damaged on its way there fails the header's own checksum
        header, size = CodeFile.read_header(self.path / f"{name}.xlc", CodeIndexFormatError)
        header.verify(self.path / f"{name}.xlc", CodeIndexFormatError)
        side = {}
        for side_name, array in side_rows.items():
            file = f"{name}.{side_name}.npy"
            side[side_name] = {"file": file, **write_npy(self.path / file, array)}
        return {"file": f"{name}.xlc", "count": len(codes), "size": size, "crc32": header.crc,
                "keys": keys is not None, "side": side}

    def delete(self, ids) -> int:
        """Tombstones `ids` (committed atomically); returns how many were not deleted already."""
        self._require_writable()
        ids, _ = self._locate(ids, allow_deleted=True)
        deleted = set(self._manifest["deleted"])
        new = set(int(i) for i in ids) - deleted
        if new:
            self._commit(dict(self._manifest, deleted=sorted(deleted | new)))
        return len(new)

    def delete_keys(self, keys) -> int:
        """Tombstones the live items of `keys`; UsageError naming absent keys (nothing is deleted then)."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys: expected a sequence of strings, got a single string")
        keys = list(keys)
        ids = self.find(keys)
        absent = [key for key, i in zip(keys, ids) if i < 0]
        if absent:
            raise UsageError(f"keys: not in the index: {absent[:5]}; nothing was deleted")
        return self.delete(ids)

    def compact(self) -> dict:
        """Rewrites the segments holding tombstones with their live items only and renumbers the live items
        0..n-1 in their old order: IDS CHANGE. Crash-safe (new files, then one manifest commit). Returns
        {"removed": items dropped, "bytes_before", "bytes_after"}."""
        self._require_writable()
        before = self.bytes_on_disk
        deleted = np.asarray(self._manifest["deleted"], np.int64)
        if deleted.size == 0:
            return {"removed": 0, "bytes_before": before, "bytes_after": before}
        number = self._manifest["next_segment"]
        segments, id_base = [], 0
        for segment in self._manifest["segments"]:
            ids = np.arange(segment["id_base"], segment["id_base"] + segment["count"])
            live = ids[~np.isin(ids, deleted)]
            if len(live) == len(ids):
                segments.append(dict(segment, id_base=id_base))
            elif len(live):
                codes = self.get(live)
                keys = self.keys(live) if segment["keys"] else None
                side = {name: self.side(name, live) for name in segment["side"]}
                segments.append(dict(self._write_segment(number, codes, keys, side, self.identity), id_base=id_base))
                number += 1
            id_base += len(live)
        self._commit(dict(self._manifest, count=id_base, segments=segments, deleted=[], next_segment=number))
        self._maps.clear()
        self._side_maps.clear()
        self._key_tables.clear()
        self._remove_uncommitted_files()
        return {"removed": int(deleted.size), "bytes_before": before, "bytes_after": self.bytes_on_disk}

    # ---- reading --------------------------------------------------------------------------------------------------
    def _open_segment(self, segment: dict) -> tuple[np.ndarray, np.ndarray]:
        if segment["file"] not in self._maps:
            file = self.path / segment["file"]
            # the file's own header: a version 3 index keeps its version 3 segments (64-byte header)
            header, _ = CodeFile.read_header(file, CodeIndexFormatError)
            self._maps[segment["file"]] = self._map_segment(file, header, segment)
        return self._maps[segment["file"]]

    def _map_segment(self, file: Path, header, segment: dict) -> tuple[np.ndarray, np.ndarray]:
        """Read-only memory maps of a segment file's bits and channel means, after checking its header against the
        manifest's `segment`."""
        if (header.n, header.Dk, header.Dt, header.layout) != (segment["count"], self.Dk, self.Dt, self.layout):
            raise CodeIndexFormatError(f"{file}: segment header does not match the manifest (damaged)")
        try:
            bits = np.memmap(file, dtype="<u8", mode="r", offset=header.bits_offset, shape=header.bits_shape)
            means = np.memmap(file, dtype="<f4", mode="r", offset=header.means_offset, shape=(header.n, header.Dk))
        except (OSError, ValueError) as exc:
            raise CodeIndexFormatError(f"{file}: cannot map the segment ({exc})") from None
        return bits, means

    def _segment_arrays(self, segment: dict) -> tuple[np.ndarray, np.ndarray]:
        """Memory maps of a segment's bits (n, Dk, 2, words), or compact (n, words), and channel means (n, Dk),
        verified per the policy."""
        self._ensure_verified(segment["file"], lambda: self._verify_segment(segment))
        return self._open_segment(segment)

    def _scattered_bits(self, segment: dict) -> np.ndarray:
        """A segment's bits mapped a second time for reads of a few items' channels (re-ranking): without readahead,
        so a cold read fetches the pages asked for, not the ~128 kB around each (the sequential scan keeps it)."""
        bits = self._segment_arrays(segment)[0]
        key = segment["file"] + "#scattered"
        if key not in self._maps:
            scattered = np.memmap(self.path / segment["file"], dtype="<u8", mode="r", offset=bits.offset,
                                  shape=bits.shape)
            if len(bits) and hasattr(mmap, "MADV_RANDOM"):
                scattered._mmap.madvise(mmap.MADV_RANDOM)
            self._maps[key] = (scattered, None)
        return self._maps[key][0]

    def _deleted_array(self) -> np.ndarray:
        return np.asarray(self._manifest["deleted"], np.int64)

    def segment_files(self) -> list[tuple[str, int]]:
        """(file, item count) of each committed segment, in id order (groups of them: `search(segments=)`)."""
        self._require_open()
        return [(segment["file"], segment["count"]) for segment in self._manifest["segments"]]

    def live_ids(self) -> np.ndarray:
        """The ids not deleted, increasing (int64)."""
        self._require_open()
        everything = np.arange(len(self), dtype=np.int64)
        return everything[~np.isin(everything, self._deleted_array())] if self.deleted else everything

    def search(self, queries: Codes, k: int = 10, channels: int | None = 50, num_threads: int = 0,
               normalize: bool = False, segments=None):
        """Masked top-k over the live items (see `crosslayer.search`): (scores, ids int64), each
        (n_queries, min(k, live items)), by decreasing raw score, ties to the smaller id.

        Raw scores (int32) are exact ternary dot products over the query's `channels` selected guidance channels.
        With ``normalize=True`` each reported score is divided by sqrt(nnz_q * nnz_x), the nonzero counts of the
        query and the item over those same channels (float64 in [-1, 1], 0 where either is all zero); the ranking
        stays the raw one (`crosslayer.reference.masked_cosine_reference`).

        segments: search only these segment files (a group of `segment_files()`; ids stay the index's): the top-k of
        each group of a partition, merged by (decreasing raw score, id), is the top-k of the whole index."""
        k, channels = self._check_queries(queries, k, channels)
        chosen = self._manifest["segments"]
        if segments is not None:
            unknown = set(segments) - {segment["file"] for segment in chosen}
            if unknown:
                raise UsageError(f"segments: not committed segments of the index: {sorted(unknown)[:5]}")
            chosen = [segment for segment in chosen if segment["file"] in set(segments)]
        searched = sum(segment["count"] for segment in chosen)
        deleted = self._deleted_array()
        if segments is not None:
            inside = np.zeros(len(deleted), bool)
            for segment in chosen:
                inside |= (deleted >= segment["id_base"]) & (deleted < segment["id_base"] + segment["count"])
            deleted = deleted[inside]
            if not chosen:
                empty = np.zeros((len(queries), 0), np.float64 if normalize else np.int32)
                return empty, np.zeros((len(queries), 0), np.int64)
        arrays = [(self._segment_arrays(s)[0], s["id_base"]) for s in chosen]
        scores, ids = search_segments(self._in_layout(queries), arrays, k + len(deleted), channels, num_threads)
        if len(deleted):
            keep = min(k, searched - len(deleted))
            # stable: the live hits keep their order (decreasing score, ties to the smaller id)
            order = np.argsort(np.isin(ids, deleted), axis=1, kind="stable")[:, :keep]
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        if normalize:
            scores = self.normalized_scores(queries, scores, ids, channels)
        return scores, ids

    def _check_queries(self, queries: Codes, k, channels) -> tuple[int, int]:
        self._require_open()
        if not isinstance(queries, Codes):
            raise TypeError(f"queries: expected crosslayer.Codes, got {type(queries).__name__}")
        if (queries.Dk, queries.Dt) != (self.Dk, self.Dt):
            raise UsageError(f"queries: Dk={queries.Dk}, Dt={queries.Dt} differs from the index (Dk={self.Dk}, Dt={self.Dt})")
        identity_for_index(self.identity, "queries", queries.identity)
        return check_search_args(queries, k, channels, self.Dk)

    @property
    def layout(self) -> str | None:
        """The layout of the stored codes: "compact", "two_plane", or None while an index created without one is
        empty."""
        self._require_open()
        return self._manifest.get("layout")

    def _in_layout(self, queries: Codes) -> Codes:
        """`queries` in the index's layout (UsageError naming them when a partly-zero channel has no compact form)."""
        if self.layout is None or queries.layout == self.layout:
            return queries
        try:
            return queries.to_layout(self.layout)
        except UsageError as exc:
            raise UsageError(f"queries: cannot search an index of {self.layout} codes: {exc}") from None

    def rerank(self, queries: Codes, candidates, k: int = 10, channels: int | None = 50, num_threads: int = 0,
               normalize: bool = False):
        """`search` restricted to each query's `candidates` (nq, m) int64 ids (-1 pads; deleted or repeated ids are
        dropped): the same exact masked scores, order and ties (to the smaller id), read from the candidates' codes
        only. Rows with fewer than k usable candidates are padded with score 0 and id -1."""
        k, channels = self._check_queries(queries, k, channels)
        queries = self._in_layout(queries)
        candidates = np.asarray(candidates, np.int64)
        if candidates.ndim != 2 or len(candidates) != len(queries):
            raise UsageError(f"candidates: expected ({len(queries)}, m) ids, got shape {candidates.shape}")
        keep = min(k, self.live_count)
        scores = np.zeros((len(queries), keep), np.int32)
        ids = np.full((len(queries), keep), -1, np.int64)
        deleted = self._deleted_array()
        selection = select_channels(queries.channel_mean, channels)
        self._prefetch(candidates[(candidates >= 0) & (candidates < len(self))])
        for row in range(len(queries)):
            shortlist = np.unique(candidates[row][(candidates[row] >= 0) & (candidates[row] < len(self))])
            shortlist = shortlist[~np.isin(shortlist, deleted)]  # increasing: ties go to the smaller id
            if shortlist.size == 0:
                continue
            # only the query's selected channels are read (the masked score looks at no other): the query and its
            # candidates restricted to them, compared over all of what remains, give the same scores
            chosen = selection[row]
            if queries.is_compact:
                query_bits = _compact.take_channels(queries.bits[row:row + 1], self.Dk, self.Dt, chosen)
            else:
                query_bits = np.ascontiguousarray(queries.bits[row:row + 1, chosen])
            query = Codes._from_valid_bits(query_bits, queries.channel_mean[row:row + 1, chosen], self.Dt,
                                           queries.identity)
            # one thread unless asked: a shortlist is too little work to share (OpenMP start-up cost 4x the scan
            # for 400 candidates on a loaded 2-core machine)
            row_scores, positions = search_segments(query, [(self._gather_bits(shortlist, chosen), 0)], keep, None,
                                                    num_threads or 1)
            scores[row, :positions.shape[1]] = row_scores[0]
            ids[row, :positions.shape[1]] = shortlist[positions[0]]
        if normalize:
            found = ids >= 0
            normalized = np.zeros(scores.shape, np.float64)
            for row in range(len(queries)):
                hits = ids[row][found[row]]
                if hits.size:
                    normalized[row, :hits.size] = self.normalized_scores(
                        queries[row:row + 1], scores[row:row + 1, :hits.size], hits[None], channels)[0]
            return normalized, ids
        return scores, ids

    def segment_codes(self) -> list[tuple[dict, np.ndarray]]:
        """Per committed segment, in id order: ({"file", "crc32", "id_base", "count"}, its bits in the index's layout
        (count, Dk, 2, words) or compact (count, words) uint64, memory-mapped and verified per the policy) -- what a
        coarse stage is built from."""
        self._require_open()
        return [({key: segment[key] for key in ("file", "crc32", "id_base", "count")}, self._segment_arrays(segment)[0])
                for segment in self._manifest["segments"]]

    def segment_means(self) -> list[tuple[dict, np.ndarray]]:
        """Per committed segment, in id order: ({"file", "crc32", "id_base", "count"}, its channel means (count, Dk)
        float32, memory-mapped and verified per the policy) — what a coarse stage is built from."""
        self._require_open()
        return [({key: segment[key] for key in ("file", "crc32", "id_base", "count")}, self._segment_arrays(segment)[1])
                for segment in self._manifest["segments"]]

    def normalized_scores(self, queries: Codes, scores: np.ndarray, ids: np.ndarray, channels: int) -> np.ndarray:
        """The raw `scores` of hits `ids` (from `search`) divided by sqrt(nnz_q * nnz_x) over each query's
        `channels` selected channels (see `search(normalize=True)`)."""
        selection = select_channels(queries.channel_mean, channels)
        out = np.zeros(scores.shape, np.float64)
        if ids.size == 0:
            return out
        query_nnz = masked_nonzero_counts(queries.bits, selection, self.Dk, self.Dt)
        hits = self._gather_bits(ids.reshape(-1))
        hits = hits.reshape(ids.shape + hits.shape[1:])
        for row in range(len(queries)):
            item_nnz = masked_nonzero_counts(hits[row], np.broadcast_to(selection[row], (ids.shape[1], channels)),
                                             self.Dk, self.Dt)
            scale = np.sqrt(query_nnz[row] * item_nnz.astype(np.float64))
            np.divide(scores[row], scale, out=out[row], where=scale > 0)
        return out

    def _locate(self, ids, allow_deleted: bool = False) -> tuple[np.ndarray, np.ndarray]:
        try:
            ids = np.asarray(ids)
        except (TypeError, ValueError):
            raise UsageError("ids: expected integer ids") from None
        if ids.size and ids.dtype.kind not in "iu":
            raise UsageError(f"ids: expected integer ids, got dtype {ids.dtype}")
        ids = ids.astype(np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"ids: expected ids in [0, {len(self)})")
        if not allow_deleted and self.deleted and ids.size:
            gone = ids[np.isin(ids, self._deleted_array())]
            if gone.size:
                raise CodeIndexError(f"ids: {gone[:5].tolist()} are deleted")
        bases = np.array([s["id_base"] for s in self._manifest["segments"]], np.int64)
        return ids, np.searchsorted(bases, ids, side="right") - 1

    def _prefetch(self, ids) -> None:
        """Asks the kernel to start reading the pages of these items' codes all at once (MADV_WILLNEED on the
        scattered maps), so a cold re-ranking waits for one deep queue of reads instead of one page fault at a time."""
        if not hasattr(mmap, "MADV_WILLNEED") or len(ids) == 0:
            return
        ids, which = self._locate(np.unique(np.asarray(ids, np.int64)), allow_deleted=True)
        page = mmap.PAGESIZE
        for number in np.unique(which):
            segment = self._manifest["segments"][number]
            bits = self._scattered_bits(segment)
            handle = getattr(bits, "_mmap", None)
            if handle is None or len(bits) == 0:
                continue
            item_bytes = bits[0].nbytes
            base = bits.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts inside its mapping
            local = ids[which == number] - segment["id_base"]
            first = (base + local * item_bytes) // page
            last = (base + (local + 1) * item_bytes - 1) // page
            spans = last - first + 1  # each item's pages, first..last, without a Python loop over items
            within = np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
            pages = np.unique(np.repeat(first, spans) + within)
            breaks = np.flatnonzero(np.diff(pages) != 1)
            for start, stop in zip(pages[np.r_[0, breaks + 1]].tolist(), pages[np.r_[breaks, len(pages) - 1]].tolist()):
                handle.madvise(mmap.MADV_WILLNEED, start * page, min((stop + 1) * page, len(handle)) - start * page)

    def _gather_bits(self, ids, channels=None) -> np.ndarray:
        """The codes of `ids` in the index's layout, only the guidance `channels` if given: (len(ids), Dk or
        len(channels), 2, words), or compact (len(ids), compact words of Dk or len(channels) channels)."""
        ids, which = self._locate(ids, allow_deleted=True)
        if self.layout == _compact.COMPACT:
            bits = np.empty((len(ids), _compact.compact_words_per_image(self.Dk, self.Dt)), np.uint64)
            self._gather(bits, ids, which, self._scattered_bits)
            return bits if channels is None else _compact.take_channels(bits, self.Dk, self.Dt, channels)
        channels = np.arange(self.Dk) if channels is None else np.asarray(channels, np.int64)
        bits = np.empty((len(ids), len(channels), 2, (self.Dt + 63) // 64), np.uint64)
        return self._gather(bits, ids, which, self._scattered_bits, channels)

    def _gather(self, out, ids, which, array_of, columns=None) -> np.ndarray:
        """Fills `out` with the rows `ids` (in segments `which`, from `_locate`) of the per-segment array
        `array_of(segment)`, only its `columns` (second axis) if given: one gather per segment, so a memory map
        reads only the rows asked for."""
        for number in np.unique(which):
            rows = which == number
            segment = self._manifest["segments"][number]
            local = ids[rows] - segment["id_base"]
            source = array_of(segment)
            if columns is None:
                out[rows] = source[local]
                continue
            # one flat take: numpy's two-index gather on a memory map is ~10x slower (re-ranking reads this way)
            per = int(np.prod(source.shape[2:], dtype=np.int64))
            flat = np.asarray(source).reshape(-1)
            where = local[:, None, None] * (source.shape[1] * per) + columns[None, :, None] * per + np.arange(per)
            out[rows] = np.take(flat, where.reshape(-1)).reshape(len(local), len(columns), *source.shape[2:])
        return out

    def get(self, ids) -> Codes:
        """The codes of the given live ids (with the index's identity)."""
        self._require_open()
        ids, which = self._locate(ids)
        if self.layout == _compact.COMPACT:
            bits = np.empty((len(ids), _compact.compact_words_per_image(self.Dk, self.Dt)), np.uint64)
        else:
            bits = np.empty((len(ids), self.Dk, 2, (self.Dt + 63) // 64), np.uint64)
        means = np.empty((len(ids), self.Dk), np.float32)
        self._gather(bits, ids, which, lambda segment: self._segment_arrays(segment)[0])
        self._gather(means, ids, which, lambda segment: self._segment_arrays(segment)[1])
        try:
            return Codes(bits, means, self.Dt, self.identity)  # checked: the policy may be "none"
        except ValueError as exc:
            raise CodeIndexFormatError(f"{self.path}: {exc}") from None

    def keys(self, ids) -> list:
        """The string keys of the given live ids (None for items appended without keys)."""
        self._require_open()
        ids, which = self._locate(ids)
        out = []
        for item, number in zip(ids, which):
            segment = self._manifest["segments"][number]
            table = self._key_table(segment)
            out.append(None if table is None else table[item - segment["id_base"]])
        return out

    def find(self, keys) -> np.ndarray:
        """The live id of each key (int64; -1 where absent or deleted)."""
        self._require_open()
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys: expected a sequence of strings, got a single string")
        table = self._live_key_ids()
        return np.array([table.get(key, -1) for key in keys], np.int64)

    def _live_key_ids(self) -> dict:
        if self._key_ids is None:
            deleted = set(self._manifest["deleted"])
            table = {}
            for segment in self._manifest["segments"]:
                keys = self._key_table(segment)
                for offset, key in enumerate(keys or ()):
                    item = segment["id_base"] + offset
                    if key is not None and item not in deleted:
                        table[key] = item
            self._key_ids = table
        return self._key_ids

    def _key_table(self, segment: dict) -> list | None:
        """A segment's checked key table (None if it has none), read once per open."""
        if not segment["keys"]:
            return None
        if segment["file"] not in self._key_tables:
            self._ensure_verified(segment["file"], lambda: self._verify_segment(segment))
            self._key_tables[segment["file"]] = self._read_key_table(segment)
        return self._key_tables[segment["file"]]

    def _read_key_table(self, segment: dict) -> list:
        file = self.path / segment["file"]
        try:
            header, _ = CodeFile.read_header(file, CodeIndexFormatError)
            with open(file, "rb") as handle:
                handle.seek(header.keys_offset)
                block = handle.read(header.key_bytes)
        except OSError as exc:
            raise CodeIndexFormatError(f"{file}: committed segment is unreadable ({exc})") from None
        return header.parse_keys(block, file, CodeIndexFormatError)

    def side(self, name: str, ids=None) -> np.ndarray:
        """Rows of side array `name` for `ids` (default: every live id), in the order given."""
        self._require_open()
        if name not in self._manifest["side"]:
            raise UsageError(f"name: the index has side arrays {self.side_names}, not {name!r}")
        spec = self._manifest["side"][name]
        ids, which = self._locate(self.live_ids() if ids is None else ids)
        out = np.empty((len(ids), *spec["shape"]), np.dtype(spec["dtype"]))
        return self._gather(out, ids, which, lambda segment: self._side_array(segment, name))

    def _side_array(self, segment: dict, name: str) -> np.ndarray:
        entry = segment["side"][name]
        if entry["file"] not in self._side_maps:
            file = self.path / entry["file"]
            self._ensure_verified(entry["file"], lambda: check_npy(file, entry["size"], entry["crc32"],
                                                                   CodeIndexFormatError))
            spec = self._manifest["side"][name]
            self._side_maps[entry["file"]] = open_npy(file, spec["dtype"], (segment["count"], *spec["shape"]),
                                                      CodeIndexFormatError)
        return self._side_maps[entry["file"]]

    def export(self, path, ids=None) -> int:
        """Writes the codes of `ids` (default: every live id) with their keys and identity to one code file
        (`Codes.load` reads it back, keys included); returns how many were written."""
        self._require_open()
        ids = self.live_ids() if ids is None else ids
        codes, keys = self.get(ids), self.keys(ids)
        codes.save(path, keys=None if all(key is None for key in keys) else keys)
        return len(codes)

    # ---- closing --------------------------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._manifest is None:
            raise CodeIndexError(f"{self.path}: index is closed")

    def close(self) -> None:
        self._maps.clear()
        self._side_maps.clear()
        self._key_tables.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._manifest = None

    def __enter__(self) -> "CodeIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_manifest(body: dict) -> None:
    """The manifest's fields have the types and relations the reader relies on (KeyError/TypeError/ValueError)."""
    def integer(value, low=0):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{value!r} is not an integer >= {low}")
        return value

    integer(body["Dk"], 1), integer(body["Dt"], 1), integer(body["next_segment"])
    if body["layout"] not in (None, *_compact.LAYOUTS) or (body["layout"] is None and body["segments"]):
        raise UsageError(f"layout {body['layout']!r}")
    if body["identity"] is not None and not isinstance(body["identity"], str):
        raise TypeError("identity")
    if not isinstance(body["attributes"], dict) or not isinstance(body["side"], dict):
        raise TypeError("attributes/side")
    _declare_side({name: (spec["dtype"], spec["shape"]) for name, spec in body["side"].items()})
    expected = 0
    for segment in body["segments"]:
        if integer(segment["id_base"]) != expected or not _SEGMENT_FILE.match(segment["file"]):
            raise UsageError(f"segment {segment['file']!r} is not contiguous or misnamed")
        expected += integer(segment["count"])
        integer(segment["size"]), integer(segment["crc32"])
        if not isinstance(segment["keys"], bool) or set(segment["side"]) != set(body["side"]):
            raise UsageError(f"segment {segment['file']} keys/side entries")
        for entry in segment["side"].values():
            if not _SEGMENT_FILE.match(entry["file"]):
                raise UsageError(f"side file {entry['file']!r}")
            integer(entry["size"]), integer(entry["crc32"])
    if integer(body["count"]) != expected:
        raise UsageError(f"count {body['count']} != sum of segments {expected}")
    deleted = body["deleted"]
    if any(integer(i) >= expected for i in deleted) or deleted != sorted(set(deleted)):
        raise UsageError("deleted ids out of range or unsorted")


__all__ = ["CodeIndex", "CodeIndexError", "CodeIndexFormatError", "IdentityMismatchError", "VERIFY_POLICIES"]
