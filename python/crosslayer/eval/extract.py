"""The extraction passes: one backbone pass per (data set, backbone, side, pass kind) computes every requested
method's rows on the fly and appends them to that method's `RowStore` (so the big layer maps are never stored).

Pass kinds (see `methods.MethodConfig.pass_kind`): "main" (whole image at `side`; taps of every layer pair plus the
pooled embedding), "jitter" (10 crops per image), "aconv-fast" and "aconv" (region embeddings at `aconv_side`).
PCAs (per layer pair for cross-layer pooling, per region setting for AConv) are fitted first on a seeded sample of
training images and cached next to the stores. Interrupted passes resume from the shortest complete prefix.

Stores hold one row per manifest image, in manifest order, val images included: the classifier uses only the train
split (C by cross-validation inside it) and the test split, so val rows are computed and ignored. They are kept
because the store's layout, its resumable prefix and the cache keys of existing stores are all per manifest image.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer.eval.methods import (
    DEFAULT_FIT_IMAGES,
    DEFAULT_SEED,
    EMBEDDING,
    MethodConfig,
    encode_main,
    main_taps,
    needs_pca,
    resolve_layers,
    row_layout,
)
from crosslayer.eval.store import RowStore

PCA_VERSION = 1
JITTER_CROPS = 10
REGIONS = "regions"


def default_cache_root() -> Path:
    from crosslayer.backbones.export import cache_dir

    return cache_dir() / "eval"


def dataset_key(dataset) -> str:
    digest = hashlib.sha256()
    for path, label, split in zip(dataset.paths, dataset.labels.tolist(), dataset.splits.tolist()):
        digest.update(f"{path}\t{label}\t{split}\n".encode())
    return f"{Path(dataset.root).name}-{len(dataset)}-{digest.hexdigest()[:12]}"


def pass_directory(cache_root, dataset, backbone: str, side: int, weights) -> Path:
    tag = "" if weights is None else "-w" + hashlib.sha256(str(weights).encode()).hexdigest()[:8]
    return Path(cache_root) / dataset_key(dataset) / f"{backbone}-{side}{tag}"


def open_store(directory: Path, config: MethodConfig, spec, n: int) -> RowStore:
    shape, dtype = row_layout(config, spec)
    return RowStore(directory / config.key(), config.key(), n, shape, dtype, info={"config": config.relevant()})


# ---- the network side of each pass ---------------------------------------------------------------------------

class _Network:
    def __init__(self, spec, taps, with_embedding, weights, cache, threads, seed):
        from crosslayer.backbones.export import export
        from crosslayer.backbones.runtime import OnnxBackbone

        path = export(spec, taps, weights, with_embedding=with_embedding, cache=cache, seed=seed)
        self.runner = OnnxBackbone(path, intra_op_threads=threads)

    def run(self, images):
        return self.runner.run(images)


def _resized(source, side):
    from crosslayer.images import load_image, resize

    return resize(load_image(source), side, "square")


def _pass_functions(kind, config, spec, side, taps, weights, cache, threads, seed):
    """(prepare(path) -> array, run(batch) -> {name: array}) for one pass kind."""
    from crosslayer.images import normalize, prepare

    last = spec.taps[-1]
    if kind == "main":
        network = _Network(spec, taps or [last], True, weights, cache, threads, seed)
        return (lambda source: prepare(source, side, "square", spec.mean, spec.std)), network.run
    if kind == "jitter":
        crop = max(spec.side_multiple, int(round(side * config.jitter_crop / spec.side_multiple)) * spec.side_multiple)
        network = _Network(spec, [last], True, weights, cache, threads, seed)

        def prepare_crops(source):
            image = _resized(source, side)
            far = side - crop
            crops = []
            for top, left in ((0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)):
                window = image[top : top + crop, left : left + crop]
                crops += [window, window[:, ::-1]]
            return np.stack([normalize(np.ascontiguousarray(c), spec.mean, spec.std) for c in crops])

        def run_crops(batch):
            n = batch.shape[0]
            embedding = network.run(batch.reshape((-1,) + batch.shape[2:]))[EMBEDDING]
            return {EMBEDDING: embedding.reshape(n, JITTER_CROPS, -1).mean(axis=1)}

        return prepare_crops, run_crops
    from crosslayer.eval.regions import fast_windows, region_crops, window_mean

    if kind == "aconv-fast":
        window, step = fast_windows(spec.stride[last], config.aconv_region, config.aconv_stride)
        network = _Network(spec, [last], False, weights, cache, threads, seed)

        def run_fast(batch):
            return {REGIONS: window_mean(network.run(batch)[last], window, step)}

        return (lambda source: prepare(source, config.aconv_side, "square", spec.mean, spec.std)), run_fast
    network = _Network(spec, [last], True, weights, cache, threads, seed)

    def prepare_regions(source):
        crops = region_crops(_resized(source, config.aconv_side), config.aconv_region, config.aconv_stride,
                             config.aconv_region_side)
        return np.stack([normalize(c, spec.mean, spec.std) for c in crops])

    def run_regions(batch):
        n, regions = batch.shape[:2]
        flat = batch.reshape((-1,) + batch.shape[2:])
        embeddings = [network.run(flat[i : i + 32])[EMBEDDING] for i in range(0, len(flat), 32)]
        return {REGIONS: np.concatenate(embeddings).reshape(n, regions, -1)}

    return prepare_regions, run_regions


# ---- PCA ---------------------------------------------------------------------------------------------------------

def _local_rows(maps):
    n, c = maps.shape[:2]
    return maps.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c)


def pca_path(directory, name: str, fit_images: int, seed: int) -> Path:
    """The default sample keeps the name PCA files had before the sample was part of it, so they stay reusable."""
    suffix = "" if (fit_images, seed) == (DEFAULT_FIT_IMAGES, DEFAULT_SEED) else f"-fit{fit_images}-seed{seed}"
    return Path(directory) / f"pca-{name}{suffix}.npz"


def _load_or_fit_pcas(directory, wanted: dict, dataset, prepare, run, batch_size, fit_images, seed, progress):
    """wanted: name -> (output name, n_components or None). Returns name -> (mean, projection) float32."""
    from crosslayer.batches import stream_batches
    from crosslayer.encoder import CovarianceAccumulator

    pcas, missing = {}, {}
    for name, (output, components) in wanted.items():
        path = pca_path(directory, name, fit_images, seed)
        if path.exists():
            with np.load(path) as stored:
                # files written before the seed was recorded lie only at the default name, fitted with the default seed
                stored_seed = int(stored["seed"]) if "seed" in stored.files else DEFAULT_SEED
                if (int(stored["version"]) == PCA_VERSION and int(stored["fit_images"]) == fit_images
                        and stored_seed == seed):
                    pcas[name] = (stored["mean"], stored["projection"])
                    continue
        missing[name] = (output, components, path)
    if not missing:
        return pcas
    train = dataset.indices("train")
    chosen = np.sort(np.random.default_rng(seed).choice(train, min(fit_images, len(train)), replace=False))
    accumulators = {}
    sources = [dataset.paths[i] for i in chosen]
    for batch in _progress(stream_batches(sources, prepare, run, batch_size), len(sources), batch_size, "fit PCA", progress):
        for name, (output, _, _) in missing.items():
            values = batch.outputs[output]
            rows = values.reshape(-1, values.shape[-1]) if output == REGIONS else _local_rows(values)
            accumulators.setdefault(name, CovarianceAccumulator(rows.shape[1])).add(rows)
    for name, (_, components, path) in missing.items():
        mean, projection = accumulators[name].pca(components)
        pcas[name] = (mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))
        with atomic_write(path) as handle:
            np.savez(handle, version=PCA_VERSION, fit_images=fit_images, seed=seed, mean=pcas[name][0],
                     projection=pcas[name][1])
    return pcas


def _progress(iterable, total_images, batch_size, label, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=-(-total_images // batch_size), desc=label, unit="batch")


# ---- the pass ---------------------------------------------------------------------------------------------------

def extract(dataset, configs, backbone="mobilenet_v2", side: int = 448, cache_root=None, weights=None,
            batch_size: int = 16, threads: int = 0, fit_images: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Makes sure every config's rows exist for every image of `dataset`; returns {config: RowStore}.

    Configs sharing a pass kind share one backbone pass; complete stores are reused as they are.
    """
    from crosslayer.backbones.registry import get_backbone
    from crosslayer.batches import stream_batches
    from crosslayer.images import check_side

    spec = get_backbone(backbone)
    side = check_side(side, spec.side_multiple)
    for config in configs:
        config.check_backbone(spec)
        # the PCA sample and the network are shared by the pass, so every config must describe the same ones
        if (config.fit_images, config.seed) != (fit_images, seed):
            raise ValueError(f"configs: {config.label()} has fit_images={config.fit_images}, seed={config.seed}; "
                             f"this extraction uses fit_images={fit_images}, seed={seed}")
    directory = pass_directory(cache_root or default_cache_root(), dataset, spec.name, side, weights)
    directory.mkdir(parents=True, exist_ok=True)
    export_cache = directory.parent.parent / "onnx"
    stores = {config: open_store(directory, config, spec, len(dataset)) for config in configs}
    kinds: dict = {}
    for config in configs:
        if not stores[config].complete:
            group = config.pass_kind if config.pass_kind != "aconv-fast" and config.pass_kind != "aconv" else config.key()
            kinds.setdefault(group, []).append(config)
    for group, members in kinds.items():
        kind = members[0].pass_kind
        taps = main_taps(members, spec) if kind == "main" else []
        prepare, run = _pass_functions(kind, members[0], spec, side, taps, weights, export_cache, threads, seed)
        wanted = {}
        for config in members:
            if kind == "main" and needs_pca(config):
                local, guidance = resolve_layers(config, spec)
                wanted[f"{local}"] = (local, None)
            elif kind in ("aconv", "aconv-fast"):
                wanted[config.key()] = (REGIONS, config.aconv_pca_dim)
        pca_batch = 1 if kind == "aconv" else batch_size
        pcas = _load_or_fit_pcas(directory, wanted, dataset, prepare, run, pca_batch, fit_images, seed, progress)
        _run_pass(dataset, members, stores, spec, prepare, run, pcas, 1 if kind == "aconv" else batch_size, progress, kind)
    for store in stores.values():
        store.close()
    return stores


def _encode(config, spec, outputs, pcas):
    from crosslayer.eval.spm import l2_normalize_rows

    kind = config.pass_kind
    if kind == "main":
        local, guidance = resolve_layers(config, spec) if config.method != "global" else (None, None)
        by_pair = {(local, guidance): pcas[local]} if local in pcas else {}
        return encode_main(config, spec, outputs, by_pair)
    if kind == "jitter":
        return l2_normalize_rows(outputs[EMBEDDING])
    mean, projection = pcas[config.key()]
    regions = outputs[REGIONS]
    return ((regions - mean) @ projection).astype(np.float16)


def _run_pass(dataset, members, stores, spec, prepare, run, pcas, batch_size, progress, kind):
    from crosslayer.batches import stream_batches

    start = min(stores[c].done for c in members)
    sources = dataset.paths[start:]
    seconds = {c: 0.0 for c in members}
    network_seconds = 0.0
    timed_run = _timed(run)
    batches = stream_batches(sources, prepare, timed_run, batch_size, on_error="raise")
    for batch in _progress(batches, len(sources), batch_size, f"extract {kind} ({len(members)} methods)", progress):
        network_seconds += timed_run.take()
        b0 = start + batch.positions[0]
        b1 = b0 + len(batch.positions)
        for config in members:
            store = stores[config]
            if store.done >= b1:
                continue
            begin = time.perf_counter()
            rows = _encode(config, spec, batch.outputs, pcas)
            store.append(store.done, rows[store.done - b0 :])
            seconds[config] += time.perf_counter() - begin
    for config in members:
        store = stores[config]
        spent = dict(store.info.get("seconds", {}))
        spent["network"] = spent.get("network", 0.0) + network_seconds
        spent["encode"] = spent.get("encode", 0.0) + seconds[config]
        store.info["seconds"] = spent
        store.info["pass"] = kind
        store._write_meta()


class _timed:
    """Wraps run() and accumulates its wall time (the network's share of the pass)."""

    def __init__(self, run):
        self.run, self.total = run, 0.0

    def __call__(self, images):
        begin = time.perf_counter()
        try:
            return self.run(images)
        finally:
            self.total += time.perf_counter() - begin

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value
