"""One backbone pass per image for the retrieval evaluation, kept in image indexes and resumable.

For every image of a named set it keeps what each compared method needs: the sign codes (with channel means), the
pooled embedding of the guidance layer (global embedding and SPoC), and optionally the cross-layer float scores
against the queries (computed while the image's 1.6 MB float representation is in memory, then dropped) or, for the
query set only, the float representations themselves.

Layout:
    cache.json          `crosslayer.formats` document "crosslayer-retrieval-features" (version 2): the learn set
                        (see `learn_set_key`) the encoder's PCA was learnt on; written after encoder.xle
    encoder.xle         the fitted encoder every set is encoded with
    <set>/              an `ImageIndex` (with that encoder): codes keyed by image path, side arrays "embedding"
                        (n, C), optionally "float_scores" (n, queries, channel settings) and "float_reps"
                        (n, Dk*Dt); attribute "float_key" says which queries and settings the float scores are of

A set resumes by its index's own keys: images already indexed (or recorded as failed) are not encoded again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from crosslayer.codes import Codes
from crosslayer.encoder import CrossLayerEncoder, EncoderMismatchError
from crosslayer.errors import CrossLayerError, FormatError, UsageError
from crosslayer.formats import read_json, write_json
from crosslayer.retrieval.image_index import ImageIndex

CACHE_FORMAT = "crosslayer-retrieval-features"
CACHE_VERSION = 2
META_NAME = "cache.json"
ENCODER_NAME = "encoder.xle"
FLOAT_SCORES, FLOAT_REPS = "float_scores", "float_reps"


class FeatureCacheError(CrossLayerError, ValueError):
    """A cache directory is not one, or was made with other settings (encoder, learn set, float scores)."""


class FeatureCacheFormatError(FeatureCacheError, FormatError):
    """The cache's metadata file is not one, is of another version, or is damaged."""


def learn_set_key(paths, fit_images, seed) -> str:
    """Identifies what the encoder's PCA is learnt on: the learn images (resolved, in order, and their count) and the
    seeded sample of at most `fit_images` of them that `CrossLayerEncoder.fit` draws."""
    resolved = [str(Path(p).resolve()) for p in paths]
    text = json.dumps({"count": len(resolved), "paths": resolved, "fit_images": fit_images, "seed": seed})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def float_key(query_paths, channel_counts) -> str:
    """Identifies the queries and channel settings float scores were computed against."""
    text = json.dumps([list(map(str, query_paths)), [c if c is not None else "all" for c in channel_counts]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, directory, encoder: CrossLayerEncoder, fit_sources=None, on_error: str = "skip",
                 progress: bool = False):
        """Opens `directory`, or creates it with `encoder` (fitted on `fit_sources` if it is not fitted yet; bad
        learn images skipped, as computing the learn set skips them, or raised with on_error="raise").

        fit_sources: the learn set. The cache records its `learn_set_key` and refuses to be opened with another one:
        every cached code depends on the PCA learnt on it. `learn_paths` is this learn set (None when not given)."""
        self.directory = Path(directory)
        self.learn_paths = None if fit_sources is None else [str(p) for p in fit_sources]
        requested = (None if fit_sources is None
                     else learn_set_key(self.learn_paths, encoder.fit_images, encoder.seed))
        if (self.directory / META_NAME).exists():
            meta = read_json(self.directory / META_NAME, CACHE_FORMAT, CACHE_VERSION, "retrieval feature cache",
                             FeatureCacheFormatError)
            try:
                self.encoder = CrossLayerEncoder.load_for_resume(self.directory / ENCODER_NAME, encoder)
            except EncoderMismatchError as error:
                raise FeatureCacheError(f"{self.directory}: made with another encoder: "
                                        f"{'; '.join(error.differences)}; use another --cache") from None
            if requested is not None and meta.get("learn_set") != requested:
                # refitting would invalidate every cached code: a new --cache is the same work, and keeps the old one
                raise FeatureCacheError(
                    f"{self.directory}: its PCA was learnt on another learn set ({meta.get('learn_set')}, requested "
                    f"{requested}); use a new --cache for this --learn/--learn-images/--fit-images")
            return
        if self.directory.exists() and any(e.name != ENCODER_NAME for e in self.directory.iterdir()):
            raise FeatureCacheError(f"{self.directory}: not a retrieval feature cache (no {META_NAME}) and not empty")
        if encoder.pca_ is None:
            if not fit_sources:
                raise UsageError("fit_sources: an unfitted encoder needs images to learn its PCA on")
            encoder.fit(self.learn_paths, on_error=on_error, progress=progress)
        self.directory.mkdir(parents=True, exist_ok=True)
        encoder.save(self.directory / ENCODER_NAME)
        write_json(self.directory / META_NAME, CACHE_FORMAT, CACHE_VERSION, {"learn_set": requested})
        self.encoder = encoder

    def _set_directory(self, name: str) -> Path:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or name == ENCODER_NAME:
            raise UsageError(f"name: expected a set name (no '/'), got {name!r}")
        return self.directory / name

    def open_set(self, name: str) -> ImageIndex | None:
        """The image index of set `name` opened for reading (None when nothing was computed for it yet)."""
        folder = self._set_directory(name)
        if not ImageIndex.exists(folder):
            return None
        return ImageIndex.open(folder, "r", weights=self.encoder.weights)

    # ---- reading -------------------------------------------------------------------------------------------------
    def load(self, name: str, paths=None) -> dict:
        """The cached features of set `name`: paths, codes, embedding, float_scores (queries, n, settings) and
        float_reps (or None), float_key, errors. With `paths`, rows are returned in that order (those not indexed,
        failed images among them, left out)."""
        index = self.open_set(name)
        if index is None:
            return {"paths": [], "codes": Codes.empty(self.encoder.Dk, self.encoder.Dt), "embedding": None,
                    "float_scores": None, "float_reps": None, "float_key": None, "errors": []}
        with index:
            if paths is None:
                ids, found = index.codes.live_ids(), index.paths()
            else:
                given = [str(p) for p in paths]
                looked_up = index.find(given)
                ids = looked_up[looked_up >= 0]
                found = [p for p, i in zip(given, looked_up) if i >= 0]
            side = index.codes.side_names

            def rows(name):
                return index.codes.side(name, ids) if name in side else None

            float_scores = rows(FLOAT_SCORES)
            return {
                "paths": found,
                "codes": index.codes.get(ids),
                "embedding": rows("embedding"),
                "float_scores": None if float_scores is None else np.ascontiguousarray(float_scores.transpose(1, 0, 2)),
                "float_reps": rows(FLOAT_REPS),
                "float_key": index.codes.attributes.get("float_key"),
                "errors": [{"path": path, "reason": reason} for path, reason in index.failures().items()],
            }

    # ---- computing -----------------------------------------------------------------------------------------------
    def compute(self, name: str, paths, scorer=None, scorer_key: str | None = None, keep_float: bool = False,
                commit_images: int | None = 128, commit_seconds: float | None = 30.0, on_error: str = "skip",
                progress: bool = True) -> int:
        """Encodes the images of `paths` not yet in set `name`; returns how many were encoded now.

        scorer: a `FloatQueryScorer`; each image's float scores against the queries are kept (`scorer_key` says
        against which). keep_float: keep the float representations themselves (queries only: 1.6 MB/image).
        commit_images / commit_seconds: as `ImageIndex.add` (a kill loses at most that much work); the image bound
        also bounds the pending float representations (1.6 MB each) held in memory."""
        folder = self._set_directory(name)
        if ImageIndex.exists(folder):
            index = ImageIndex.resume(folder, self.encoder)
        else:
            index = ImageIndex.create(folder, self.encoder, embeddings=True)
        with index:
            if len(index.codes):
                self._check_compatible(index, folder, scorer_key, keep_float)
                # every row of a set has the same side arrays: a set holding float representations keeps them
                keep_float = FLOAT_REPS in index.codes.side_names
            if index.codes.attributes.get("float_key") != scorer_key:
                index.codes.set_attributes(dict(index.codes.attributes, float_key=scorer_key))
            encoder = index.encoder

            def float_side(batch) -> dict:
                reps = encoder.pool_batch(batch.outputs, "float")
                side = {}
                if scorer is not None:
                    side[FLOAT_SCORES] = np.ascontiguousarray(scorer.score(reps).transpose(1, 0, 2))
                if keep_float:
                    side[FLOAT_REPS] = reps
                return side

            wants_floats = scorer is not None or keep_float
            report = index.add([str(p) for p in paths], commit_seconds=commit_seconds, commit_images=commit_images,
                               on_error=on_error, embeddings=True, progress=progress,
                               side=float_side if wants_floats else None)
        return report.added

    def _check_compatible(self, index: ImageIndex, folder: Path, scorer_key, keep_float: bool) -> None:
        """Refuses to extend a set with rows of other float scores, or to want float representations of a set
        cached without them."""
        recorded = index.codes.attributes.get("float_key")
        if recorded != scorer_key:
            raise FeatureCacheError(f"{folder}: cached with float scores {recorded!r}, requested {scorer_key!r} "
                                    "(other queries or channel counts); use another --cache")
        if keep_float and FLOAT_REPS not in index.codes.side_names:
            raise FeatureCacheError(f"{folder}: cached without float representations (by a --no-float run); "
                                    "use another --cache, or --no-float")
