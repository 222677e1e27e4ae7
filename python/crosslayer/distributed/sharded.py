"""`ShardedIndex`: an image index searched by Ray actors, each memory-mapping one group of its segments.

Queries are encoded on the driver, put in the object store once per batch and broadcast to every actor; each returns
its group's top k (raw scores, ids, and the normalised scores when asked), and the driver merges them by decreasing
raw score, ties to the smaller id — the single index's order, so the result equals `CodeIndex.search` exactly.
Deleted items are skipped by every actor (each reads the same manifest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crosslayer._validate import check_positive_int
from crosslayer.errors import UsageError


class SegmentGroupSearcher:
    """A Ray actor: one read-only open of the codes, searching only its group of segments with its CPUs' threads."""

    def __init__(self, codes_path: str, segments: list):
        import ray

        from crosslayer.index import CodeIndex

        self.threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        self.codes = CodeIndex.open(codes_path, "r")
        self.segments = list(segments)

    def search(self, queries, k: int, channels: int, normalize: bool):
        raw, ids = self.codes.search(queries, k, channels, self.threads, segments=self.segments)
        if not normalize:
            return raw, ids, None
        # normalised scores come in the raw ranking's order: the merge ranks by raw score
        return raw, ids, self.codes.normalized_scores(queries, raw, ids, channels)


def merge_top_k(parts, k: int):
    """The top `k` of per-group results [(raw (n, ki), ids (n, ki), normalised or None)...] by decreasing raw score,
    ties to the smaller id: (scores — normalised where given, else raw —, ids)."""
    raw = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    shown = raw if parts[0][2] is None else np.concatenate([p[2] for p in parts], axis=1)
    keep = min(k, raw.shape[1])
    order = np.lexsort((ids, -raw.astype(np.int64)), axis=-1)[:, :keep]
    return np.take_along_axis(shown, order, 1), np.take_along_axis(ids, order, 1)


def group_segments(segments, groups: int) -> list[list[str]]:
    """Consecutive segments cut into at most `groups` groups of about equal item counts."""
    total = sum(count for _, count in segments)
    out, current, filled = [], [], 0
    for file, count in segments:
        current.append(file)
        filled += count
        if filled * groups >= total * (len(out) + 1) and len(out) < groups - 1:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


class ShardedIndex:
    """An `ImageIndex` (opened read-only here, for its encoder and keys) searched by `workers` Ray actors.

    Use inside `ray_session` (or any connected Ray); `close()` (or a with block) ends the actors. batch_size: the
    queries broadcast at once. open_options: `ImageIndex.open`'s (verify, threads, weights...)."""

    def __init__(self, directory, workers: int | None = None, cpus_per_worker: int = 1, batch_size: int = 256,
                 runtime_env: dict | None = None, **open_options):
        from crosslayer.distributed.cluster import require_ray
        from crosslayer.retrieval.image_index import ImageIndex

        ray = require_ray()
        if not ray.is_initialized():
            raise UsageError("ShardedIndex: connect to Ray first (crosslayer.distributed.ray_session)")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        cpus_per_worker = check_positive_int(cpus_per_worker, "cpus_per_worker")
        self.index = ImageIndex.open(directory, "r", **open_options)
        available = int(ray.cluster_resources().get("CPU", 1))
        workers = check_positive_int(workers, "workers") if workers is not None else max(1, available // cpus_per_worker)
        self.groups = group_segments(self.index.codes.segment_files(), workers)
        actor_class = ray.remote(SegmentGroupSearcher)
        options = {"num_cpus": cpus_per_worker, "max_restarts": 3, "max_task_retries": 3}
        if runtime_env is not None:
            options["runtime_env"] = runtime_env
        codes_path = str(Path(self.index.codes.path).resolve())
        self.actors = [actor_class.options(**options).remote(codes_path, group) for group in self.groups]
        self._ray = ray

    def __len__(self) -> int:
        return len(self.index)

    def search_codes(self, queries, k: int = 10, channels: int | None = 50, num_threads: int = 0,
                     normalize: bool = False):
        """`CodeIndex.search` over the actors' groups (num_threads: ignored, each actor uses its CPUs)."""
        from crosslayer.codes import identity_for_index
        from crosslayer.search import check_search_args

        codes = self.index.codes
        if (queries.Dk, queries.Dt) != (codes.Dk, codes.Dt):
            raise UsageError(f"queries: Dk={queries.Dk}, Dt={queries.Dt} differs from the index "
                             f"(Dk={codes.Dk}, Dt={codes.Dt})")
        k, channels = check_search_args(queries, k, channels, codes.Dk)
        identity_for_index(codes.identity, "queries", queries.identity)  # here: an actor's error would be wrapped
        if not self.actors:
            return codes.search(queries, k, channels, normalize=normalize)
        scores, ids = [], []
        for start in range(0, len(queries), self.batch_size):
            batch = self._ray.put(queries[start:start + self.batch_size])
            parts = self._ray.get([actor.search.remote(batch, k, channels, normalize) for actor in self.actors])
            batch_scores, batch_ids = merge_top_k(parts, k)
            scores.append(batch_scores)
            ids.append(batch_ids)
        return np.concatenate(scores), np.concatenate(ids)

    def search(self, queries, top: int = 10, channels: int | None = 50, normalize: bool = False,
               on_error: str = "raise"):
        """`ImageIndex.search` (query images encoded here) with the codes searched by the actors."""
        return self.index.search(queries, top, channels, normalize, codes_search=self.search_codes, on_error=on_error)

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
