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
import time
from pathlib import Path

import numpy as np

from crosslayer.errors import FormatError, UsageError
from crosslayer.eval.methods import (
    EMBEDDING,
    MethodConfig,
    encode_main,
    main_taps,
    needs_pca,
    resolve_layers,
    row_layout,
)
from crosslayer.eval import cross_fc, scfv
from crosslayer.eval.store import RowStore
from crosslayer.formats import read_zip_document, write_zip_document
from crosslayer.images import load_resized

PCA_FORMAT = "crosslayer-eval-pca"
PCA_VERSION = 2
JITTER_CROPS = 10
REGIONS = "regions"


class PcaFormatError(FormatError):
    """A cached eval PCA file is not one, is of another version or sample, or is damaged."""


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


def store_key(config: MethodConfig, spec) -> str:
    """The config's key, and the network output it reads when that is not the pooled embedding (VGG/AlexNet fc
    taps), so rows of one output are never read as another's."""
    output = spec.output_for(config.method) if config.method in ("global", "jitter", "aconv") else EMBEDDING
    return config.key() if output == EMBEDDING else f"{config.key()}-{output}"


def open_store(directory: Path, config: MethodConfig, spec, n: int) -> RowStore:
    shape, dtype = row_layout(config, spec)
    key = store_key(config, spec)
    return RowStore(directory / key, key, n, shape, dtype, info={"config": config.relevant()})


# ---- how each pass's images reach the encoder ------------------------------------------------------------------

def _pass(kind, config, spec, side, taps):
    """The `Pass` (inputs and reduction of the encoder's network outputs) of one pass kind."""
    from crosslayer.encoder import Pass
    from crosslayer.images import normalize, prepare

    last = spec.taps[-1]
    if kind == "main":
        return Pass(taps=tuple(taps or [last]), embedding=True)
    if kind == "jitter":
        output = spec.output_for("jitter")
        return Pass(prepare=lambda source: jitter_crops(source, side, config.jitter_crop, spec),
                    reduce=lambda outputs: {EMBEDDING: outputs[output].mean(axis=1)},
                    taps=(output,) if output != EMBEDDING else (last,), embedding=output == EMBEDDING,
                    input_side=side, inputs_per_image=JITTER_CROPS)
    if kind == cross_fc.PASS_KIND:
        return cross_fc.regions_pass(config if isinstance(config, list) else [config], spec)
    from crosslayer.eval.regions import fast_windows, region_crops, region_grid, window_mean

    if kind == "aconv-fast":
        window, step = fast_windows(spec.stride[last], config.aconv_region, config.aconv_stride)
        return Pass(prepare=lambda source: prepare(source, config.aconv_side, "square", spec.mean, spec.std),
                    reduce=lambda outputs: {REGIONS: window_mean(outputs[last], window, step)},
                    taps=(last,), embedding=False, input_side=config.aconv_side)

    def prepare_regions(source):
        image = load_resized(source, config.aconv_side, "square")
        crops = region_crops(image, config.aconv_region, config.aconv_stride, config.aconv_region_side)
        return np.stack([normalize(c, spec.mean, spec.std) for c in crops])

    regions = region_grid(config.aconv_side, config.aconv_region, config.aconv_stride) ** 2
    output = spec.output_for("aconv")
    # one image (its regions) a batch, the regions run 32 at a time
    return Pass(prepare=prepare_regions, reduce=lambda outputs: {REGIONS: outputs[output]},
                taps=(output,) if output != EMBEDDING else (last,), embedding=output == EMBEDDING,
                input_side=config.aconv_region_side, inputs_per_image=regions, max_inputs=32)


def jitter_crops(source, side: int, crop_fraction: float, spec) -> np.ndarray:
    """CNN-Jitter's 10 network inputs of one image, (10, 3, side, side): the image resized to side / crop_fraction
    (rounded up to the backbone's side multiple), its 4 corner and centre crops of `side`, and their mirrors. So each
    crop reaches the network at the side it expects, as the paper's 224 crops of a 256 image do (the crops were fed
    at their own smaller side before)."""
    from crosslayer.images import normalize

    multiple = spec.side_multiple
    enlarged = max(side, -(-int(round(side / crop_fraction)) // multiple) * multiple)
    image = load_resized(source, enlarged, "square")
    far = enlarged - side
    crops = []
    for top, left in ((0, 0), (0, far), (far, 0), (far, far), (far // 2, far // 2)):
        window = image[top : top + side, left : left + side]
        crops += [window, window[:, ::-1]]
    return np.stack([normalize(np.ascontiguousarray(c), spec.mean, spec.std) for c in crops])


# ---- PCA ---------------------------------------------------------------------------------------------------------

def pca_path(directory, name: str, fit_images: int, seed: int) -> Path:
    return Path(directory) / f"pca-{name}-fit{fit_images}-seed{seed}.zip"


def write_pca(path, mean: np.ndarray, projection: np.ndarray, fit_images: int, seed: int) -> None:
    """A fitted PCA as a `crosslayer.formats` zip document (arrays checksummed; the sample it was fitted on)."""
    write_zip_document(path, PCA_FORMAT, PCA_VERSION, {"fit_images": int(fit_images), "seed": int(seed)},
                       {"mean": mean, "projection": projection})


def read_pca(path, fit_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) float32 of a PCA from `write_pca`, refused (PcaFormatError) unless it was fitted on the
    sample of `fit_images` and `seed` and its arrays are float32 (Dt_in,) and (Dt_in, components)."""
    body, arrays = read_zip_document(path, PCA_FORMAT, PCA_VERSION, "crosslayer eval PCA", PcaFormatError)
    if (body.get("fit_images"), body.get("seed")) != (fit_images, seed):
        raise PcaFormatError(f"{path}: fitted on fit_images={body.get('fit_images')}, seed={body.get('seed')}; "
                             f"expected {fit_images}, {seed}")
    mean, projection = arrays.get("mean"), arrays.get("projection")
    if (mean is None or projection is None or mean.dtype != np.float32 or projection.dtype != np.float32
            or mean.ndim != 1 or projection.ndim != 2 or projection.shape[0] != mean.shape[0]):
        raise PcaFormatError(f"{path}: damaged crosslayer eval PCA (arrays are not a float32 mean and projection)")
    return mean, projection


def _load_or_fit_pcas(directory, wanted: dict, dataset, encoder, step, fit_images, seed, progress):
    """wanted: name -> (output name, n_components or None). Returns name -> (mean, projection) float32.

    A bad image in the fit sample is not fitted around: the PCA would then depend on which files were readable
    that day. Every bad image of the data set is named instead (`BadImagesError`)."""
    from crosslayer.images import BadImagesError
    from crosslayer.pca import CovarianceAccumulator, local_rows

    pcas, missing = {}, {}
    for name, (output, components) in wanted.items():
        path = pca_path(directory, name, fit_images, seed)
        if path.exists():
            try:
                pcas[name] = read_pca(path, fit_images, seed)
                continue
            except PcaFormatError:
                pass  # damaged or of another version: fitted again (seeded: the same PCA) and replaced
        missing[name] = (output, components, path)
    if not missing:
        return pcas
    train = dataset.indices("train")
    chosen = np.sort(np.random.default_rng(seed).choice(train, min(fit_images, len(train)), replace=False))
    accumulators, failures = {}, []
    sources = [dataset.paths[i] for i in chosen]
    for batch in encoder.activations(sources, on_error="skip", pass_=step, progress=progress, desc="fit PCA"):
        failures += [(error.path, error.reason) for _, error in batch.errors]
        if not batch.positions:
            continue
        for name, (output, _, _) in missing.items():
            values = batch.outputs[output]
            rows = values.reshape(-1, values.shape[-1]) if output == REGIONS else local_rows(values)
            accumulators.setdefault(name, CovarianceAccumulator(rows.shape[1])).add(rows)
    if failures:
        known = {path for path, _ in failures}
        rest = [p for p in dataset.paths if str(p) not in known]
        raise BadImagesError(failures + _find_bad(rest, encoder), "remove or replace them, then rerun")
    for name, (_, components, path) in missing.items():
        mean, projection = accumulators[name].pca(components)
        pcas[name] = (mean.astype(np.float32), np.ascontiguousarray(projection, dtype=np.float32))
        write_pca(path, *pcas[name], fit_images, seed)
    return pcas


def _find_bad(sources, encoder):
    from crosslayer.images import find_bad_images

    return find_bad_images(sources, workers=encoder.decode_workers)


# ---- the pass ---------------------------------------------------------------------------------------------------

def extract(dataset, configs, backbone="mobilenet_v2", side: int = 448, cache_root=None, weights=None,
            batch_size: int = 16, threads: int = 0, fit_images: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Makes sure every config's rows exist for every image of `dataset`; returns {config: RowStore}.

    Configs sharing a pass kind share one backbone pass; complete stores are reused as they are.
    """
    from crosslayer.backbones.registry import get_backbone
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.images import check_side

    spec = get_backbone(backbone)
    side = check_side(side, spec.side_multiple)
    for config in configs:
        config.check_backbone(spec)
        # the PCA sample and the network are shared by the pass, so every config must describe the same ones
        if (config.fit_images, config.seed) != (fit_images, seed):
            raise UsageError(f"configs: {config.label()} has fit_images={config.fit_images}, seed={config.seed}; "
                             f"this extraction uses fit_images={fit_images}, seed={seed}")
    directory = pass_directory(cache_root or default_cache_root(), dataset, spec.name, side, weights)
    directory.mkdir(parents=True, exist_ok=True)
    export_cache = directory.parent.parent / "onnx"
    stores = {config: open_store(directory, config, spec, len(dataset)) for config in configs}
    kinds: dict = {}
    for config in configs:
        if not stores[config].complete:
            group = config.pass_kind if config.pass_kind != "aconv-fast" and config.pass_kind != "aconv" else config.key()
            if config.pass_kind == cross_fc.PASS_KIND:
                group = cross_fc.pass_group(config)
            kinds.setdefault(group, []).append(config)
    # every image reaches the network through the encoder (its network, decode pipeline and memory budget); the
    # passes differ only in their inputs and reductions
    encoder = CrossLayerEncoder(spec.name, side=side, policy="square", weights=weights, batch_size=batch_size,
                                threads=threads, cache=export_cache, seed=seed)
    for group, members in kinds.items():
        kind = members[0].pass_kind
        taps = main_taps(members, spec) if kind == "main" else []
        if kind == "main" and any(c.method == "global" for c in members) and spec.output_for("global") != EMBEDDING:
            taps = [*taps, spec.output_for("global")]  # the paper's fc layer (VGG/AlexNet), besides the pairs
        step = _pass(kind, members if kind == cross_fc.PASS_KIND else members[0], spec, side, taps)
        wanted = {}
        for config in members:
            if kind == "main" and needs_pca(config):
                local, guidance = resolve_layers(config, spec)
                wanted[f"{local}"] = (local, None)
            elif kind in ("aconv", "aconv-fast") or config.method == "fc-fc":
                wanted[config.key()] = (REGIONS, config.aconv_pca_dim)
        begin = time.perf_counter()
        pcas = _load_or_fit_pcas(directory, wanted, dataset, encoder, step, fit_images, seed, progress)
        for config in members:  # what a method learns besides its PCA, under its own name beside the PCAs
            if config.method == "scfv":
                local = resolve_layers(config, spec)[0]
                pca = pcas.get(local) if config.pca else None
                pcas[_fitted_name(config)] = scfv.load_or_learn(directory, config, local, pca, dataset,
                                                                encoder, step, fit_images, seed, progress)
            elif config.method == "fc-fc":
                pcas[cross_fc.CLASSIFIER] = cross_fc.load_classifier(spec, weights, seed)
        # the PCA fit is part of the extraction time of the methods that use it
        fit_seconds = {config: time.perf_counter() - begin for config in members
                       if kind != "main" or needs_pca(config)}
        _run_pass(dataset, members, stores, spec, encoder, step, pcas, progress, kind, fit_seconds)
    for store in stores.values():
        store.close()
    return stores


def _fitted_name(config) -> str:
    return f"fitted-{config.key()}"


def _encode(config, spec, outputs, pcas):
    from crosslayer.l2 import l2_normalize

    kind = config.pass_kind
    if kind == "main":
        local, guidance = resolve_layers(config, spec) if config.method != "global" else (None, None)
        by_pair = {(local, guidance): pcas[local]} if local in pcas else {}
        return encode_main(config, spec, outputs, by_pair, pcas.get(_fitted_name(config)))
    if kind == cross_fc.PASS_KIND:
        return cross_fc.encode(config, spec, outputs, pcas.get(config.key()), pcas.get(cross_fc.CLASSIFIER))
    if kind == "jitter":
        return l2_normalize(np.asarray(outputs[EMBEDDING], np.float32))
    mean, projection = pcas[config.key()]
    regions = outputs[REGIONS]
    return ((regions - mean) @ projection).astype(np.float16)


def _run_pass(dataset, members, stores, spec, encoder, step, pcas, progress, kind, fit_seconds):
    """Appends every member's rows from its stores' shortest prefix on. Rows stay one per manifest image, so a bad
    image stops the appending there (the rows before it are kept, and resume); the rest of the set is then only
    decoded, and every bad image is named in one `BadImagesError`."""
    from crosslayer.images import BadImagesError

    start = min(stores[c].done for c in members)
    sources = dataset.paths[start:]
    seconds = {c: 0.0 for c in members}
    network_seconds = 0.0
    failures, checked = [], 0
    batches = encoder.activations(sources, on_error="skip", pass_=step, progress=progress,
                                  desc=f"extract {kind} ({len(members)} methods)")
    for batch in batches:
        network_seconds += batch.network_seconds
        first = min([*batch.positions, *(position for position, _ in batch.errors)])
        checked = max([*batch.positions, *(position for position, _ in batch.errors)]) + 1
        failures += [(error.path, error.reason) for _, error in batch.errors]
        good = [p for p in batch.positions if not batch.errors or p < min(q for q, _ in batch.errors)]
        if good:
            b0, b1 = start + first, start + first + len(good)
            for config in members:
                store = stores[config]
                if store.done >= b1:
                    continue
                begin = time.perf_counter()
                rows = _encode(config, spec, batch.outputs, pcas)[: len(good)]
                store.append(store.done, rows[store.done - b0 :])
                seconds[config] += time.perf_counter() - begin
        if failures:
            break
    batches.close()
    for config in members:
        store = stores[config]
        spent = dict(store.info.get("seconds", {}))
        spent["network"] = spent.get("network", 0.0) + network_seconds
        spent["encode"] = spent.get("encode", 0.0) + seconds[config]
        if config in fit_seconds:
            spent["pca"] = spent.get("pca", 0.0) + fit_seconds[config]
        store.info["seconds"] = spent
        store.info["pass"] = kind
        store.save_info()
    if failures:
        raise BadImagesError(failures + _find_bad(sources[checked:], encoder),
                             f"rows before the first are kept; remove or replace them, then rerun to resume")
