"""Real codes from the shared image indexes (TAG/SET under `build_shared_indexes.py`'s folder) and synthetic
distractors made from them, for the scale benchmarks (`bench_scale.py`, `bench_stage1.py`).

Synthetic distractors (`synthetic_distractors`) are made from the real distractors only (scene15 and cub100, never
the SMVS references: each query keeps exactly one relevant image, as in a real collection): each takes every guidance
channel's code and mean from one of `parents` real images (chosen per channel), flips the sign of a fraction of the
nonzero positions and multiplies the channel means by log-normal noise. With one parent they are noisy
near-duplicates of real images; with more, per-channel chimeras. `bench_stage1.py` measures, for both, how a coarse
stage's recall compares with real distractors of the same number (see benchmarks/results/scale.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from build_shared_indexes import default_out
from crosslayer import Codes
from crosslayer.retrieval.image_index import ImageIndex

CACHE = default_out()  # where build_shared_indexes.py puts them
DISTRACTOR_SETS = ("scene15", "cub100")


def load_set(tag: str, name: str, pca_dim: int | None = None, cache: Path = CACHE) -> tuple[Codes, list[str]]:
    """(codes, keys) of one shared image index, truncated to the first `pca_dim` components of every channel (the
    full rotation's components are sorted by eigenvalue, so that is the code at pca_dim)."""
    with ImageIndex.open(cache / tag / name) as index:
        ids = index.codes.live_ids()
        codes, keys = index.codes.get(ids), index.codes.keys(ids)
    return (codes if pca_dim is None else truncate(codes, pca_dim)), keys


def truncate(codes: Codes, dim: int) -> Codes:
    """The first `dim` components of every channel's code (padding bits cleared)."""
    if dim >= codes.Dt:
        return codes
    words = (dim + 63) // 64
    bits = np.ascontiguousarray(codes.bits[..., :words])
    tail = dim - 64 * (words - 1)
    if tail < 64:
        bits[..., words - 1] &= np.uint64((1 << tail) - 1)
    return Codes(bits, codes.channel_mean, dim, codes.identity)


def smvs_relevance(tag: str, data: Path, cache: Path = CACHE) -> np.ndarray:
    """Per SMVS query (in the query index's id order), the row of its relevant reference in the database index."""
    items = {}
    for name in ("queries", "database"):
        with open(data / "smvs" / f"{name}.csv") as handle:
            items[name] = {str((data / "smvs" / r["path"]).resolve()): r["item"] for r in csv.DictReader(handle)}
    rows = {}
    for name in ("smvs-queries", "smvs-database"):
        with ImageIndex.open(cache / tag / name) as index:
            rows[name] = index.paths()
    where = {items["database"][str(Path(p).resolve())]: row for row, p in enumerate(rows["smvs-database"])}
    return np.array([where[items["queries"][str(Path(p).resolve())]] for p in rows["smvs-queries"]])


def synthetic_distractors(real: Codes, count: int, rng, parents: int = 3, flip_bits: int = 2, block: int = 4096):
    """Yields Codes blocks (at most `block` items) of `count` chimeras of `real` (see the module docstring): each
    channel's code and mean from one of `parents` random real images, chosen per channel; a sign is flipped where
    `flip_bits` random bits are all one (probability 2^-flip_bits); means times log-normal noise (sigma 0.3)."""
    made = 0
    words = real.bits.shape[-1]
    while made < count:
        n = min(block, count - made)
        chosen = rng.integers(0, len(real), (n, parents))
        which = rng.integers(0, parents, (n, real.Dk))
        source = np.take_along_axis(chosen, which, axis=1)  # (n, Dk): the real image each channel comes from
        channel = np.arange(real.Dk)[None, :]
        bits = real.bits[source, channel]
        means = real.channel_mean[source, channel]
        flips = np.full((n, real.Dk, words), np.uint64(2 ** 64 - 1))
        for _ in range(flip_bits):
            flips &= rng.integers(0, 2 ** 64, (n, real.Dk, words), dtype=np.uint64, endpoint=False)
        bits[:, :, 1] ^= flips & bits[:, :, 0]  # signs flip only where the code is nonzero
        means = (means * rng.lognormal(0.0, 0.3, means.shape)).astype(np.float32)
        yield Codes(bits, means, real.Dt, real.identity)
        made += n
