"""The coarse stage of two-stage search: the query's masked score on a short prefix of every channel's code (its
first b = word_bits - 1 PCA components, the strongest; 63 by default), scanned over every item from a channel-major
table, proposes the shortlist that the fine stage (`CodeIndex.rerank`: exact masked popcount over all Dt
components) re-ranks.

Why this and not an ANN library over a descriptor: the masked score depends on a per-query channel selection, so a
descriptor without it ranks by another measure, and FAISS's binary indexes on the same bits cannot apply the mask
(`benchmarks/bench_scale.py` compares them). The prefix score is the same masked score on fewer components; with 63
components its shortlist holds the exhaustive top 10 far better than channel means do at every size measured
(`benchmarks/results/scale.md`). A scan reads only the query's selected channels, word_bits / 8 bytes an item each;
the table (Dk words an item) and the codes are memory-mapped.

Cache: DIR/coarse/ holds one table per covered segment (TAB-<segment>.npy, written by `formats.write_npy`) and
DIR/coarse.json, a `crosslayer.formats` document recording the segments covered (file, crc32, id_base, count) and
each table's size and crc32. Tables are derived data, checked when loaded: a damaged, stale or foreign cache is
rebuilt, never trusted. A cache covering a prefix of the index's segments (images were added since) is extended
with the new segments' tables only; a compaction rewrites segments (and renumbers ids), so it rebuilds. Deleted ids
are excluded when the shortlist is taken, so a tombstone never reaches it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from crosslayer.errors import FormatError, UsageError
from crosslayer.formats import check_npy, read_json, write_json, write_npy
from crosslayer.retrieval import prefix_scan
from crosslayer.search import select_channels

COARSE_FORMAT = "crosslayer-coarse-index"
COARSE_VERSION = 2  # 2: prefix-score tables (1: a FAISS HNSW graph on channel means)
RECORD_FILE = "coarse.json"
TABLE_FOLDER = "coarse"
WORD_BITS = 64  # 63 components a channel: at 1M items, recall@10 0.97 with N = 1,000 (15: 0.63, 31: 0.85; scale.md)


class CoarseIndex:
    """The coarse stage of one `CodeIndex`, cached in `directory`. Use `CoarseIndex.open(directory, codes)`."""

    def __init__(self, directory: Path, dk: int, dt: int, covers: list[dict], tables: list[np.ndarray],
                 word_bits: int = WORD_BITS):
        self.directory, self.dk, self.dt, self.covers, self.tables = directory, dk, dt, covers, tables
        self.word_bits = word_bits
        self.b = prefix_scan.prefix_bits(word_bits, dt)

    @classmethod
    def open(cls, directory, codes, word_bits: int = WORD_BITS) -> "CoarseIndex":
        """The coarse stage of `codes` (a `CodeIndex`): the cache in `directory` when it is sound and covers a prefix
        of the segments (extended with the rest), else built anew; saved whenever it changed. word_bits: 16, 32 or
        64, the table's word (word_bits - 1 components a channel; a cache of another width is rebuilt)."""
        if word_bits not in prefix_scan.WORD_TYPES:
            raise UsageError(f"word_bits: expected one of {sorted(prefix_scan.WORD_TYPES)}, got {word_bits!r}")
        directory = Path(directory)
        segments = codes.segment_codes()
        coarse = cls._load(directory, codes.Dk, codes.Dt, word_bits)
        if coarse is None or [c["segment"] for c in coarse.covers] != [e for e, _ in segments[:len(coarse.covers)]]:
            coarse = cls(directory, codes.Dk, codes.Dt, [], [], word_bits)
        if coarse.extend(segments):
            coarse.save()
        return coarse

    @staticmethod
    def cached(directory) -> bool:
        """Whether `directory` holds a coarse stage's cache (sound or not: `open` checks it)."""
        return (Path(directory) / RECORD_FILE).is_file()

    @classmethod
    def problems(cls, directory, dk: int, dt: int) -> list[str]:
        """A damaged cache, named (`open` rebuilds it; a cache that is only behind the segments is no problem)."""
        directory = Path(directory)
        if not cls.cached(directory) or cls._load(directory, dk, dt, None) is not None:
            return []
        return [f"{directory / RECORD_FILE}: the coarse stage's cache is damaged or of another version (the next "
                "search with candidates rebuilds it)"]

    @classmethod
    def _load(cls, directory: Path, dk: int, dt: int, word_bits: int | None):
        """The cached coarse stage, or None when it is absent, damaged, of another version or another shape
        (word_bits None: any width)."""
        try:
            record = read_json(directory / RECORD_FILE, COARSE_FORMAT, COARSE_VERSION, "coarse index record")
            word_bits = record.get("word_bits") if word_bits is None else word_bits
            if (record.get("Dk"), record.get("Dt"), record.get("word_bits")) != (dk, dt, word_bits):
                return None
            tables = []
            for cover in record["covers"]:
                file = directory / TABLE_FOLDER / cover["table"]
                check_npy(file, cover["size"], cover["crc32"])
                # mapped, not read: the pages are the kernel's to keep or drop (a 1M-item 64-bit table is 2.6 GB)
                table = np.load(file, mmap_mode="r", allow_pickle=False)
                if table.shape != (dk, cover["segment"]["count"]) or table.dtype != prefix_scan.WORD_TYPES[word_bits]:
                    return None
                tables.append(table)
        except (FormatError, OSError, KeyError, TypeError, ValueError):
            return None
        return cls(directory, dk, dt, record["covers"], tables, word_bits)

    def extend(self, segments) -> bool:
        """Adds the tables of the segments past those covered; whether anything was added."""
        added = False
        for entry, bits in segments[len(self.covers):]:
            if entry["id_base"] != len(self):  # ids are positions: segments must follow one another
                raise FormatError(f"{self.directory}: segment {entry['file']} starts at id {entry['id_base']}, "
                                  f"expected {len(self)}")
            table = np.empty((self.dk, entry["count"]), prefix_scan.WORD_TYPES[self.word_bits])
            for start in range(0, entry["count"], 4096):  # a block at a time: the codes are memory-mapped
                stop = min(entry["count"], start + 4096)
                table[:, start:stop] = prefix_scan.prefix_table(bits[start:stop], self.word_bits, self.dk,
                                                                      self.dt)
            self.tables.append(table)
            self.covers.append({"segment": dict(entry), "table": f"TAB-{Path(entry['file']).stem}.npy"})
            added = True
        return added

    def save(self) -> None:
        """Writes the tables not written yet, then the record naming their checksums (a crash between leaves a
        record that does not name them: rebuilt or extended). A directory that cannot be written (a read-only
        index) keeps the stage in memory for this open only."""
        try:
            folder = self.directory / TABLE_FOLDER
            folder.mkdir(exist_ok=True)
            for cover, table in zip(self.covers, self.tables):
                if "crc32" not in cover:
                    cover.update(write_npy(folder / cover["table"], table))
            named = {cover["table"] for cover in self.covers}
            write_json(self.directory / RECORD_FILE, COARSE_FORMAT, COARSE_VERSION,
                       {"Dk": self.dk, "Dt": self.dt, "word_bits": self.word_bits, "covers": self.covers})
            for stale in folder.iterdir():  # tables of segments a compaction replaced
                if stale.name not in named:
                    stale.unlink(missing_ok=True)
            (self.directory / "coarse.faiss").unlink(missing_ok=True)  # a version-1 cache's graph
        except OSError:
            for cover in self.covers:
                cover.pop("crc32", None)

    def __len__(self) -> int:
        return sum(cover["segment"]["count"] for cover in self.covers)

    @property
    def nbytes(self) -> int:
        return sum(table.nbytes for table in self.tables)

    def query_words(self, query_bits: np.ndarray) -> np.ndarray:
        """(nq, Dk) table words of query codes' bits (2-plane or compact)."""
        return prefix_scan.prefix_table(query_bits, self.word_bits, self.dk, self.dt).T

    def shortlist(self, queries, candidates: int, channels: int | None, deleted: np.ndarray,
                  num_threads: int = 0) -> np.ndarray:
        """(nq, candidates) int64 ids of the live items of best prefix score over each query's `channels` selected
        channels (ties to the smaller id); -1 pads rows with fewer live items. queries: `Codes`."""
        words = self.query_words(queries.bits)
        selection = select_channels(queries.channel_mean, self.dk if channels is None else channels)
        tables = [(table, cover["segment"]["id_base"]) for table, cover in zip(self.tables, self.covers)]
        deleted = np.asarray(deleted, np.int64)
        total = len(self)

        threads = min(len(words), num_threads or os.cpu_count() or 1)
        # one thread budget: queries in parallel each scan on one thread; a lone query's scan uses them all
        scan_threads = 1 if threads > 1 else num_threads

        def one(row):
            chosen = selection[row]
            return prefix_scan.shortlist_one(tables, np.ascontiguousarray(words[row, chosen]), chosen, self.b,
                                             candidates, deleted, total, scan_threads)

        if threads <= 1:
            return np.stack([one(row) for row in range(len(words))]) if len(words) else np.zeros((0, candidates),
                                                                                                np.int64)
        with ThreadPoolExecutor(threads) as pool:  # the kernels release the GIL
            return np.stack(list(pool.map(one, range(len(words)))))
