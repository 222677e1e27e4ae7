"""Extraction pipeline: image files -> a store directory of sign codes, resumable, streaming.

Store layout (every file written atomically):
    store.json                 format, version
    encoder.xle                the fitted encoder (backbone, layers, side, PCA) all chunks were made with
    chunk-000000.xlc           Codes of one chunk of images (with channel means)
    chunk-000000.emb.npy       optional: the pooled embeddings of those images (n, C) float32
    chunk-000000.json          the chunk's image paths and failed images, written last: it commits the chunk
Image paths are stored resolved (absolute, symlinks followed), so one file is one entry however it was named.
A rerun reads the committed chunks, skips their images and appends new chunks; an interrupted run loses at most the
chunk being gathered. Memory stays at one batch of activations plus one chunk of codes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.codes import Codes
from crosslayer.encoder import CrossLayerEncoder, EncoderMismatchError
from crosslayer.errors import CrossLayerError

STORE_FORMAT = "crosslayer-store"
STORE_VERSION = 1
_CHUNK = re.compile(r"^chunk-(\d{6})\.json$")


def committed_chunks(folder: Path) -> list[dict]:
    """The records of the committed chunks in `folder` (a chunk's JSON is written last, so its presence commits the
    chunk), in index order, each with its "index"."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        match = _CHUNK.match(path.name)
        if match:
            record = json.loads(path.read_text())
            record["index"] = int(match.group(1))
            found.append(record)
    return found
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class StoreError(CrossLayerError, ValueError):
    """A store directory is not one, is of another version, or does not match the requested encoder."""


def list_images(folder) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a directory")
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(path) -> list[str]:
    """Image paths from a CSV whose first column is `path` (relative paths are taken from the CSV's folder)."""
    import csv

    path = Path(path)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0] or rows[0][0].strip() != "path":
        raise ValueError(f"manifest: {path} must be a CSV whose header starts with 'path'")
    base = path.parent
    return [str(base / row[0]) if not Path(row[0]).is_absolute() else row[0] for row in rows[1:] if row and row[0]]


class Store:
    """Reads a store directory: the committed chunks' paths, codes and embeddings, in chunk order."""

    def __init__(self, directory):
        self.directory = Path(directory)
        meta_path = self.directory / "store.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            raise StoreError(f"{self.directory}: not a crosslayer store (no readable store.json)") from None
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.directory}: not a crosslayer store")
        if meta.get("version") != STORE_VERSION:
            raise StoreError(f"{self.directory}: store version {meta.get('version')}, this crosslayer reads {STORE_VERSION}")
        self.meta = meta

    @property
    def encoder_path(self) -> Path:
        return self.directory / "encoder.xle"

    def chunks(self) -> list[dict]:
        return committed_chunks(self.directory)

    def paths(self) -> list[str]:
        return [p for chunk in self.chunks() for p in chunk["paths"]]

    def failures(self) -> list[dict]:
        return [f for chunk in self.chunks() for f in chunk.get("errors", [])]

    def _chunk_file(self, index: int, suffix: str) -> Path:
        return self.directory / f"chunk-{index:06d}{suffix}"

    def codes(self) -> Codes:
        parts = [Codes.load(self._chunk_file(c["index"], ".xlc")) for c in self.chunks() if c["paths"]]
        if parts:
            return Codes.concatenate(parts)
        meta = CrossLayerEncoder.read_meta(self.encoder_path)
        return Codes.empty(meta["Dk"], meta["Dt"])

    def embeddings(self) -> np.ndarray | None:
        chunks = [c for c in self.chunks() if c["paths"]]
        if not chunks or not all(c.get("embedding") for c in chunks):
            return None
        return np.concatenate([np.load(self._chunk_file(c["index"], ".emb.npy")) for c in chunks])

    def summary(self) -> dict:
        chunks = self.chunks()
        meta = CrossLayerEncoder.read_meta(self.encoder_path)
        return {
            "store": str(self.directory),
            "images": sum(len(c["paths"]) for c in chunks),
            "failed": sum(len(c.get("errors", [])) for c in chunks),
            "chunks": len(chunks),
            "encoder": {k: meta[k] for k in ("backbone", "layers", "side", "policy", "pca_dim", "Dk", "Dt")},
            "embeddings": bool(chunks) and all(c.get("embedding") for c in chunks if c["paths"]),
        }


@dataclass
class ExtractReport:
    done: int = 0  # images encoded by this run
    skipped: int = 0  # already in the store, or given twice
    failed: list = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0


def _open_store(directory: Path, encoder: CrossLayerEncoder | None, fit_sources) -> tuple[Store, CrossLayerEncoder]:
    """The store's encoder if it exists (checked against `encoder`, whose runtime options it takes), else a new
    store made with `encoder`."""
    meta_path = directory / "store.json"
    if meta_path.exists():
        store = Store(directory)
        if encoder is None:
            return store, CrossLayerEncoder.load(store.encoder_path)
        try:
            return store, CrossLayerEncoder.load_for_resume(store.encoder_path, encoder)
        except EncoderMismatchError as error:
            raise StoreError(f"{directory}: made with another encoder: {'; '.join(error.differences)}; "
                             "use another store") from None
    if encoder is None:
        encoder = CrossLayerEncoder()
    if encoder.pca_ is None:
        encoder.fit(fit_sources)
    directory.mkdir(parents=True, exist_ok=True)
    encoder.save(directory / "encoder.xle")
    with atomic_write(meta_path, "w") as handle:
        json.dump({"format": STORE_FORMAT, "version": STORE_VERSION}, handle)
    return Store(directory), encoder


def resolve_sources(sources) -> tuple[list[str], int]:
    """(the image paths resolved, each once, in order of first occurrence; how many repeats were dropped)."""
    sources = list(sources)
    unique = list(dict.fromkeys(str(Path(s).resolve()) for s in sources))
    return unique, len(sources) - len(unique)


class _ChunkWriter:
    def __init__(self, store: Store, first_index: int, chunk_size: int, save_embedding: bool):
        self.store, self.index, self.chunk_size, self.save_embedding = store, first_index, chunk_size, save_embedding
        self.codes, self.embeddings, self.paths, self.errors = [], [], [], []

    def add(self, paths, codes, embedding, errors) -> None:
        self.paths += paths
        self.errors += errors
        if paths:
            self.codes.append(codes)
            self.embeddings.append(embedding)
        if len(self.paths) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self.paths and not self.errors:
            return
        store = self.store
        if self.paths:
            Codes.concatenate(self.codes).save(store._chunk_file(self.index, ".xlc"))
            if self.save_embedding:
                with atomic_write(store._chunk_file(self.index, ".emb.npy")) as handle:
                    np.save(handle, np.concatenate(self.embeddings).astype(np.float32), allow_pickle=False)
        record = {"paths": self.paths, "errors": self.errors, "embedding": bool(self.save_embedding and self.paths)}
        with atomic_write(store._chunk_file(self.index, ".json"), "w") as handle:
            json.dump(record, handle)
        self.index += 1
        self.codes, self.embeddings, self.paths, self.errors = [], [], [], []


def extract(sources, store_dir, encoder: CrossLayerEncoder | None = None, chunk_size: int = 128,
            save_embedding: bool = True, on_error: str = "skip", progress: bool = True, fit_sources=None) -> ExtractReport:
    """Encodes image files into `store_dir`, skipping those already there. Returns what this run did.

    encoder: a configured (optionally fitted) encoder; unfitted, its PCA is learnt on `fit_sources` (default: the
    sources). on_error: "skip" records a bad image in the store and goes on; "raise" stops with its ImageError
    (chunks already written stay).
    """
    from tqdm.auto import tqdm

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    sources, repeats = resolve_sources(sources)
    start = time.perf_counter()
    directory = Path(store_dir)
    store, encoder = _open_store(directory, encoder, fit_sources if fit_sources is not None else sources)
    recorded = store.paths() + ([f["path"] for f in store.failures()] if on_error == "skip" else [])
    # stores written before paths were resolved may hold them as given: resolved here against the current folder
    done = {str(Path(p).resolve()) for p in recorded}
    todo = [s for s in sources if s not in done]
    report = ExtractReport(skipped=repeats + len(sources) - len(todo))
    chunks = store.chunks()
    writer = _ChunkWriter(store, (chunks[-1]["index"] + 1) if chunks else 0, chunk_size, save_embedding)
    with tqdm(total=len(todo), unit="img", disable=not progress, desc="extract") as bar:
        try:
            for batch in encoder.activations(todo, on_error="raise" if on_error == "raise" else "skip"):
                errors = [{"path": str(err.path), "reason": err.reason} for _, err in batch.errors]
                codes = encoder.pool_batch(batch.outputs, "codes") if batch.positions else None
                writer.add([str(s) for s in batch.sources], codes, batch.outputs.get("embedding"), errors)
                report.done += len(batch.positions)
                report.failed += [(e["path"], e["reason"]) for e in errors]
                bar.update(len(batch.positions) + len(batch.errors))
        finally:
            # whatever was gathered before an error or interrupt is committed
            writer.flush()
    report.seconds = time.perf_counter() - start
    return report
