"""`ImageIndex`: THE store of crosslayer — the fitted encoder plus a `CodeIndex` of the images' sign codes keyed by
path relative to a root, with optional side arrays (the backbone's pooled embedding). Every command that encodes
images writes one; any of them can be searched, inspected, extended, verified and exported.

Layout:
    DB_DIR/image-index.json    `crosslayer.formats` JSON document "crosslayer-image-index" (version 2), written last
    DB_DIR/encoder.xle         the encoder queries must be encoded with (its identity digest is the codes' identity)
    DB_DIR/coarse/, coarse.json   the coarse stage of two-stage search (`crosslayer.retrieval.coarse`): a
                               checked cache built on the first search with `candidates`, extended by later adds
    DB_DIR/codes/              the CodeIndex: keys = image paths relative to the root (POSIX separators); side
                               array "embedding" (n, C) float32 when built with embeddings; attributes {"root":
                               absolute folder or null, "failed": {key: reason}} committed with every segment

Building resumes: images whose key is indexed (or recorded as failed, unless ``retry_failed``) are skipped. Work is
committed at least every `commit_seconds` (default 30 s) and every `commit_images` images, so a kill loses at most
that much. A directory holding encoder.xle and codes/ without the marker (an interrupted creation, or a deleted
marker) is completed by `create` with its saved encoder, provided the requested one is the same.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosslayer._validate import check_positive_int
from crosslayer.codes import Codes, identity_for_index
from crosslayer.encoder import RUNTIME_OPTIONS, CrossLayerEncoder, EncoderMismatchError
from crosslayer.errors import CrossLayerError, UsageError
from crosslayer.formats import read_json, write_json
from crosslayer.index import LOCK_NAME, MANIFEST_NAME, CodeIndex
from crosslayer.retrieval.channels import check_channel_count
from crosslayer.retrieval.coarse import CoarseIndex

INDEX_FORMAT = "crosslayer-image-index"
INDEX_VERSION = 2
EMBEDDING = "embedding"
_OPEN_OPTIONS = (*RUNTIME_OPTIONS, "weights")  # what `open` passes on to the stored encoder
_MARKER = "image-index.json"


class ImageIndexError(CrossLayerError, ValueError):
    """DB_DIR is not an image index, is of another version, or was built with another encoder."""


@dataclass
class AddReport:
    added: int = 0
    skipped: int = 0  # already indexed, or given twice
    recorded_bad: int = 0  # left out: recorded as bad by an earlier run (tried again only with retry_failed)
    failed: list = field(default_factory=list)  # (path, reason) of this run
    seconds: float = 0.0
    commits: int = 0


@dataclass
class Hit:
    rank: int
    path: str  # absolute, under the index's current root
    score: float  # raw masked ternary dot product (int), or normalised to [-1, 1]
    id: int
    key: str | None = None  # the stored key: the path relative to the index's root


def common_folder(paths) -> str:
    """The deepest folder holding every one of `paths` (resolved)."""
    parents = [str(Path(p).resolve().parent) for p in paths]
    return os.path.commonpath(parents) if parents else str(Path.cwd())


class ImageIndex:
    def __init__(self, directory: Path, encoder: CrossLayerEncoder, codes: CodeIndex):
        self.directory, self.encoder, self.codes = directory, encoder, codes
        self._coarse = None

    # ---- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def exists(cls, directory) -> bool:
        return (Path(directory) / _MARKER).is_file()

    @classmethod
    def interrupted_creation(cls, directory) -> bool:
        """Whether `directory` holds what `create` writes before its marker, and nothing else."""
        directory = Path(directory)
        if not directory.is_dir() or cls.exists(directory) or not (directory / "encoder.xle").is_file():
            return False
        return all(entry.name in ("encoder.xle", "codes") or _is_atomic_write_leftover(entry.name)
                   for entry in directory.iterdir())

    @classmethod
    def will_fit(cls, directory, encoder: CrossLayerEncoder) -> bool:
        """Whether `create(directory, encoder, ...)` would learn the encoder's PCA (it is unfitted and `directory`
        holds no interrupted creation with its saved, fitted encoder)."""
        return encoder.pca_ is None and not cls.exists(directory) and not cls.interrupted_creation(directory)

    @classmethod
    def create(cls, directory, encoder: CrossLayerEncoder, fit_sources=None, root=None,
               embeddings: bool = False, on_error: str = "skip", progress: bool = False) -> "ImageIndex":
        """A new index in `directory` (absent or empty); an unfitted encoder learns its PCA on `fit_sources`.

        root: the folder keys are relative to (default: the common folder of `fit_sources`, else of the first
        `add`). embeddings: keep each image's pooled backbone embedding (side array "embedding"). on_error and
        progress are the fit's (`CrossLayerEncoder.fit`): with "skip", the bad images of the fit sample are recorded
        as the index's failures (so `add` does not retry them unless asked, and `info` shows them); the fit's time
        is `encoder.fit_seconds_`.
        A directory left by an interrupted creation (or whose marker was deleted) is completed with its saved
        encoder and codes, provided `encoder` is the same (ImageIndexError naming the differences otherwise)."""
        directory = Path(directory)
        fit_failures = []
        if cls.interrupted_creation(directory):
            encoder = cls._load_checked(directory, encoder)
            codes = _completed_code_index(directory / "codes", encoder, embeddings)
        else:
            if cls.exists(directory):
                raise ImageIndexError(f"{directory}: is an image index already (extend it with 'index add')")
            if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
                raise ImageIndexError(f"{directory}: exists and is not an empty directory")
            fit_sources = None if fit_sources is None else list(fit_sources)
            if encoder.pca_ is None:
                if not fit_sources:
                    raise UsageError("images: need at least one image to learn the encoder's PCA on")
                encoder.fit(fit_sources, on_error=on_error, progress=progress)
                fit_failures = encoder.fit_failures_
            directory.mkdir(parents=True, exist_ok=True)
            encoder.save(directory / "encoder.xle")
            codes = _new_code_index(directory / "codes", encoder, embeddings)
        if root is None and codes.attributes.get("root") is None and fit_sources:
            root = common_folder(fit_sources)
        attributes = codes.attributes
        if root is not None:
            attributes["root"] = str(Path(root).resolve())
        if fit_failures and attributes.get("root") is not None:
            attributes.setdefault("failed", {}).update(
                {_relative_key(path, attributes["root"]): reason for path, reason in fit_failures})
        if attributes != codes.attributes:
            codes.set_attributes(attributes)
        write_json(directory / _MARKER, INDEX_FORMAT, INDEX_VERSION, {})
        return cls(directory, encoder, codes)

    @classmethod
    def _read_marker(cls, directory: Path) -> None:
        if not (directory / _MARKER).is_file():
            if cls.interrupted_creation(directory):
                raise ImageIndexError(f"{directory}: an interrupted 'crosslayer index build'; run the same build "
                                      "again to complete it")
            raise ImageIndexError(f"{directory}: not a crosslayer image index (no {_MARKER}); build one with "
                                  "'crosslayer index build'")
        read_json(directory / _MARKER, INDEX_FORMAT, INDEX_VERSION, "crosslayer image index marker", ImageIndexError)

    @classmethod
    def _load_checked(cls, directory: Path, requested: CrossLayerEncoder) -> CrossLayerEncoder:
        try:
            return CrossLayerEncoder.load_for_resume(directory / "encoder.xle", requested)
        except EncoderMismatchError as error:
            raise ImageIndexError(f"{directory}: built with another encoder: {'; '.join(error.differences)}; "
                                  "use another DB_DIR") from None

    @classmethod
    def _with_codes(cls, directory: Path, encoder: CrossLayerEncoder, mode: str, verify: str) -> "ImageIndex":
        codes = CodeIndex.open(directory / "codes", mode, verify=verify)
        problem = _codes_mismatch(codes, encoder)
        if problem:
            codes.close()
            raise ImageIndexError(f"{directory}: {problem}")
        return cls(directory, encoder, codes)

    @classmethod
    def open(cls, directory, mode: str = "r", verify: str = "lazy", **runtime_options) -> "ImageIndex":
        """Opens an index for searching ("r") or changing ("a"); runtime_options (threads, batch_size...) apply to
        the stored encoder (weights given must be the ones it was built with: a moved file). verify: the
        `CodeIndex.open` policy ("lazy": each segment checked when first read)."""
        directory = Path(directory)
        cls._read_marker(directory)
        options = {k: v for k, v in runtime_options.items() if k in _OPEN_OPTIONS and v is not None}
        return cls._with_codes(directory, CrossLayerEncoder.load(directory / "encoder.xle", **options), mode, verify)

    @classmethod
    def resume(cls, directory, requested: CrossLayerEncoder) -> "ImageIndex":
        """Opens an index for adding with `requested`'s runtime options and weights file, provided `requested` is
        the encoder it was built with (ImageIndexError naming the differences otherwise)."""
        directory = Path(directory)
        cls._read_marker(directory)
        return cls._with_codes(directory, cls._load_checked(directory, requested), "a", "lazy")

    # ---- what it holds -------------------------------------------------------------------------------------------
    @property
    def root(self) -> str | None:
        """The folder image keys are relative to (None until the first images are added)."""
        return self.codes.attribute("root")  # read for every key and hit: no copy of all the attributes

    def failures(self) -> dict:
        """{path: reason} of the images recorded as unusable (not retried unless asked)."""
        return {self.path_of(key): reason for key, reason in self.codes.attribute("failed", {}).items()}

    def summary(self) -> dict:
        """What the index holds, for `crosslayer info`."""
        config = self.encoder.config()
        codes = self.codes.summary()
        return {
            "image_index": str(self.directory),
            "images": codes["count"],
            "deleted": codes["deleted"],
            "failed": len(self.codes.attributes.get("failed", {})),
            "bytes": codes["bytes"] + (self.directory / "encoder.xle").stat().st_size,
            "root": self.root,
            "identity": {"digest": self.encoder.identity_digest, **self.encoder.identity},
            "side": codes["side"],
            "encoder": {k: config[k] for k in ("backbone", "layers", "side", "policy", "pca_dim", "Dk", "Dt",
                                               "weights", "weights_id")},
        }

    def verify(self) -> list[str]:
        """Every problem with the committed codes and side arrays (the encoder file was checked when opened), and
        with the coarse stage's cache when there is one."""
        problems = self.codes.verify()
        if CoarseIndex.cached(self.directory):
            problems += CoarseIndex.problems(self.directory, self.codes.Dk, self.codes.Dt)
        return problems

    def close(self) -> None:
        self.codes.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.codes.live_count

    def path_of(self, key: str) -> str:
        """The absolute path of an image given by its key (under the current root)."""
        return os.path.normpath(os.path.join(self.root, key)) if self.root is not None else key

    def _key_of(self, path) -> str:
        return _relative_key(path, self.root)

    def paths(self) -> list[str]:
        """Absolute paths of the live images, in id order."""
        return [self.path_of(key) for key in self.codes.keys(self.codes.live_ids())]

    def keys(self) -> list[str]:
        """The stored keys (paths relative to the root) of the live images, in id order."""
        return self.codes.keys(self.codes.live_ids())

    def find(self, paths) -> np.ndarray:
        """The live id of each path (absolute, or a key relative to the root); -1 where it is not indexed."""
        if isinstance(paths, (str, bytes)):
            raise TypeError("paths: expected a sequence of paths, got a single string")
        return self.codes.find([self._lookup_key(p) for p in paths])

    def check_root(self) -> None:
        """ImageIndexError when the recorded root folder no longer exists: the images were moved, and keys taken
        from new paths would point outside it (every image re-added under '../...')."""
        if self.root is not None and not os.path.isdir(self.root):
            raise ImageIndexError(f"{self.directory}: the images' folder {self.root} no longer exists; if they were "
                                  f"moved, run 'crosslayer index rebase {self.directory} NEW_ROOT' first")

    def missing_images(self, paths) -> list:
        """Those of `paths` (of hits: `Hit.path`) that are not files (moved or deleted since they were indexed)."""
        return [path for path in paths if not os.path.isfile(path)]

    def rebase(self, new_root) -> None:
        """Records `new_root` as the folder the keys are relative to (after moving the images there)."""
        new_root = Path(new_root)
        if not new_root.is_dir():
            raise UsageError(f"new_root: {new_root} is not a directory")
        self.codes.set_attributes(dict(self.codes.attributes, root=str(new_root.resolve())))

    def remove(self, paths) -> int:
        """Tombstones the images given by path (absolute, or a key relative to the root); returns how many."""
        return self.codes.delete_keys([self._lookup_key(p) for p in paths])

    def ids_of(self, keys) -> np.ndarray:
        """The ids (int64) of the live images given by path (absolute, or a key relative to the root), in order;
        UsageError naming those not indexed, or given more than once."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys: expected a sequence of paths, got a single string")
        keys = list(keys)
        lookup = [self._lookup_key(k) for k in keys]
        counts = Counter(lookup)
        repeated = sorted({str(k) for k, stored in zip(keys, lookup) if counts[stored] > 1})
        if repeated:
            raise UsageError(f"keys: given more than once: {repeated[:5]}")
        ids = self.codes.find(lookup)
        absent = [k for k, i in zip(keys, ids) if i < 0]
        if absent:
            raise UsageError(f"keys: not in the index: {absent[:5]}")
        return ids

    def export(self, path, keys=None) -> int:
        """Writes the codes of the images `keys` (default: every live image) with their keys (relative to the root)
        and the encoder identity to one code file (`Codes.load` reads it); returns how many."""
        return self.codes.export(path, None if keys is None else self.ids_of(keys))

    def _lookup_key(self, given) -> str:
        given = str(given)
        if self.root is not None and os.path.isabs(given):
            return self._key_of(given)
        return Path(given).as_posix()

    # ---- adding --------------------------------------------------------------------------------------------------
    def add(self, sources, commit_seconds: float | None = 30.0, commit_images: int | None = None,
            on_error: str = "skip", retry_failed: bool = False, embeddings: bool | None = None,
            progress: bool = True, side=None) -> AddReport:
        """Encodes and commits the images not yet indexed (by path); returns what this run did.

        commit_seconds / commit_images: commit whenever that much time has passed or that many images are pending
        (None: no such bound), so a kill loses at most that much work. on_error: "skip" records a bad image (path
        and reason, committed with the codes; not retried later unless `retry_failed`) and goes on, "raise" stops
        with its ImageError (what was encoded before is committed). embeddings: keep the pooled embeddings (None:
        as the index does; True on an empty index without them starts keeping them). side: a callable
        (`ActivationBatch` -> {name: (n, ...) rows}) of further side arrays kept per image, computed while the
        batch's activations are in memory (the same names on every add)."""
        from tqdm.auto import tqdm

        if on_error not in ("skip", "raise"):
            raise UsageError(f"on_error: expected 'skip' or 'raise', got {on_error!r}")
        if commit_seconds is not None and (isinstance(commit_seconds, bool) or not commit_seconds > 0):
            raise UsageError(f"commit_seconds: expected a positive number of seconds or None, got {commit_seconds!r}")
        if commit_images is not None:
            commit_images = check_positive_int(commit_images, "commit_images")
        keep_embeddings = self.embedding_choice(embeddings)
        start = time.perf_counter()
        resolved = [str(Path(s).resolve()) for s in sources]
        if self.root is None and not resolved:
            return AddReport(seconds=time.perf_counter() - start)
        todo, keys, recorded_bad = self.pending(resolved, retry_failed)
        attributes = dict(self.codes.attributes, embeddings=keep_embeddings)
        failed = attributes.setdefault("failed", {})
        key_of = dict(zip(todo, keys))
        report = AddReport(skipped=len(resolved) - len(todo) - recorded_bad, recorded_bad=recorded_bad)
        pending = {"codes": [], "keys": [], "embeddings": [], "side": [], "dirty": False}
        last_commit = time.monotonic()

        def commit():
            nonlocal last_commit
            if pending["keys"]:
                rows = {EMBEDDING: np.concatenate(pending["embeddings"])} if keep_embeddings else {}
                rows.update({name: np.concatenate([part[name] for part in pending["side"]])
                             for name in (pending["side"][0] if pending["side"] else ())})
                with self.encoder.stage_times_.timing("writing"):
                    self.codes.append(Codes.concatenate(pending["codes"]), pending["keys"], rows or None, attributes)
            elif pending["dirty"]:
                self.codes.set_attributes(attributes)
            else:
                return
            report.commits += 1
            pending.update(codes=[], keys=[], embeddings=[], side=[], dirty=False)
            last_commit = time.monotonic()

        mode = "raise" if on_error == "raise" else "skip"
        with tqdm(total=len(todo), unit="img", desc="index", disable=not progress) as bar:
            try:
                # a `side` callable may read the layers' maps: the pooling then stays out of the graph
                for batch in self.encoder.activations(todo, on_error=mode, for_pooling="codes" if side is None else False):
                    for _, error in batch.errors:
                        failed[key_of.get(str(error.path), self._key_of(error.path))] = error.reason
                        report.failed.append((str(error.path), error.reason))
                        pending["dirty"] = True
                    if batch.positions:
                        # everything computed before anything is pending: an interrupt here commits whole batches
                        codes = self.encoder.pool_batch(batch.outputs, "codes")
                        extra = side(batch) if side is not None else None
                        pending["codes"].append(codes)
                        batch_keys = [key_of[str(s)] for s in batch.sources]
                        pending["keys"].extend(batch_keys)
                        for key in batch_keys:
                            pending["dirty"] |= failed.pop(key, None) is not None
                        if keep_embeddings:
                            pending["embeddings"].append(np.asarray(batch.outputs[EMBEDDING], np.float32))
                        if extra is not None:
                            pending["side"].append(extra)
                        report.added += len(batch.positions)
                    bar.update(len(batch.positions) + len(batch.errors))
                    due_by_size = commit_images is not None and len(pending["keys"]) >= commit_images
                    due_by_time = commit_seconds is not None and time.monotonic() - last_commit >= commit_seconds
                    if due_by_size or due_by_time:
                        commit()
            finally:
                commit()  # whatever was gathered before an error or an interrupt
        if report.added and CoarseIndex.cached(self.directory):
            self.coarse()  # a coarse stage in use is extended with the codes, not at the next search
        report.seconds = time.perf_counter() - start
        return report

    def pending(self, sources, retry_failed: bool = False) -> tuple[list[str], list[str], int]:
        """(absolute paths, keys) of `sources` not indexed yet, in the order given, each once, and how many images
        recorded as failed were left out (all of them unless `retry_failed`). An index without a root takes the
        sources' common folder."""
        resolved = [str(Path(s).resolve()) for s in sources]
        if self.root is None and resolved:
            self.codes.set_attributes(dict(self.codes.attributes, root=common_folder(resolved)))
        self.check_root()
        failed = self.codes.attributes.get("failed", {})
        indexed = set(self.keys())
        todo, keys, seen, recorded_bad = [], [], set(), set()
        for source in resolved:
            key = self._key_of(source)
            if key in failed and not retry_failed and key not in indexed:
                recorded_bad.add(key)
                continue
            if key in indexed or key in seen:
                continue
            todo.append(source)
            keys.append(key)
            seen.add(key)
        return todo, keys, len(recorded_bad)

    def adopt(self, code_file, side_files: dict | None = None, failed: dict | None = None,
              embeddings: bool | None = None) -> int:
        """Commits a segment of these images' codes written elsewhere (`CodeIndex.adopt`: renamed, not copied;
        keys relative to the root) together with the images that could not be encoded ({key: reason}, recorded as
        `add` records them); returns how many images it added. code_file None: only failures to record."""
        attributes = dict(self.codes.attributes, embeddings=self.embedding_choice(embeddings))
        attributes.setdefault("failed", {}).update(failed or {})
        if code_file is None:
            self.codes.set_attributes(attributes)
            return 0
        keys_added = self.codes.adopt(code_file, side_files, attributes)
        return len(keys_added)

    def embedding_choice(self, embeddings: bool | None) -> bool:
        """Whether an add with `embeddings` (None: as the index does) keeps them; UsageError if it cannot."""
        empty = len(self.codes) == 0
        has = EMBEDDING in self.codes.side_names or (empty and bool(self.codes.attributes.get("embeddings")))
        if embeddings is None or bool(embeddings) == has:
            return has
        if empty:
            return bool(embeddings)  # the first append declares the side array
        if embeddings:
            raise UsageError(f"embeddings: {self.directory} holds images without embeddings; build a new index "
                             "with embeddings to keep them")
        raise UsageError(f"embeddings: {self.directory} keeps an embedding per image; every add must too")

    def embeddings(self) -> np.ndarray:
        """The pooled embeddings (n, C) float32 of the live images, in id order."""
        if EMBEDDING not in self.codes.side_names:
            raise UsageError(f"{self.directory}: built without embeddings (build it with embeddings=True)")
        return self.codes.side(EMBEDDING)

    # ---- searching -----------------------------------------------------------------------------------------------
    def search(self, queries, top: int = 10, channels: int | None = 50, normalize: bool = False,
               candidates: int | None = None, codes_search=None, on_error: str = "raise"):
        """Encodes the query images and returns, per query, its `top` hits (ranked `Hit`s) and timings (seconds).

        on_error: "raise" stops at the first query image that cannot be used (its ImageError); "skip" searches the
        others, and the entry of a bad query in the results is its ImageError (``path``, ``reason``) instead of hits.

        Scores are raw masked ternary dot products (integers; the range grows with the channels compared and Dt),
        or with ``normalize=True`` those divided by sqrt(nnz_q * nnz_x) over the compared channels: in [-1, 1].
        candidates: None searches every image (exhaustive: the reference); N searches two-stage: a shortlist of
        the N images of best masked score on the first 63 components of every channel (`crosslayer.retrieval.coarse`),
        re-ranked by the same exact masked scores (N at least the images indexed: all of them, the exhaustive result).
        codes_search: what searches the codes exhaustively, with `CodeIndex.search`'s signature (default: this
        index's codes; e.g. `crosslayer.distributed.ShardedIndex.search_codes`)."""
        # checked before the backbone runs on the queries
        top, channels, candidates = self._check_search(top, channels, candidates)
        if on_error not in ("skip", "raise"):
            raise UsageError(f"on_error: expected 'skip' or 'raise', got {on_error!r}")
        start = time.perf_counter()
        queries = [str(q) for q in queries]
        parts, encoded_positions, results = [], [], [None] * len(queries)
        for batch in self.encoder.activations(queries, on_error=on_error, for_pooling="codes"):
            for position, error in batch.errors:
                results[position] = error
            if batch.positions:
                parts.append(self.encoder.pool_batch(batch.outputs, "codes"))
                encoded_positions += list(batch.positions)
        encoded = time.perf_counter()
        if parts:
            hits = self._hits(Codes.concatenate(parts), top, channels, normalize, candidates, codes_search)
            for position, found in zip(encoded_positions, hits):
                results[position] = found
        return results, {"encode_s": encoded - start, "search_s": time.perf_counter() - encoded}

    def search_keys(self, keys, top: int = 10, channels: int | None = 50, normalize: bool = False,
                    candidates: int | None = None, codes_search=None):
        """`search` with indexed images as the queries (their stored codes: nothing is re-encoded). Keys are
        paths (absolute, or relative to the root); UsageError naming those not indexed."""
        top, channels, candidates = self._check_search(top, channels, candidates)
        start = time.perf_counter()
        query_codes = self.codes.get(self.ids_of(keys))
        fetched = time.perf_counter()
        results = self._hits(query_codes, top, channels, normalize, candidates, codes_search)
        return results, {"encode_s": fetched - start, "search_s": time.perf_counter() - fetched}

    def search_codes(self, query_codes, top: int = 10, channels: int | None = 50, normalize: bool = False,
                     candidates: int | None = None, codes_search=None):
        """`search` with given query codes (e.g. read from an exported .xlc): they must be this index's encoder's
        (IdentityMismatchError naming both otherwise; UsageError for another shape)."""
        top, channels, candidates = self._check_search(top, channels, candidates)
        if not isinstance(query_codes, Codes):
            raise TypeError(f"query_codes: expected crosslayer.Codes, got {type(query_codes).__name__}")
        identity_for_index(self.codes.identity, "query_codes", query_codes.identity)
        start = time.perf_counter()
        results = self._hits(query_codes, top, channels, normalize, candidates, codes_search)
        return results, {"encode_s": 0.0, "search_s": time.perf_counter() - start}

    def _check_search(self, top, channels, candidates):
        top = check_positive_int(top, "top")
        channels = check_channel_count(channels, self.encoder.Dk)
        if candidates is not None:
            candidates = check_positive_int(candidates, "candidates")
        return top, channels, candidates

    def coarse(self) -> CoarseIndex:
        """The coarse stage of two-stage search, loaded from its cache (checked; extended or rebuilt as needed)."""
        segments = [entry for entry, _ in self.codes.segment_codes()]
        if self._coarse is None or [c["segment"] for c in self._coarse.covers] != segments:
            self._coarse = CoarseIndex.open(self.directory, self.codes)
        return self._coarse

    def shortlist(self, query_codes, candidates: int, channels: int | None = 50) -> np.ndarray:
        """(nq, candidates) ids the coarse stage proposes per query for a search over `channels` channels (-1 pads);
        every live id when `candidates` covers the index."""
        candidates = check_positive_int(candidates, "candidates")
        channels = check_channel_count(channels, self.encoder.Dk)
        if candidates >= self.codes.live_count:
            return np.broadcast_to(self.codes.live_ids(), (len(query_codes), self.codes.live_count))
        return self.coarse().shortlist(query_codes, candidates, channels, self.codes._deleted_array())

    def _hits(self, query_codes, top, channels, normalize, candidates=None, codes_search=None) -> list:
        if candidates is None or candidates >= self.codes.live_count:  # a shortlist of everything: exhaustive
            scores, ids = (codes_search or self.codes.search)(query_codes, top, channels, normalize=normalize)
        else:
            shortlist = self.shortlist(query_codes, candidates, channels)
            scores, ids = self.codes.rerank(query_codes, shortlist, top, channels, normalize=normalize)
            found = ids >= 0
            scores, ids = [s[f] for s, f in zip(scores, found)], [i[f] for i, f in zip(ids, found)]
        all_ids = sorted({int(i) for row in ids for i in row})
        key_of = dict(zip(all_ids, self.codes.keys(all_ids))) if all_ids else {}
        convert = float if normalize else int
        return [[Hit(rank + 1, self.path_of(key_of[int(i)]), convert(s), int(i), key_of[int(i)])
                 for rank, (s, i) in enumerate(zip(srow, irow))]
                for srow, irow in zip(scores, ids)]


def _relative_key(path, root: str) -> str:
    """The key of an image: its resolved path relative to `root`, with POSIX separators."""
    return Path(os.path.relpath(str(Path(path).resolve()), root)).as_posix()


def _is_atomic_write_leftover(name: str) -> bool:
    """A temporary file `atomic_write` leaves only when the process is killed mid-write."""
    return name.startswith(".") and name.endswith(".tmp")


def _codes_mismatch(codes: CodeIndex, encoder: CrossLayerEncoder) -> str | None:
    if (codes.Dk, codes.Dt) != (encoder.Dk, encoder.Dt):
        return f"codes (Dk={codes.Dk}, Dt={codes.Dt}) do not match the encoder (Dk={encoder.Dk}, Dt={encoder.Dt})"
    if codes.identity is not None and codes.identity != encoder.identity_digest:
        return f"codes of encoder {codes.identity} do not match the stored encoder ({encoder.identity_digest})"
    return None


def _new_code_index(path: Path, encoder: CrossLayerEncoder, embeddings: bool) -> CodeIndex:
    codes = CodeIndex.create(path, encoder.Dk, encoder.Dt, identity=encoder.identity_digest)
    codes.set_attributes({"root": None, "failed": {}, "embeddings": bool(embeddings)})
    return codes


def _completed_code_index(path: Path, encoder: CrossLayerEncoder, embeddings: bool) -> CodeIndex:
    """The codes of an interrupted creation (or of an index whose marker was deleted): kept if they are this
    encoder's, made anew if a `CodeIndex.create` was cut short before its manifest."""
    if (path / MANIFEST_NAME).is_file():
        codes = CodeIndex.open(path, "a")
        problem = _codes_mismatch(codes, encoder)
        if problem:
            codes.close()
            raise ImageIndexError(f"{path}: {problem}; move it away")
        return codes
    if path.is_dir():
        entries = list(path.iterdir())
        if not all(e.name == LOCK_NAME or _is_atomic_write_leftover(e.name) for e in entries):
            raise ImageIndexError(f"{path}: holds files of no code index; move it away")
        for entry in entries:
            entry.unlink()
    return _new_code_index(path, encoder, embeddings)
