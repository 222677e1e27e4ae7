"""Reading retrieval sets (`queries.csv` + `database.csv`, columns `path,item`) and distractor image sets."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from crosslayer.errors import UsageError
from crosslayer.extract import list_images


@dataclass
class LabelledImages:
    paths: list  # absolute (or as given) image paths
    items: list  # the item each image shows; images of one item are relevant to each other


@dataclass
class RetrievalSet:
    name: str
    queries: LabelledImages
    database: LabelledImages


def read_labelled_csv(path, label_column: str) -> LabelledImages:
    """Rows of a CSV with columns `path` and `label_column`; relative paths are taken from the CSV's folder (resolved,
    so that feature caches keyed by image paths do not depend on how the folder was spelled)."""
    path = Path(path).resolve()
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", label_column} - set(reader.fieldnames or ())
        if missing:
            raise UsageError(f"{path}: expected columns 'path' and {label_column!r}, missing {sorted(missing)}")
        rows = list(reader)
    paths = [row["path"] if Path(row["path"]).is_absolute() else str(path.parent / row["path"]) for row in rows]
    return LabelledImages(paths, [row[label_column] for row in rows])


def read_retrieval_set(folder) -> RetrievalSet:
    folder = Path(folder)
    for name in ("queries.csv", "database.csv"):
        if not (folder / name).is_file():
            raise UsageError(f"data: {folder} has no {name} (expected queries.csv and database.csv, columns path,item)")
    return RetrievalSet(
        folder.resolve().name or str(folder),
        read_labelled_csv(folder / "queries.csv", "item"),
        read_labelled_csv(folder / "database.csv", "item"),
    )


def image_paths(source) -> list[str]:
    """Image paths (resolved, as in `read_labelled_csv`) of a folder (its `manifest.csv` when it has one, else every
    image file under it) or a CSV manifest whose header starts with `path`."""
    from crosslayer.extract import read_manifest

    source = Path(source)
    if source.is_file():
        paths = read_manifest(source)
    elif (source / "manifest.csv").is_file():
        paths = read_manifest(source / "manifest.csv")
    elif source.is_dir():
        paths = list_images(source)
    else:
        raise UsageError(f"images: {source} is neither an image folder nor a CSV manifest")
    return [str(Path(p).resolve()) for p in paths]
