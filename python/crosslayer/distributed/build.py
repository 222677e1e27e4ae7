"""`build_on_ray`: an `ImageIndex` build whose shards Ray actors encode while the driver commits them.

Each actor holds the encoder of the worker bundle and encodes one shard at a time into the index's staging folder
(shared storage), returning only a small record; the driver adopts each staged shard into the index (a rename and a
manifest commit). Work is never lost or done twice: an actor killed mid-shard is restarted and its shard retried
(the files are written atomically, the record last); a rerun after a driver crash first adopts the shards staged and
not yet committed, then encodes only the images still missing."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from crosslayer._validate import check_positive_int
from crosslayer.distributed.bundle import WorkerBundle
from crosslayer.distributed.cluster import ray_session, require_ray
from crosslayer.distributed.shards import (EMBEDDING, Shard, plan_shards, read_staged_record, read_staged_records,
                                           remove_staged, remove_unrecorded, staging_folder, write_staged_shard)
from crosslayer.errors import UsageError

DEFAULT_SHARD_SIZE = 64


@dataclass
class BuildReport:
    added: int = 0
    skipped: int = 0  # already indexed, or given twice
    recorded_bad: int = 0  # left out: recorded as bad by an earlier run (tried again only with retry_failed)
    failed: list = field(default_factory=list)  # (path, reason) of this run
    shards: int = 0  # encoded by this run
    adopted_staged: int = 0  # staged by an earlier, interrupted run and committed by this one
    encoded: int = 0  # images the workers encoded in this run (good and bad)
    seconds: float = 0.0
    commit_seconds: list = field(default_factory=list)  # the driver's time adopting each shard
    refused: list = field(default_factory=list)  # (shard, reason) of staged shards the index refused (re-encoded once)
    worker_threads: set = field(default_factory=set)  # onnxruntime and OpenMP threads of the actors (their CPUs)


def encode_shard(encoder, shard: Shard, folder, embeddings: bool) -> dict:
    """Encodes one shard and stages its results in `folder` (what a worker does; plain Python, no Ray)."""
    from crosslayer.codes import Codes

    key_of = dict(zip(shard.paths, shard.keys))
    parts, keys, vectors, failed = [], [], [], {}
    for batch in encoder.activations(list(shard.paths), on_error="skip", for_pooling="codes"):
        for _, error in batch.errors:
            failed[key_of[str(error.path)]] = error.reason
        if batch.positions:
            codes = encoder.pool_batch(batch.outputs, "codes")
            keys += [key_of[str(source)] for source in batch.sources]
            parts.append(codes)
            if embeddings:
                vectors.append(np.asarray(batch.outputs[EMBEDDING], np.float32))
    codes = Codes.concatenate(parts) if parts else None
    if codes is not None:
        codes.keys = keys
    record = write_staged_shard(folder, shard, codes, np.concatenate(vectors) if vectors else None, failed)
    return {"name": shard.name, "count": record["count"], "failed": failed}


class ShardEncoder:
    """A Ray actor: the bundle's encoder with as many onnxruntime and OpenMP threads as the CPUs Ray gave it."""

    def __init__(self, bundle: WorkerBundle, folder: str, embeddings: bool, batch_size: int | None):
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self.threads = max(1, int(cpus))
        self.encoder = bundle.load(self.threads, batch_size)
        self.folder, self.embeddings = folder, embeddings

    def encode(self, shard: Shard) -> dict:
        from pathlib import Path

        return {**encode_shard(self.encoder, shard, Path(self.folder), self.embeddings), "pid": os.getpid(),
                "threads": self.threads}


def build_on_ray(index, sources, workers: int | None = None, address: str | None = None,
                 cpus_per_worker: int = 1, shard_size: int = DEFAULT_SHARD_SIZE, retry_failed: bool = False,
                 embeddings: bool | None = None, batch_size: int | None = None, runtime_env: dict | None = None,
                 progress: bool = False, actor_name_prefix: str | None = None) -> BuildReport:
    """Adds `sources` to `index` (an `ImageIndex` opened for adding) with Ray actors; returns what this run did.

    workers: actors (default: the cluster's CPUs / cpus_per_worker). address: a running cluster (default: the one
    this process is connected to, else a local one started and stopped here; see `ray_session`). shard_size: images
    a shard holds (a commit each). Bad images are recorded and reported as `ImageIndex.add` does (on_error "skip").
    runtime_env: Ray's, for the actors. actor_name_prefix: names the actors (PREFIX-0...) in Ray, e.g. to find them."""
    start = time.perf_counter()
    shard_size = check_positive_int(shard_size, "shard_size")
    cpus_per_worker = check_positive_int(cpus_per_worker, "cpus_per_worker")
    if workers is not None:
        workers = check_positive_int(workers, "workers")
    if not index.codes.writable:
        raise UsageError(f"index: {index.directory} is open read-only; open it with mode 'a'")
    keep_embeddings = index.embedding_choice(embeddings)
    report = BuildReport()
    folder = staging_folder(index.directory)
    folder.mkdir(exist_ok=True)
    remove_unrecorded(folder)
    report.adopted_staged = _adopt_staged(index, folder, keep_embeddings, report)
    resolved = [str(os.path.abspath(s)) for s in sources]
    todo, keys, report.recorded_bad = index.pending(resolved, retry_failed)
    report.skipped = len(resolved) - len(todo) - report.recorded_bad
    shards = plan_shards(todo, keys, shard_size)
    if shards:
        require_ray()
        with ray_session(address, None if address else (workers or os.cpu_count()) * cpus_per_worker) as ray:
            _run_shards(ray, index, shards, folder, keep_embeddings, workers, cpus_per_worker, batch_size,
                        runtime_env, progress, actor_name_prefix, report)
    report.seconds = time.perf_counter() - start
    return report


def _adopt_staged(index, folder, embeddings: bool, report: BuildReport) -> int:
    """Commits the shards an interrupted run staged (those whose images are all still missing)."""
    # a record whose files are gone (a driver killed between adopting's renames and its commit) is refused: its
    # images are still missing and are encoded again
    return sum(_commit(index, folder, record, embeddings, report) for record in read_staged_records(folder))


def _commit(index, folder, record: dict, embeddings: bool, report: BuildReport) -> bool:
    """Adopts a staged shard; False (its files removed) if the index refused it."""
    from crosslayer.errors import CrossLayerError

    begin = time.perf_counter()
    code_file = None if record["code_file"] is None else folder / record["code_file"]
    side = {name: folder / file for name, file in record["side"].items()} if embeddings else None
    try:
        added = index.adopt(code_file, side, record["failed"], embeddings)
    except CrossLayerError as error:
        # keys committed meanwhile, or a file damaged on its way: the images still missing are encoded again
        remove_staged(folder, record["name"])
        report.refused.append((record["name"], str(error)))
        return False
    remove_staged(folder, record["name"])
    report.added += added
    report.failed += [(os.path.normpath(os.path.join(index.root, key)), reason)
                      for key, reason in record["failed"].items()]
    report.commit_seconds.append(time.perf_counter() - begin)
    return True


def _run_shards(ray, index, shards, folder, embeddings, workers, cpus_per_worker, batch_size, runtime_env,
                progress, actor_name_prefix, report: BuildReport) -> None:
    from tqdm.auto import tqdm

    bundle = ray.put(WorkerBundle.of(index.encoder, index.directory / "encoder.xle"))
    available = int(ray.cluster_resources().get("CPU", 1))
    count = min(len(shards), workers or max(1, available // cpus_per_worker))
    actor_class = ray.remote(ShardEncoder)
    actors = []
    for number in range(count):
        options = {"num_cpus": cpus_per_worker, "max_restarts": 3, "max_task_retries": 3}
        if runtime_env is not None:
            options["runtime_env"] = runtime_env
        if actor_name_prefix is not None:
            options["name"] = f"{actor_name_prefix}-{number}"
        actors.append(actor_class.options(**options).remote(bundle, str(folder), embeddings, batch_size))
    queue = list(reversed(shards))
    by_name, retried = {shard.name: shard for shard in shards}, set()
    running = {}
    try:
        with tqdm(total=sum(len(s.paths) for s in shards), unit="img", desc="index (ray)", disable=not progress) as bar:
            for actor in actors:
                if queue:
                    running[actor.encode.remote(queue.pop())] = actor
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(done[0])
                result = ray.get(done[0])
                if queue:
                    running[actor.encode.remote(queue.pop())] = actor
                committed = _commit(index, folder, read_staged_record(folder, result["name"]), embeddings, report)
                if not committed and result["name"] not in retried:
                    retried.add(result["name"])
                    queue.insert(0, by_name[result["name"]])
                    if len(running) < len(actors):
                        running[actor.encode.remote(queue.pop())] = actor
                report.shards += 1
                report.worker_threads.add(result["threads"])
                report.encoded += result["count"] + len(result["failed"])
                bar.update(result["count"] + len(result["failed"]))
    finally:
        for actor in actors:
            ray.kill(actor)

