"""One backbone pass per image for the retrieval evaluation, cached on disk by chunks and resumable.

For every image of a named set it keeps what each compared method needs: the sign codes (with channel means), the
pooled embedding of the guidance layer (global embedding and SPoC), and optionally the cross-layer float scores
against the queries (computed while the image's 1.6 MB float representation is in memory, then dropped) or, for the
query set only, the float representations themselves.

Layout (each file atomic; the .json commit record is written last):
    cache.json, encoder.xle                  format/version, learn_set (see `learn_set_key`); the fitted encoder
                                             every chunk was made with (its PCA learnt on that learn set)
    <set>/chunk-000000.npz                   bits, channel_mean, embedding[, float_scores][, float_reps]
    <set>/chunk-000000.json                  paths, errors, float_key
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.codes import Codes
from crosslayer.encoder import RUNTIME_OPTIONS, CrossLayerEncoder
from crosslayer.errors import CrossLayerError, UsageError
from crosslayer.extract import committed_chunks

CACHE_FORMAT = "crosslayer-retrieval-features"
CACHE_VERSION = 1


class FeatureCacheError(CrossLayerError, ValueError):
    """A cache directory is not one, is of another version, or was made with other settings."""


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
        meta_path = self.directory / "cache.json"
        runtime = {k: getattr(encoder, k) for k in (*RUNTIME_OPTIONS, "weights")}
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                raise FeatureCacheError(f"{self.directory}: not a retrieval feature cache of version {CACHE_VERSION}")
            stored = CrossLayerEncoder.load(self.directory / "encoder.xle", **runtime)
            keys = ("backbone", "layers", "side", "pca_dim", "policy")
            mine, theirs = encoder.config(), stored.config()
            if any(mine[k] != theirs[k] for k in keys):
                raise FeatureCacheError(
                    f"{self.directory}: made with {[theirs[k] for k in keys]}, requested {[mine[k] for k in keys]}; "
                    "use another --cache"
                )
            self.encoder = stored
            if requested is not None:
                self._check_learn_set(meta, requested)
            return
        if encoder.pca_ is None:
            if not fit_sources:
                raise UsageError("fit_sources: an unfitted encoder needs images to learn its PCA on")
            encoder.fit(self.learn_paths, on_error=on_error, progress=progress)
        self.directory.mkdir(parents=True, exist_ok=True)
        encoder.save(self.directory / "encoder.xle")
        self._write_meta(requested)
        self.encoder = encoder

    def _write_meta(self, learn_key) -> None:
        with atomic_write(self.directory / "cache.json", "w") as handle:
            json.dump({"format": CACHE_FORMAT, "version": CACHE_VERSION, "learn_set": learn_key}, handle)

    def _check_learn_set(self, meta: dict, requested: str) -> None:
        """Refuses a learn set other than the one the stored PCA was learnt on (refitting would invalidate every
        cached code: a new --cache is the same work, and keeps the old results)."""
        advice = "its PCA was learnt on {}; use a new --cache for this --learn/--learn-images/--fit-images"
        if "learn_set" in meta:
            if meta["learn_set"] != requested:
                raise FeatureCacheError(f"{self.directory}: "
                                        + advice.format(f"another learn set ({meta['learn_set']}, requested {requested})"))
            return
        # A cache made before the learn set was recorded. Its PCA was learnt on the learn set of the run that made
        # it, and every run added its own learn images to the "learn" set, so a "learn" set holding exactly the
        # requested images (nothing more, nothing missing) is the evidence that no other learn set was used; it is
        # then recorded. Anything else is unknown, and refused.
        records = self._records("learn")
        cached = {str(Path(p).resolve()) for r in records for p in r["paths"]}
        cached |= {str(Path(e["path"]).resolve()) for r in records for e in r.get("errors", [])}
        if cached != {str(Path(p).resolve()) for p in self.learn_paths}:
            raise FeatureCacheError(
                f"{self.directory}: made before the learn set was recorded, and its cached learn images "
                f"({len(cached)}) are not the requested {len(self.learn_paths)}: "
                + advice.format("an unknown learn set")
            )
        self._write_meta(requested)

    # ---- reading -------------------------------------------------------------------------------------------------
    def _records(self, name: str) -> list[dict]:
        folder = self.directory / name
        return committed_chunks(folder) if folder.is_dir() else []

    def _has_float_reps(self, name: str, record: dict) -> bool:
        with np.load(self.directory / name / f"chunk-{record['index']:06d}.npz") as arrays:
            return "float_reps" in arrays.files

    def load(self, name: str, paths=None) -> dict:
        """The cached features of set `name`: paths, codes, embedding, float_scores/float_reps (or None), errors.
        With `paths`, rows are returned in that order (failed images left out)."""
        records = [r for r in self._records(name) if r["paths"]]
        arrays = [np.load(self.directory / name / f"chunk-{r['index']:06d}.npz") for r in records]
        all_paths = [p for r in records for p in r["paths"]]
        errors = [e for r in self._records(name) for e in r.get("errors", [])]
        enc = self.encoder
        if not records:
            result = {"paths": [], "codes": Codes.empty(enc.Dk, enc.Dt), "embedding": None, "float_scores": None,
                      "float_reps": None, "errors": errors}
        else:
            def stacked(key):
                return np.concatenate([a[key] for a in arrays]) if all(key in a.files for a in arrays) else None

            result = {
                "paths": all_paths,
                "codes": Codes(np.concatenate([a["bits"] for a in arrays]),
                               np.concatenate([a["channel_mean"] for a in arrays]), enc.Dt),
                "embedding": stacked("embedding"),
                "float_scores": (np.concatenate([a["float_scores"] for a in arrays], axis=1)
                                 if all("float_scores" in a.files for a in arrays) else None),
                "float_reps": stacked("float_reps"),
                "errors": errors,
                "float_key": {r.get("float_key") for r in records},
            }
        if paths is not None and result["paths"]:
            position = {p: i for i, p in enumerate(result["paths"])}
            order = np.array([position[p] for p in map(str, paths) if p in position], dtype=np.int64)
            result["paths"] = [result["paths"][i] for i in order]
            result["codes"] = result["codes"][order]  # rows of codes checked above: no second scan
            for key in ("embedding", "float_reps"):
                if result[key] is not None:
                    result[key] = result[key][order]
            if result["float_scores"] is not None:
                result["float_scores"] = result["float_scores"][:, order]
        return result

    # ---- computing -----------------------------------------------------------------------------------------------
    def compute(self, name: str, paths, scorer=None, scorer_key: str | None = None, keep_float: bool = False,
                chunk_size: int = 128, on_error: str = "skip", progress: bool = True) -> int:
        """Encodes the images of `paths` not yet in set `name`; returns how many were encoded now.

        scorer: a `FloatQueryScorer`; each image's float scores against the queries are kept (`scorer_key` says
        against which). keep_float: keep the float representations themselves (queries only: 1.6 MB/image).
        """
        from tqdm.auto import tqdm

        records = self._records(name)
        for record in records:
            if record["paths"] and record.get("float_key") != scorer_key:
                raise FeatureCacheError(
                    f"{self.directory / name}: cached with float scores {record.get('float_key')!r}, requested "
                    f"{scorer_key!r} (other queries or channel counts); use another --cache"
                )
        if keep_float:
            for record in records:
                if record["paths"] and not self._has_float_reps(name, record):
                    raise FeatureCacheError(
                        f"{self.directory / name}: cached without float representations (by a --no-float run); "
                        "use another --cache, or --no-float"
                    )
        done = {p for r in records for p in r["paths"]} | {e["path"] for r in records for e in r.get("errors", [])}
        todo = [str(p) for p in paths if str(p) not in done]
        if not todo:
            return 0
        index = records[-1]["index"] + 1 if records else 0
        folder = self.directory / name
        folder.mkdir(parents=True, exist_ok=True)
        encoder = self.encoder
        # parts: (paths, arrays) of each encoded batch, appended in one step so that an interrupt (the flush in
        # `finally` below) never commits arrays without their paths
        pending = {"errors": [], "parts": []}

        def flush():
            nonlocal index
            parts, errors = pending["parts"], pending["errors"]
            # taken before writing: a flush interrupted here leaves nothing for the final flush to commit twice
            pending.update(errors=[], parts=[])
            if not parts and not errors:
                return
            if parts:
                arrays = {key: np.concatenate([a[key] for _, a in parts], axis=1 if key == "float_scores" else 0)
                          for key in parts[0][1]}
                with atomic_write(folder / f"chunk-{index:06d}.npz") as handle:
                    np.savez(handle, **arrays)
            record = {"paths": [p for paths, _ in parts for p in paths], "errors": errors, "float_key": scorer_key}
            with atomic_write(folder / f"chunk-{index:06d}.json", "w") as handle:
                json.dump(record, handle)
            index += 1

        encoded = 0
        with tqdm(total=len(todo), unit="img", desc=f"features {name}", disable=not progress) as bar:
            try:
                for batch in encoder.activations(todo, on_error=on_error):
                    pending["errors"] += [{"path": str(e.path), "reason": e.reason} for _, e in batch.errors]
                    if batch.positions:
                        codes = encoder.pool_batch(batch.outputs, "codes")
                        part = {"bits": codes.bits, "channel_mean": codes.channel_mean,
                                "embedding": batch.outputs["embedding"].astype(np.float32)}
                        if scorer is not None or keep_float:
                            reps = encoder.pool_batch(batch.outputs, "float")
                            if scorer is not None:
                                part["float_scores"] = scorer.score(reps)
                            if keep_float:
                                part["float_reps"] = reps
                        pending["parts"].append(([str(s) for s in batch.sources], part))
                        encoded += len(batch.positions)
                    bar.update(len(batch.positions) + len(batch.errors))
                    if sum(len(paths) for paths, _ in pending["parts"]) >= chunk_size:
                        flush()
            finally:
                flush()
        return encoded
