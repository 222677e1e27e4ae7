"""On-disk row stores with resume: one fixed-shape row per image in a memmap, filled in manifest order.

``meta.json`` (a `crosslayer.formats` document "crosslayer-eval-store", version 2) records the store's key and
layout, how many leading rows are complete, and the crc32 of those rows; a pass that stops mid-way resumes from
there. Rows are flushed before ``done`` advances, so a crash never marks an unwritten row complete; `read` checks the
rows against their crc32. Float features are kept as float16 (a cross-layer row is 409,600 values).

Why not an image index (`crosslayer.retrieval.image_index`): that store is keyed, append-only and holds sign codes
with optional side arrays. These rows are of methods that make no codes (SPoC-like globals, SPM, AConv, float
cross-layer), must stay in the manifest's fixed order (the SVM's kernel rows and the train/test split are by
position), and are 0.8 MB each, written into one preallocated memmap with a resumable prefix so that the Gram
matrix streams over them. A code index would need fake codes per row and a copy to get one contiguous array.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from crosslayer.errors import CrossLayerError, FormatError, UsageError
from crosslayer.formats import file_crc, read_json, write_json

STORE_FORMAT = "crosslayer-eval-store"
STORE_VERSION = 2
DATA_NAME = "rows.bin"
META_NAME = "meta.json"


class StoreError(CrossLayerError, ValueError):
    """A store on disk belongs to another computation, or is incomplete."""


class StoreFormatError(StoreError, FormatError):
    """A store's files are not one's, are of another version, or are damaged (checksum, size)."""


def read_store_meta(path) -> dict:
    """The body of a store's meta.json, its fields' types checked (StoreFormatError otherwise)."""
    meta = read_json(path, STORE_FORMAT, STORE_VERSION, "crosslayer eval store metadata", StoreFormatError)
    kinds = {"key": str, "n": int, "row_shape": list, "dtype": str, "done": int, "rows_crc32": int, "info": dict}
    wrong = [name for name, kind in kinds.items()
             if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool)]
    if not wrong and not (0 <= meta["done"] <= meta["n"]):
        wrong = ["done"]
    if wrong:
        raise StoreFormatError(f"{path}: damaged crosslayer eval store metadata (fields {wrong})")
    return meta


class RowStore:
    """rows: (n, *row_shape) memmap of `dtype` under `directory`; ``done`` leading rows are complete."""

    def __init__(self, directory, key: str, n: int, row_shape, dtype, info: dict | None = None):
        self.directory = Path(directory)
        self.key = str(key)
        self.n = int(n)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.info = dict(info or {})
        self.done = 0
        self.rows_crc = 0  # crc32 of the complete prefix's bytes
        self._rows = None
        meta_path = self.directory / META_NAME
        if meta_path.exists():
            self._adopt(meta_path)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_meta()

    def _adopt(self, meta_path: Path) -> None:
        try:
            meta = read_store_meta(meta_path)
        except StoreFormatError as error:
            raise StoreFormatError(f"{error}; remove {self.directory} to recompute") from None
        expected = {"key": self.key, "n": self.n, "row_shape": list(self.row_shape), "dtype": self.dtype.str}
        found = {name: meta[name] for name in expected}
        if found != expected:
            raise StoreError(f"{meta_path}: store holds {found}, expected {expected}; remove the folder to recompute")
        data_path = self.directory / DATA_NAME
        if meta["done"] and (not data_path.exists() or data_path.stat().st_size != self.nbytes_total):
            raise StoreFormatError(f"{data_path}: missing or of the wrong size for {self.n} rows")
        self.done, self.rows_crc = meta["done"], meta["rows_crc32"]
        self.info = meta["info"] or self.info

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes_total(self) -> int:
        return self.row_bytes * self.n

    @property
    def complete(self) -> bool:
        return self.done >= self.n

    def _write_meta(self) -> None:
        write_json(self.directory / META_NAME, STORE_FORMAT, STORE_VERSION, {
            "key": self.key, "n": self.n, "row_shape": list(self.row_shape), "dtype": self.dtype.str,
            "done": self.done, "rows_crc32": self.rows_crc, "info": self.info})

    def save_info(self) -> None:
        """Commits `info` (timings, cached Gram description) with the rest of the metadata."""
        self._write_meta()

    def rows(self, mode: str = "r") -> np.memmap:
        """The whole (n, *row_shape) array as a memmap (mode "r" to read, "r+" to fill)."""
        path = self.directory / DATA_NAME
        if not path.exists() or path.stat().st_size != self.nbytes_total:
            with open(path, "wb") as handle:
                handle.truncate(self.nbytes_total)
        if self.n == 0:
            return np.zeros((0,) + self.row_shape, self.dtype)
        return np.memmap(path, dtype=self.dtype, mode=mode, shape=(self.n,) + self.row_shape)

    def append(self, start: int, values: np.ndarray) -> None:
        """Writes rows [start, start + len(values)); `start` must be where the complete prefix ends."""
        if start != self.done:
            raise UsageError(f"start: rows must be written in order; store has {self.done} rows, got start={start}")
        values = np.asarray(values)
        if values.shape[1:] != self.row_shape:
            raise UsageError(f"values: expected rows of shape {self.row_shape}, got {values.shape[1:]}")
        if start + len(values) > self.n:
            raise UsageError(f"values: {len(values)} rows from {start} overflow the store of {self.n}")
        if self._rows is None:
            self._rows = self.rows("r+")
        rows = np.ascontiguousarray(values, dtype=self.dtype)
        self._rows[start : start + len(rows)] = rows
        self._rows.flush()
        self.rows_crc = zlib.crc32(rows.tobytes(), self.rows_crc)
        self.done = start + len(rows)
        self._write_meta()

    def close(self) -> None:
        if self._rows is not None:
            self._rows.flush()
            self._rows = None

    def read(self) -> np.ndarray:
        """Every row (a read-only memmap), after checking them against their crc32 (reads the file once)."""
        if not self.complete:
            raise StoreError(f"{self.directory}: only {self.done} of {self.n} rows are complete")
        if self.n == 0:
            return np.zeros((0,) + self.row_shape, self.dtype)
        path = self.directory / DATA_NAME
        try:
            crc = file_crc(path)
        except OSError as exc:
            raise StoreFormatError(f"{path}: cannot read the rows: {exc.strerror or exc}") from None
        if crc != self.rows_crc:
            raise StoreFormatError(f"{path}: checksum mismatch (rows are damaged); remove the folder to recompute")
        return self.rows("r")
