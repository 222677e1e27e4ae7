"""The coarse stage of two-stage search: a FAISS HNSW graph over each image's L2-normalised channel means (the
pooled guidance embedding every code carries), searched by inner product (cosine) for a shortlist that the fine
stage (`CodeIndex.rerank`: exact masked popcount) re-ranks.

Why one structure per index kept as a cache, not a file per segment: the channel means it is built from are already
in the segments, checksummed with the codes, so the graph is derived data. One graph is searched once per query
(a graph per segment would be searched once per segment and merged, and HNSW gains nothing on small segments). The
cache (DIR/coarse.faiss and DIR/coarse.json, a `crosslayer.formats` document recording the segments it covers by
file and crc32 and the graph file's size and crc32) is checked when loaded: a damaged, stale or foreign cache is
rebuilt, never trusted. A cache that covers a prefix of the index's segments (images were added since) is
extended with the new segments' means only, and saved again; a compaction rewrites segments, so it rebuilds.
HNSW labels are the items' ids (items are added in id order); deleted ids are excluded at search time by an
IDSelector, so a tombstone never reaches the shortlist.

Vectors are stored as float16 (HNSW-SQ fp16): 2 bytes a channel (2.5 kB an image for 1280 channels) — the means are
non-negative values of order 1, far inside float16's precision for a cosine shortlist.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.errors import FormatError, UsageError
from crosslayer.formats import read_json, write_json

COARSE_FORMAT = "crosslayer-coarse-index"
COARSE_VERSION = 1
GRAPH_FILE = "coarse.faiss"
RECORD_FILE = "coarse.json"
HNSW_NEIGHBOURS = 32  # M: links per node; 32 is FAISS's usual choice for high-recall graphs of this dimension
BUILD_EFFORT = 80  # efConstruction


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UsageError("candidates: two-stage search needs FAISS (pip install faiss-cpu)") from None
    return faiss


def normalized_means(means: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32 C-contiguous as FAISS wants them."""
    means = np.ascontiguousarray(means, dtype=np.float32)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.ascontiguousarray(np.divide(means, norms, out=np.zeros_like(means), where=norms > 0))


def search_effort(candidates: int) -> int:
    """efSearch: the graph's search queue; at least twice the shortlist keeps HNSW recall of the cosine top-N high."""
    return max(64, 2 * candidates)


class CoarseIndex:
    """The coarse stage of one `CodeIndex`, cached in `directory`. Use `CoarseIndex.open(directory, codes)`."""

    def __init__(self, directory: Path, graph, covers: list[dict], dim: int):
        self.directory, self.graph, self.covers, self.dim = directory, graph, covers, dim

    @classmethod
    def open(cls, directory, codes) -> "CoarseIndex":
        """The coarse stage of `codes` (a `CodeIndex`): the cache in `directory` when it is sound and covers a prefix
        of the segments (extended with the rest), else built anew; saved whenever it changed."""
        directory = Path(directory)
        segments = codes.segment_means()
        coarse = cls._load(directory, codes.Dk)
        if coarse is None or coarse.covers != [entry for entry, _ in segments[:len(coarse.covers)]]:
            coarse = cls(directory, cls._new_graph(codes.Dk), [], codes.Dk)
        if coarse.extend(segments):
            coarse.save()
        return coarse

    @staticmethod
    def cached(directory) -> bool:
        """Whether `directory` holds a coarse stage's cache (sound or not: `open` checks it)."""
        return (Path(directory) / RECORD_FILE).is_file()

    @classmethod
    def problems(cls, directory, dim: int) -> list[str]:
        """A damaged cache, named (`open` rebuilds it; a cache that is only behind the segments is no problem)."""
        directory = Path(directory)
        if not cls.cached(directory) or cls._load(directory, dim) is not None:
            return []
        return [f"{directory / GRAPH_FILE}: the coarse stage's cache is damaged or of another version (the next "
                "search with candidates rebuilds it)"]

    @staticmethod
    def _new_graph(dim: int):
        faiss = _faiss()
        graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = BUILD_EFFORT
        return graph

    @classmethod
    def _load(cls, directory: Path, dim: int):
        """The cached coarse stage, or None when it is absent, damaged, of another version or another shape."""
        faiss = _faiss()
        try:
            record = read_json(directory / RECORD_FILE, COARSE_FORMAT, COARSE_VERSION, "coarse index record")
            data = (directory / GRAPH_FILE).read_bytes()
        except (FormatError, OSError):
            return None
        if (record.get("dim") != dim or len(data) != record.get("graph_size")
                or zlib.crc32(data) != record.get("graph_crc32")):
            return None
        try:
            graph = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        except RuntimeError:
            return None
        covered = sum(entry["count"] for entry in record["covers"])
        if graph.ntotal != covered or graph.d != dim:
            return None
        return cls(directory, graph, record["covers"], dim)

    def extend(self, segments) -> bool:
        """Adds the means of the segments past those covered; whether anything was added."""
        added = False
        for entry, means in segments[len(self.covers):]:
            if entry["id_base"] != self.graph.ntotal:  # labels are ids: segments must follow one another
                raise FormatError(f"{self.directory}: segment {entry['file']} starts at id {entry['id_base']}, "
                                  f"expected {self.graph.ntotal}")
            if entry["count"]:
                self.graph.add(normalized_means(means))
            self.covers.append(dict(entry))
            added = True
        return added

    def save(self) -> None:
        """Writes the graph, then the record naming its checksum (a crash between leaves a mismatch: rebuilt).
        A directory that cannot be written (a read-only index) keeps the graph in memory for this open only."""
        data = _faiss().serialize_index(self.graph).tobytes()
        try:
            with atomic_write(self.directory / GRAPH_FILE) as handle:
                handle.write(data)
            write_json(self.directory / RECORD_FILE, COARSE_FORMAT, COARSE_VERSION,
                       {"dim": self.dim, "kind": "hnsw-sq-fp16-ip", "neighbours": HNSW_NEIGHBOURS,
                        "covers": self.covers, "graph_size": len(data), "graph_crc32": zlib.crc32(data)})
        except OSError:
            pass

    def __len__(self) -> int:
        return int(self.graph.ntotal)

    def shortlist(self, channel_means: np.ndarray, candidates: int, deleted: np.ndarray) -> np.ndarray:
        """(nq, candidates) int64 ids of the items whose channel means are closest in cosine to each query's, live
        ones only; -1 pads rows the graph could not fill."""
        faiss = _faiss()
        queries = normalized_means(channel_means)
        if len(self) == 0:
            return np.full((len(queries), candidates), -1, np.int64)
        parameters = faiss.SearchParametersHNSW(efSearch=search_effort(candidates))
        if len(deleted):
            excluded = faiss.IDSelectorBatch(np.ascontiguousarray(deleted, np.int64))
            keep = faiss.IDSelectorNot(excluded)
            parameters.sel = keep
            # the selectors are referenced, not owned, by the parameters: keep them alive through the search
            parameters._selectors = (excluded, keep)
        _, ids = self.graph.search(queries, candidates, params=parameters)
        return ids.astype(np.int64)
