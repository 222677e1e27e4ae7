"""On-disk row stores with resume: one fixed-shape row per image in a memmap, filled in manifest order.

``meta.json`` (written atomically, with a format version and the store's key) records how many leading rows are
complete; a pass that stops mid-way resumes from there. Rows are flushed before ``done`` advances, so a crash never
marks an unwritten row complete. Float features are kept as float16 (a cross-layer row is 409,600 values).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.errors import CrossLayerError, UsageError

STORE_FORMAT = "crosslayer-eval-store"
STORE_VERSION = 1
DATA_NAME = "rows.bin"
META_NAME = "meta.json"


class StoreError(CrossLayerError, ValueError):
    """A store on disk belongs to another computation, has another version, or is damaged."""


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
        self._rows = None
        meta_path = self.directory / META_NAME
        if meta_path.exists():
            self._adopt(meta_path)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_meta()

    def _adopt(self, meta_path: Path) -> None:
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as error:
            raise StoreError(f"{meta_path}: unreadable store metadata ({error})") from None
        if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
            raise StoreError(f"{meta_path}: store format {meta.get('format')!r} v{meta.get('version')}, expected {STORE_FORMAT} v{STORE_VERSION}")
        expected = {"key": self.key, "n": self.n, "row_shape": list(self.row_shape), "dtype": self.dtype.str}
        found = {name: meta.get(name) for name in expected}
        if found != expected:
            raise StoreError(f"{meta_path}: store holds {found}, expected {expected}; remove the folder to recompute")
        data_path = self.directory / DATA_NAME
        done = int(meta.get("done", 0))
        if done and (not data_path.exists() or data_path.stat().st_size != self.nbytes_total):
            raise StoreError(f"{data_path}: missing or of the wrong size for {self.n} rows")
        self.done = done
        self.info = meta.get("info", {}) or self.info

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
        meta = {
            "format": STORE_FORMAT, "version": STORE_VERSION, "key": self.key, "n": self.n,
            "row_shape": list(self.row_shape), "dtype": self.dtype.str, "done": self.done, "info": self.info,
        }
        with atomic_write(self.directory / META_NAME, "w") as handle:
            json.dump(meta, handle, indent=1)

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
        self._rows[start : start + len(values)] = values.astype(self.dtype, copy=False)
        self._rows.flush()
        self.done = start + len(values)
        self._write_meta()

    def close(self) -> None:
        if self._rows is not None:
            self._rows.flush()
            self._rows = None

    def read(self) -> np.ndarray:
        if not self.complete:
            raise StoreError(f"{self.directory}: only {self.done} of {self.n} rows are complete")
        return self.rows("r")
