"""`classify`: extract (cached, resumable) -> linear kernel (blockwise / popcount) -> SVM with C by CV -> record."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import time
from pathlib import Path

import numpy as np

from crosslayer.eval import multilabel
from crosslayer.eval.extract import default_cache_root, extract, pass_directory
from crosslayer.eval.manifest import load_manifest
from crosslayer.eval.methods import (DEFAULT_FIT_IMAGES, DEFAULT_SEED, SPM_METHODS, MethodConfig, resolve_layers,
                                     spm_layers)
from crosslayer.eval.spm import spm_level_slice
from crosslayer.eval.record import write_record
from crosslayer.eval.store import RowStore
from crosslayer._validate import check_positive_int
from crosslayer.errors import UsageError
from crosslayer.eval.stats import resplit
from crosslayer.eval.svm import DEFAULT_C_GRID, DEFAULT_MULTICLASS, check_multiclass, check_svm_options, train_and_test

GRAM_NAME = "gram-vs-train.npy"
STORED_SPM_LEVELS = MethodConfig("sum-spm").spm_levels  # the pyramid the main pass stores
GRAM_ALL_NAME = "gram-all.npy"  # every row against every row: any train/test split is a slice of it


def _gram(store: RowStore, config: MethodConfig, spec, train_index, progress: bool,
          every_row: bool = False) -> tuple[np.ndarray, bool]:
    """K (n, n_train) of the stored rows against the training rows (with `every_row`: K (n, n) against all rows),
    cached next to the rows (a side array whose size, crc32 and columns the store's metadata records).
    (K, was cached)."""
    from crosslayer.eval.gram import codes_gram, streaming_gram
    from crosslayer.eval.store import StoreFormatError
    from crosslayer.formats import check_npy, open_npy, write_npy

    if every_row:
        train_index = np.arange(store.n)
    path = store.directory / (GRAM_ALL_NAME if every_row else GRAM_NAME)
    info_key = "gram_all" if every_row else "gram"
    train = hashlib.sha256(np.asarray(train_index, np.int64).tobytes()).hexdigest()[:16]
    recorded = store.info.get(info_key)
    if isinstance(recorded, dict) and recorded.get("train") == train and path.exists():
        try:
            check_npy(path, recorded.get("size"), recorded.get("crc32"), StoreFormatError)
            return np.array(open_npy(path, "<f8", (store.n, len(train_index)), StoreFormatError)), True
        except StoreFormatError:
            pass  # a damaged cache is recomputed
    rows = store.read()
    if config.method == "crosslayer-sign":
        local, _ = resolve_layers(config, spec)
        gram = codes_gram(rows, spec.channels[local], train_index)
    else:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"Gram {config.label()}", unit="block")

        def report(done, total):
            bar.total = total
            bar.update(done - bar.n)

        # a tqdm without a total has no truth value: test for None
        gram = streaming_gram(rows.reshape(store.n, -1), train_index, progress=None if bar is None else report)
        if bar is not None:
            bar.close()
    gram = np.asarray(gram, "<f8")
    store.info[info_key] = {"train": train, **write_npy(path, gram)}
    store.save_info()
    return gram, False


def source_config(config: MethodConfig) -> MethodConfig:
    """The config whose store holds `config`'s rows: SPM rows at a subset of the stored pyramid's levels are slices
    of the full pyramid's rows (no pass and no store of their own); every other config is its own source."""
    if config.method in SPM_METHODS and config.spm_levels != STORED_SPM_LEVELS and set(config.spm_levels) <= set(STORED_SPM_LEVELS):
        return dataclasses.replace(config, spm_levels=STORED_SPM_LEVELS)
    return config


def resplit_results(gram_all, labels, splits, resplits: int, c_grid=DEFAULT_C_GRID, folds: int = 3, seed: int = 0,
                    n_jobs: int = 1, multiclass: str = DEFAULT_MULTICLASS) -> list[dict]:
    """The SVM (C by CV) on `resplits` seeded random train/test splits with the class sizes of `splits` (seeds
    1..resplits), each a slice of the kernel `gram_all` of every image against every image."""
    out = []
    for split_seed in range(1, resplits + 1):
        other_splits = resplit(labels, splits, split_seed)
        tr, te = np.flatnonzero(other_splits == "train"), np.flatnonzero(other_splits == "test")
        other = train_and_test(gram_all[np.ix_(tr, tr)], labels[tr], gram_all[np.ix_(te, tr)], labels[te],
                               c_grid, folds, seed, n_jobs, multiclass)
        out.append({"split_seed": split_seed, "accuracy": other["accuracy"], "C": other["C"],
                    "mean_per_class_accuracy": other["mean_per_class_accuracy"]})
    return out


def image_key(dataset, index: int) -> str:
    """An image's key in records: its path relative to the manifest's folder (absolute when it lies outside)."""
    path = Path(dataset.paths[index])
    try:
        return path.relative_to(Path(dataset.root)).as_posix()
    except ValueError:
        return str(path)


def _aconv_store(regions: RowStore, config: MethodConfig, dataset, directory: Path, seed: int, progress: bool):
    """Trains the guidance layer and stores the guided representation; returns (store, training seconds, losses)."""
    import json

    from crosslayer.eval.aconv import guided_representation, train_guidance

    params = dict(regions=regions.key, filters=config.aconv_filters, epochs=config.aconv_epochs, lr=config.aconv_lr, seed=seed)
    if not (config.l2 and config.power):  # keyed only when off, so the default's existing stores keep their keys
        params.update(l2=config.l2, power=config.power)
    key = "aconv-guided-" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    dims = config.aconv_filters * regions.row_shape[1]
    store = RowStore(directory / key, key, regions.n, (dims,), "float16", info={"params": params})
    if store.complete:
        return store, store.info.get("seconds_train", 0.0), store.info.get("losses", [])
    rows = regions.read()
    train = dataset.indices("train")
    begin = time.perf_counter()
    model, losses = train_guidance(rows[train], dataset.labels[train], len(dataset.classes), config.aconv_filters,
                                   config.aconv_epochs, config.aconv_lr, seed=seed, progress=progress)
    trained = time.perf_counter() - begin
    for start in range(store.done, store.n, 256):
        block = rows[start : start + 256]
        if config.l2 and config.power:
            store.append(start, guided_representation(model, block))
        else:
            import torch

            from crosslayer.eval.variants import guided_regions

            with torch.inference_mode():
                guidance = model.guidance(torch.from_numpy(np.asarray(block, np.float32))).numpy()
            store.append(start, guided_regions(block, guidance, config.l2, config.power))
    store.info.update(seconds_train=trained, losses=losses)
    store.save_info()
    store.close()
    return store, trained, losses


def classify(data_dir, method: str, backbone: str = "mobilenet_v2", side: int = 448, layers=None, pca: bool = True,
             l2: bool = True, power: bool = True, spm_levels=(0, 1, 2), spm_layer: str = "t1", cache_dir=None,
             json_path=None, limit_per_class: int | None = None, weights=None, batch_size: int = 16, threads: int = 0,
             fit_images: int = DEFAULT_FIT_IMAGES, c_grid=DEFAULT_C_GRID, folds: int = 3, seed: int = DEFAULT_SEED,
             n_jobs: int = 1, progress: bool = True, multiclass: str = DEFAULT_MULTICLASS, resplits: int = 0,
             **aconv_options) -> dict:
    """Evaluates one method on a manifest data set; returns the record (accuracy as a fraction) and, with
    `json_path`, writes it atomically. Extraction and kernels are cached under `cache_dir` and reused.

    The SVM trains on the train split (C chosen by `folds`-fold cross-validation within it) and reports accuracy on
    the test split; val images are extracted with the rest (see `crosslayer.eval.extract`) but not used. The record
    keeps every test image's key (its manifest path), label and prediction, for paired tests between methods.

    `multiclass`: "ovo" (SVC's one-vs-one) or "ovr" (one-vs-rest, the paper's). `resplits` > 0 also evaluates that
    many seeded random train/test splits with the manifest's class sizes (`stats.resplit`, seeds 1..resplits) from
    one kernel of every image against every image (computed once, cached), into record["resplits"]."""
    from crosslayer import __version__
    from crosslayer.backbones.registry import get_backbone

    started = time.perf_counter()
    spec = get_backbone(backbone)
    config = MethodConfig(method, layers=None if layers is None else tuple(layers), pca=pca, l2=l2, power=power,
                          spm_levels=tuple(spm_levels), spm_layer=spm_layer, fit_images=fit_images, seed=seed,
                          **aconv_options)
    # everything that can be checked is checked before extraction and the Gram matrix
    config.check_backbone(spec)
    check_svm_options(c_grid, folds)
    check_multiclass(multiclass)
    resplits = check_positive_int(resplits, "resplits", minimum=0)
    dataset = load_manifest(data_dir).subset_per_class(limit_per_class, seed)
    multilabel.check_method(dataset, config.method)
    if dataset.multilabel and resplits > 0:
        raise UsageError("resplits: re-splitting keeps single-label class sizes; this manifest is multi-label")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()

    begin = time.perf_counter()
    source = source_config(config)
    sliced = source != config
    store = extract(dataset, [source], spec.name, side, cache_root, weights, batch_size, threads, fit_images, seed, progress)[source]
    seconds = {"extract_this_run": time.perf_counter() - begin}
    seconds.update({f"extract_{k}": v for k, v in store.info.get("seconds", {}).items()})
    aconv_info = {}
    if config.method in ("aconv", "aconv-fast"):
        directory = pass_directory(cache_root, dataset, spec.name, side, weights)
        store, seconds["aconv_train"], losses = _aconv_store(store, config, dataset, directory, seed, progress)
        aconv_info = {"losses_first_last": [losses[0], losses[-1]] if losses else []}

    train, test = dataset.indices("train"), dataset.indices("test")
    begin = time.perf_counter()
    if sliced:
        from crosslayer.eval.gram import streaming_gram

        rows = spm_level_slice(store.read(), [spec.channels[layer] for layer in spm_layers(config, spec)],
                               STORED_SPM_LEVELS, config.spm_levels)
        gram, cached = streaming_gram(rows, np.arange(store.n) if resplits > 0 else train), False
    else:
        gram, cached = _gram(store, config, spec, train, progress, every_row=resplits > 0)
    seconds["gram"] = time.perf_counter() - begin
    seconds["gram_cached"] = cached
    columns = train if resplits > 0 else np.arange(len(train))
    if dataset.multilabel:  # per-class binary SVMs, VOC mean AP
        result = multilabel.evaluate(dataset, gram[:, columns], train, test, c_grid, folds, seed, n_jobs)
    else:
        result = train_and_test(gram[np.ix_(train, columns)], dataset.labels[train], gram[np.ix_(test, columns)],
                                dataset.labels[test], c_grid, folds, seed, n_jobs, multiclass)
    seconds["select_c"] = result.pop("seconds_select_c")
    seconds["train_test"] = result.pop("seconds_train_test")
    split_results = resplit_results(gram, dataset.labels, dataset.splits, resplits, c_grid, folds, seed, n_jobs, multiclass)
    seconds["total_this_run"] = time.perf_counter() - started

    if config.method == "crosslayer-sign":
        local, guidance = resolve_layers(config, spec)
        dims = spec.channels[local] * spec.channels[guidance]
        bytes_per_image = int(np.prod(store.row_shape)) * 8
    else:
        dims = rows.shape[1] if sliced else int(np.prod(store.row_shape))
        bytes_per_image = dims * 4
    predictions = result.pop("predictions")
    record = {
        "dataset": str(Path(data_dir)),
        "method": config.method,
        "label": config.label(),
        "config": config.as_dict(),
        "backbone": spec.name,
        "side": side,
        "layers": list(resolve_layers(config, spec)) if config.method not in ("global", "jitter", "aconv", "aconv-fast") else None,
        "weights": weights,
        "limit_per_class": limit_per_class,
        "fit_images": fit_images,
        "seed": seed,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "classes": len(dataset.classes),
        "dims": dims,
        "bytes_per_image": bytes_per_image,
        "seconds": seconds,
        "crosslayer_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "test_keys": [image_key(dataset, i) for i in test],
        "test_labels": dataset.labels[test].tolist(),
        "test_predictions": predictions,
        **({"resplits": split_results} if resplits else {}),
        **aconv_info,
        **result,
    }
    if json_path is not None:
        write_record(json_path, record)
    return record
