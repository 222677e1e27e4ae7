"""An image index on disk: the fitted encoder (backbone, layers, side, PCA) plus a `CodeIndex` of the images' sign
codes keyed by path. Building resumes: images whose path is already indexed are skipped, and every chunk of images
is committed as one CodeIndex append, so an interrupted build loses at most the chunk being gathered.

Layout:
    DB_DIR/image-index.json    format, version
    DB_DIR/encoder.xle         the encoder queries must be encoded with
    DB_DIR/codes/              the CodeIndex (string keys = image paths, resolved)
The marker image-index.json is written last: a directory holding encoder.xle without it is an interrupted creation,
which `create` (and so `crosslayer index build`) completes with the saved encoder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from crosslayer._atomic import atomic_write
from crosslayer._validate import check_positive_int
from crosslayer.encoder import RUNTIME_OPTIONS, CrossLayerEncoder, EncoderMismatchError
from crosslayer.errors import CrossLayerError
from crosslayer.index import LOCK_NAME, MANIFEST_NAME, CodeIndex
from crosslayer.retrieval.channels import check_channel_count

INDEX_FORMAT = "crosslayer-image-index"
INDEX_VERSION = 1
_OPEN_OPTIONS = (*RUNTIME_OPTIONS, "weights")  # what `open` passes on to the stored encoder
_MARKER = "image-index.json"


class ImageIndexError(CrossLayerError, ValueError):
    """DB_DIR is not an image index, is of another version, or was built with another encoder."""


@dataclass
class AddReport:
    added: int = 0
    skipped: int = 0  # already indexed
    failed: list = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0


@dataclass
class Hit:
    rank: int
    path: str
    score: int
    id: int


class ImageIndex:
    def __init__(self, directory: Path, encoder: CrossLayerEncoder, codes: CodeIndex):
        self.directory, self.encoder, self.codes = directory, encoder, codes

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
    def create(cls, directory, encoder: CrossLayerEncoder, fit_sources=None) -> "ImageIndex":
        """A new index in `directory` (absent or empty); an unfitted encoder learns its PCA on `fit_sources`.

        A directory left by an interrupted creation is completed with its saved encoder, provided `encoder` is the
        same (ImageIndexError naming the differences otherwise)."""
        directory = Path(directory)
        if cls.interrupted_creation(directory):
            encoder = cls._load_checked(directory, encoder)
            codes = _empty_code_index(directory / "codes", encoder.Dk, encoder.Dt)
        else:
            if cls.exists(directory):
                raise ImageIndexError(f"{directory}: is an image index already (extend it with 'index add')")
            if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
                raise ImageIndexError(f"{directory}: exists and is not an empty directory")
            if encoder.pca_ is None:
                if not fit_sources:
                    raise ValueError("images: need at least one image to learn the encoder's PCA on")
                encoder.fit(fit_sources)
            directory.mkdir(parents=True, exist_ok=True)
            encoder.save(directory / "encoder.xle")
            codes = CodeIndex.create(directory / "codes", encoder.Dk, encoder.Dt)
        with atomic_write(directory / _MARKER, "w") as handle:
            json.dump({"format": INDEX_FORMAT, "version": INDEX_VERSION}, handle)
        return cls(directory, encoder, codes)

    @classmethod
    def _read_marker(cls, directory: Path) -> None:
        try:
            meta = json.loads((directory / _MARKER).read_text())
        except (OSError, ValueError):
            if cls.interrupted_creation(directory):
                raise ImageIndexError(f"{directory}: an interrupted 'crosslayer index build'; run the same build "
                                      "again to complete it") from None
            raise ImageIndexError(f"{directory}: not a crosslayer image index (no readable {_MARKER}); "
                                  "build one with 'crosslayer index build'") from None
        if meta.get("format") != INDEX_FORMAT:
            raise ImageIndexError(f"{directory}: not a crosslayer image index")
        if meta.get("version") != INDEX_VERSION:
            raise ImageIndexError(f"{directory}: image index version {meta.get('version')}, this crosslayer reads {INDEX_VERSION}")

    @classmethod
    def _load_checked(cls, directory: Path, requested: CrossLayerEncoder) -> CrossLayerEncoder:
        try:
            return CrossLayerEncoder.load_for_resume(directory / "encoder.xle", requested)
        except EncoderMismatchError as error:
            raise ImageIndexError(f"{directory}: built with another encoder: {'; '.join(error.differences)}; "
                                  "use another DB_DIR") from None

    @classmethod
    def _with_codes(cls, directory: Path, encoder: CrossLayerEncoder, mode: str) -> "ImageIndex":
        codes = CodeIndex.open(directory / "codes", mode, verify=False)
        if (codes.Dk, codes.Dt) != (encoder.Dk, encoder.Dt):
            codes.close()
            raise ImageIndexError(f"{directory}: codes (Dk={codes.Dk}, Dt={codes.Dt}) do not match the encoder")
        return cls(directory, encoder, codes)

    @classmethod
    def open(cls, directory, mode: str = "r", **runtime_options) -> "ImageIndex":
        """Opens an index for searching ("r") or adding ("a"); runtime_options (threads, batch_size...) apply to
        the stored encoder (weights given must be the ones it was built with: a moved file)."""
        directory = Path(directory)
        cls._read_marker(directory)
        options = {k: v for k, v in runtime_options.items() if k in _OPEN_OPTIONS and v is not None}
        return cls._with_codes(directory, CrossLayerEncoder.load(directory / "encoder.xle", **options), mode)

    @classmethod
    def resume(cls, directory, requested: CrossLayerEncoder) -> "ImageIndex":
        """Opens an index for adding with `requested`'s runtime options and weights file, provided `requested` is
        the encoder it was built with (ImageIndexError naming the differences otherwise)."""
        directory = Path(directory)
        cls._read_marker(directory)
        return cls._with_codes(directory, cls._load_checked(directory, requested), "a")

    def summary(self) -> dict:
        """What the index holds, for `crosslayer info`."""
        config = self.encoder.config()
        return {
            "image_index": str(self.directory),
            "images": len(self),
            "encoder": {k: config[k] for k in ("backbone", "layers", "side", "policy", "pca_dim", "Dk", "Dt",
                                               "weights", "weights_id")},
        }

    def close(self) -> None:
        self.codes.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self.codes)

    def paths(self) -> list[str]:
        return self.codes.keys(range(len(self.codes))) if len(self.codes) else []

    # ---- adding --------------------------------------------------------------------------------------------------
    def add(self, sources, chunk_size: int = 128, progress: bool = True) -> AddReport:
        """Encodes and appends the images not yet indexed (by path); bad images are reported, not indexed."""
        from tqdm.auto import tqdm

        from crosslayer.codes import Codes

        start = time.perf_counter()
        sources = [str(Path(s).resolve()) for s in sources]
        indexed = set(self.paths())
        todo, seen = [], set()
        for source in sources:
            if source not in indexed and source not in seen:
                todo.append(source)
                seen.add(source)
        report = AddReport(skipped=len(sources) - len(todo))
        pending_codes, pending_paths = [], []

        def commit():
            if pending_paths:
                self.codes.append(Codes.concatenate(pending_codes), pending_paths)
                pending_codes.clear()
                pending_paths.clear()

        with tqdm(total=len(todo), unit="img", desc="index", disable=not progress) as bar:
            try:
                for batch in self.encoder.activations(todo, on_error="skip"):
                    report.failed += [(str(e.path), e.reason) for _, e in batch.errors]
                    if batch.positions:
                        pending_codes.append(self.encoder.pool_batch(batch.outputs, "codes"))
                        pending_paths.extend(str(s) for s in batch.sources)
                        report.added += len(batch.positions)
                    bar.update(len(batch.positions) + len(batch.errors))
                    if len(pending_paths) >= chunk_size:
                        commit()
            finally:
                commit()
        report.seconds = time.perf_counter() - start
        return report

    # ---- searching -----------------------------------------------------------------------------------------------
    def search(self, queries, top: int = 10, channels: int | None = 50):
        """Encodes the query images and returns, per query, its `top` hits (ranked `Hit`s) and timings (seconds)."""
        # checked before the backbone runs on the queries
        top = check_positive_int(top, "top")
        channels = check_channel_count(channels, self.encoder.Dk)
        start = time.perf_counter()
        query_codes = self.encoder.encode([str(q) for q in queries])
        encoded = time.perf_counter()
        scores, ids = self.codes.search(query_codes, top, channels)
        searched = time.perf_counter()
        all_ids = sorted({int(i) for row in ids for i in row})
        path_of = dict(zip(all_ids, self.codes.keys(all_ids))) if all_ids else {}
        results = [
            [Hit(rank + 1, path_of[int(i)], int(s), int(i)) for rank, (s, i) in enumerate(zip(score_row, id_row))]
            for score_row, id_row in zip(scores, ids)
        ]
        return results, {"encode_s": encoded - start, "search_s": searched - encoded}


def _is_atomic_write_leftover(name: str) -> bool:
    """A temporary file `atomic_write` leaves only when the process is killed mid-write."""
    return name.startswith(".") and name.endswith(".tmp")


def _empty_code_index(path: Path, Dk: int, Dt: int) -> CodeIndex:
    """The codes of an interrupted creation, made anew: nothing is appended before the marker exists, so all there
    can be is an empty index, or the lock and temporary files of a `CodeIndex.create` cut short."""
    if (path / MANIFEST_NAME).is_file():
        codes = CodeIndex.open(path, "a", verify=False)
        if len(codes) == 0 and (codes.Dk, codes.Dt) == (Dk, Dt):
            return codes
        codes.close()
        raise ImageIndexError(f"{path}: holds {len(codes)} codes (Dk={codes.Dk}, Dt={codes.Dt}) but no image index "
                              "marker; move it away")
    if path.is_dir():
        entries = list(path.iterdir())
        if not all(e.name == LOCK_NAME or _is_atomic_write_leftover(e.name) for e in entries):
            raise ImageIndexError(f"{path}: holds files of no code index; move it away")
        for entry in entries:
            entry.unlink()
    return CodeIndex.create(path, Dk, Dt)
