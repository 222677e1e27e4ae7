"""Shards of a distributed build: the deterministic cut of the pending images into shards, and the staged files a
worker writes for one (code file with keys, side arrays, then a small JSON record naming them: the shard's commit)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosslayer._validate import check_positive_int
from crosslayer.errors import FormatError
from crosslayer.formats import read_json, write_json, write_npy

STAGING = "staging"  # under the image index's folder: the same file system as its codes, so adopting is a rename
SHARD_FORMAT = "crosslayer-staged-shard"
SHARD_VERSION = 1
EMBEDDING = "embedding"


@dataclass(frozen=True)
class Shard:
    """What a worker needs to encode one shard (a few kB: paths and keys, never pixels or codes)."""

    name: str  # "shard-NNNNNN-DIGEST": its number in the plan and a digest of its keys
    paths: tuple  # absolute image paths
    keys: tuple  # their keys in the index (paths relative to its root)


def plan_shards(paths, keys, shard_size: int) -> list[Shard]:
    """The pending images sorted by key and cut into shards of `shard_size`: the same images give the same shards."""
    shard_size = check_positive_int(shard_size, "shard_size")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    shards = []
    for number, start in enumerate(range(0, len(order), shard_size)):
        chosen = order[start:start + shard_size]
        shard_keys = tuple(keys[i] for i in chosen)
        digest = hashlib.sha256("\n".join(shard_keys).encode()).hexdigest()[:12]
        shards.append(Shard(f"shard-{number:06d}-{digest}", tuple(paths[i] for i in chosen), shard_keys))
    return shards


def staging_folder(index_directory) -> Path:
    return Path(index_directory) / STAGING


def write_staged_shard(folder: Path, shard: Shard, codes, embeddings, failed: dict) -> dict:
    """Writes a shard's results into `folder`, each file atomically, the record last; returns the record."""
    record = {"name": shard.name, "count": 0 if codes is None else len(codes), "failed": dict(failed),
              "code_file": None, "side": {}}
    if codes is not None and len(codes):
        codes.save(folder / f"{shard.name}.xlc")
        record["code_file"] = f"{shard.name}.xlc"
        if embeddings is not None:
            write_npy(folder / f"{shard.name}.{EMBEDDING}.npy", np.asarray(embeddings, np.float32))
            record["side"][EMBEDDING] = f"{shard.name}.{EMBEDDING}.npy"
    write_json(folder / f"{shard.name}.json", SHARD_FORMAT, SHARD_VERSION, record)
    return record


def read_staged_record(folder: Path, name: str) -> dict:
    """The record of staged shard `name` (FormatError if it is missing or damaged)."""
    return read_json(folder / f"{name}.json", SHARD_FORMAT, SHARD_VERSION, "staged shard record", FormatError)


def read_staged_records(folder: Path) -> list[dict]:
    """The records of shards staged and not adopted yet (a damaged record is skipped: its shard is encoded again)."""
    records = []
    for file in sorted(folder.glob("shard-*.json")) if folder.is_dir() else ():
        try:
            records.append(read_json(file, SHARD_FORMAT, SHARD_VERSION, "staged shard record", FormatError))
        except FormatError:
            file.unlink(missing_ok=True)
    return records


def remove_staged(folder: Path, name: str) -> None:
    """Every staged file of shard `name` (its record first: without it the rest is never adopted)."""
    (folder / f"{name}.json").unlink(missing_ok=True)
    for file in folder.glob(f"{name}.*"):
        file.unlink(missing_ok=True)


def remove_unrecorded(folder: Path) -> None:
    """Files of shards whose worker died before writing the record (and atomic-write leftovers)."""
    if not folder.is_dir():
        return
    recorded = {file.name[:-len(".json")] for file in folder.glob("shard-*.json")}
    for file in folder.iterdir():
        if file.name.split(".", 1)[0] not in recorded:
            file.unlink(missing_ok=True)
