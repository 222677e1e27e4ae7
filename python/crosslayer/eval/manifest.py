"""Classification manifests: ``manifest.csv`` with columns ``path,label,split`` (paths relative to its folder or
absolute; splits ``train``, ``test`` and optionally ``val``). Every error names the file and the line.

Multi-label manifests (VOC-like sets): a label cell may list several labels separated by ``;`` (``dog;person``).
A manifest with any such cell is multi-label: `Dataset.targets` is then its (images, classes) indicator matrix, and
`labels` holds each image's first listed label (only what needs one class per image uses it: per-class subsets)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosslayer.errors import CrossLayerError, UsageError

MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "val", "test")
COLUMNS = ("path", "label", "split")
LABEL_SEPARATOR = ";"


class ManifestError(CrossLayerError, ValueError):
    """A manifest is missing, malformed, or names no usable split."""


@dataclass(frozen=True)
class Dataset:
    """One row per image, in manifest order."""

    root: Path
    paths: tuple  # absolute paths (str)
    labels: np.ndarray  # int64 class index per image
    splits: np.ndarray  # str per image: "train" | "val" | "test"
    classes: tuple  # class names; labels index into this
    targets: np.ndarray | None = None  # multi-label manifests: (n, classes) bool, image i has class c; else None

    @property
    def multilabel(self) -> bool:
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise UsageError(f"split: expected one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.splits == split)

    def subset_per_class(self, limit: int | None, seed: int = 0) -> "Dataset":
        """At most `limit` images per (class, split), chosen with a seeded generator; manifest order is kept."""
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise UsageError(f"limit_per_class: expected a positive integer or None, got {limit!r}")
        rng = np.random.default_rng(seed)
        keep = []
        for split in SPLITS:
            for label in range(len(self.classes)):
                rows = np.flatnonzero((self.splits == split) & (self.labels == label))
                if len(rows) > limit:
                    rows = rng.choice(rows, limit, replace=False)
                keep.extend(rows.tolist())
        keep = np.sort(np.asarray(keep, dtype=np.int64))
        targets = None if self.targets is None else self.targets[keep]
        return Dataset(self.root, tuple(self.paths[i] for i in keep), self.labels[keep], self.splits[keep], self.classes,
                       targets)


def load_manifest(data_dir) -> Dataset:
    """Reads ``DIR/manifest.csv`` (or a manifest file given directly)."""
    data_dir = Path(data_dir)
    # Resolved, so that image paths (and the cache keys made from them) do not depend on how the folder was spelled.
    manifest = (data_dir / MANIFEST_NAME if data_dir.is_dir() else data_dir).resolve()
    root = manifest.parent
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: no such manifest (expected a CSV with columns {','.join(COLUMNS)})")
    paths, labels, splits = [], [], []
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{manifest}:1: empty file; expected the header {','.join(COLUMNS)}")
        header = [column.strip() for column in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"{manifest}:1: header {header} lacks column(s) {missing}")
        where = {c: header.index(c) for c in COLUMNS}
        for line_number, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ManifestError(f"{manifest}:{line_number}: expected {len(header)} fields, got {len(row)}")
            path, label, split = (row[where[c]].strip() for c in COLUMNS)
            if not path:
                raise ManifestError(f"{manifest}:{line_number}: empty path")
            if not label:
                raise ManifestError(f"{manifest}:{line_number}: empty label")
            if split not in SPLITS:
                raise ManifestError(f"{manifest}:{line_number}: split {split!r} is not one of {SPLITS}")
            names = [name.strip() for name in label.split(LABEL_SEPARATOR)]
            if not all(names) or len(set(names)) != len(names):
                raise ManifestError(f"{manifest}:{line_number}: label {label!r}: expected distinct non-empty labels "
                                    f"separated by {LABEL_SEPARATOR!r}")
            full = Path(path) if Path(path).is_absolute() else root / path
            paths.append(str(full))
            labels.append(names)
            splits.append(split)
    if not paths:
        raise ManifestError(f"{manifest}: no images listed")
    splits_array = np.asarray(splits)
    for needed in ("train", "test"):
        if not (splits_array == needed).any():
            raise ManifestError(f"{manifest}: no images in the {needed!r} split")
    classes = tuple(sorted({name for names in labels for name in names}))
    index = {name: i for i, name in enumerate(classes)}
    first = np.asarray([index[names[0]] for names in labels], np.int64)
    targets = None
    if any(len(names) > 1 for names in labels):
        targets = np.zeros((len(labels), len(classes)), bool)
        for row, names in enumerate(labels):
            targets[row, [index[name] for name in names]] = True
    return Dataset(root, tuple(paths), first, splits_array, classes, targets)
