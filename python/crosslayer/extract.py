"""`crosslayer extract`: image files -> an image index with embeddings (`crosslayer.retrieval.image_index`).

The extraction store is the image index (``index build --embeddings``): resumable, committed by time, bad images
recorded, every checksum verified, and searchable. `extract` builds or extends one (read it with `ImageIndex.open`).
Also the image listing helpers every command uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from crosslayer.encoder import CrossLayerEncoder
from crosslayer.errors import UsageError
from crosslayer.retrieval.image_index import ImageIndex

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def list_images(folder) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"folder: {folder} is not a directory")
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_manifest(path) -> list[str]:
    """Image paths from a CSV whose first column is `path` (relative paths are taken from the CSV's folder)."""
    import csv

    path = Path(path)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0] or rows[0][0].strip() != "path":
        raise UsageError(f"manifest: {path} must be a CSV whose header starts with 'path'")
    base = path.parent
    return [str(base / row[0]) if not Path(row[0]).is_absolute() else row[0] for row in rows[1:] if row and row[0]]


@dataclass
class ExtractReport:
    done: int = 0  # images encoded by this run
    skipped: int = 0  # already in the store, or given twice
    recorded_bad: int = 0  # left out: recorded as bad by an earlier run (tried again only with retry_failed)
    failed: list = field(default_factory=list)  # (path, reason), the PCA fit's bad images first
    seconds: float = 0.0  # the whole run, PCA fit included
    fit_seconds: float = 0.0  # the PCA fit (0 when the encoder was fitted already)
    total: int = 0  # images in the store after this run


def resolve_sources(sources) -> tuple[list[str], int]:
    """(the image paths resolved, each once, in order of first occurrence; how many repeats were dropped)."""
    sources = list(sources)
    unique = list(dict.fromkeys(str(Path(s).resolve()) for s in sources))
    return unique, len(sources) - len(unique)


def open_for_build(directory, encoder: CrossLayerEncoder | None, fit_sources, save_embedding: bool = True,
                   on_error: str = "skip", progress: bool = True) -> tuple[ImageIndex, list, float]:
    """(the image index at `directory` open for adding, the PCA fit's bad images, the fit's seconds): an existing
    index resumed with `encoder` (checked to be the one it was built with; None: its own), else one created with
    `encoder` (default: the default encoder), its PCA learnt on `fit_sources` when it has none."""
    directory = Path(directory)
    if ImageIndex.exists(directory):
        index = ImageIndex.open(directory, "a") if encoder is None else ImageIndex.resume(directory, encoder)
        return index, [], 0.0
    encoder = encoder or CrossLayerEncoder()
    fitting = ImageIndex.will_fit(directory, encoder)
    index = ImageIndex.create(directory, encoder, fit_sources=fit_sources, embeddings=save_embedding,
                              on_error=on_error, progress=progress)
    if not fitting:
        return index, [], 0.0
    return index, list(index.encoder.fit_failures_), index.encoder.fit_seconds_


def extract(sources, store_dir, encoder: CrossLayerEncoder | None = None, chunk_size: int | None = None,
            save_embedding: bool = True, on_error: str = "skip", progress: bool = True, fit_sources=None,
            commit_seconds: float | None = 30.0, retry_failed: bool = False) -> ExtractReport:
    """Encodes image files into the image index `store_dir` (created, or resumed with the encoder it was made
    with: ImageIndexError naming the differences otherwise), skipping those already there. Returns what this run did.

    encoder: a configured (optionally fitted) encoder; unfitted, its PCA is learnt on `fit_sources` (default: the
    sources); None: the stored one (or the default encoder for a new store). chunk_size: commit at least every that
    many images (and every `commit_seconds`). on_error: "skip" records a bad image and goes on; "raise" stops with
    its ImageError (what was encoded before stays); it applies to the PCA fit too, whose bad images are recorded
    and reported like the others. progress: bars for the fit and the encoding."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise UsageError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    sources, repeats = resolve_sources(sources)
    start = time.perf_counter()
    index, fit_failures, fit_seconds = open_for_build(store_dir, encoder, fit_sources if fit_sources is not None
                                                      else sources, save_embedding, on_error, progress)
    with index:
        added = index.add(sources, commit_seconds=commit_seconds, commit_images=chunk_size, on_error=on_error,
                          retry_failed=retry_failed, embeddings=save_embedding if len(index.codes) == 0 else None,
                          progress=progress)
        total = len(index)
    # the fit's bad images are recorded failures, which `add` skips (or retries and reports): this run's failures
    if retry_failed:
        fit_failures = []
    sampled = {str(Path(path).resolve()) for path, _ in fit_failures} & set(sources)
    return ExtractReport(done=added.added, skipped=repeats + added.skipped,
                         recorded_bad=added.recorded_bad - len(sampled), failed=[(str(path), reason) for path, reason in fit_failures] + added.failed,
                         seconds=time.perf_counter() - start, fit_seconds=fit_seconds, total=total)
