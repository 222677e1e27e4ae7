"""Two representations combined by the sum of their cosine-normalised linear kernels, which is the linear kernel of
their concatenation after each is L2-normalised (and scaled by 1/sqrt(parts)):

    K(i, j) = 1/P * sum_p <f_p(i), f_p(j)> / (|f_p(i)| |f_p(j)|)

The paper has no OConv + AConv row: it mentions one OConv and one AConv layer in cross-layer pooling (its Conv-FC,
`crosslayer.eval.cross_fc`), and concatenates two conv layers only for direct pooling (Table 8). Concatenation
after normalisation is the choice that gives each part the same weight whatever its dimension (OConv 409,600 vs
AConv 25,600 here), so neither drowns the other in the kernel.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crosslayer.errors import UsageError

SQUARED_NORM_BLOCK = 256


def squared_norms(rows) -> np.ndarray:
    """(n,) float64 squared L2 norms of (n, ...) rows, a block at a time (a memmap is fine)."""
    n = rows.shape[0]
    out = np.empty(n, np.float64)
    for start in range(0, n, SQUARED_NORM_BLOCK):
        block = np.asarray(rows[start : start + SQUARED_NORM_BLOCK], np.float64)
        block = block.reshape(len(block), -1)
        out[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    return out


def combined_kernel(grams, norms, train_index) -> np.ndarray:
    """grams: per part, K_p (n, n_train) against the rows `train_index`; norms: per part, (n,) squared norms.
    Returns the mean of the cosine-normalised kernels (n, n_train). A zero row has zero similarity to everything."""
    if not grams or len(grams) != len(norms):
        raise UsageError(f"grams: expected one kernel per part and at least one part, got {len(grams)} kernels and "
                         f"{len(norms)} norm vectors")
    train_index = np.asarray(train_index, np.int64)
    total = np.zeros(np.shape(grams[0]), np.float64)
    for gram, norm in zip(grams, norms):
        gram = np.asarray(gram, np.float64)
        if gram.shape != total.shape or gram.shape[1] != len(train_index) or len(norm) != gram.shape[0]:
            raise UsageError(f"grams: every kernel must be (n, {len(train_index)}) with n norms; got {gram.shape} "
                             f"and {len(norm)} norms")
        length = np.sqrt(np.asarray(norm, np.float64))
        scale = np.outer(length, length[train_index])
        total += np.divide(gram, scale, out=np.zeros_like(gram), where=scale > 0)
    return total / len(grams)


def classify_combination(data_dir, parts, cache_dir=None, limit_per_class=None, seed: int = 0, n_jobs: int = 1,
                         progress: bool = False, **common) -> dict:
    """Evaluates the normalised-kernel sum of `parts` (a list of `classify` keyword dicts, e.g.
    [dict(method="crosslayer"), dict(method="aconv-fast")]) with the same SVM protocol as every method.
    Each part is classified first (so its rows and Gram are cached, and its own record is returned alongside)."""
    from crosslayer.backbones.registry import get_backbone
    from crosslayer.eval.classify import _aconv_store, _gram, classify, image_key
    from crosslayer.eval.extract import default_cache_root, extract, pass_directory
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.methods import ACONV_METHODS, MethodConfig
    from crosslayer.eval.svm import DEFAULT_C_GRID, train_and_test

    if len(parts) < 2:
        raise UsageError(f"parts: a combination needs at least two methods, got {len(parts)}")
    if any(part.get("method") == "crosslayer-sign" for part in parts):
        raise UsageError("parts: crosslayer-sign rows are codes, not vectors; combine float methods")
    started = time.perf_counter()
    backbone = common.get("backbone", "mobilenet_v2")
    side, weights = common.get("side", 448), common.get("weights")
    fit_images = common.get("fit_images", 256)
    spec = get_backbone(backbone)
    dataset = load_manifest(data_dir).subset_per_class(limit_per_class, seed)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    train, test = dataset.indices("train"), dataset.indices("test")
    part_records, grams, norms, labels = [], [], [], []
    for part in parts:
        options = {**common, **part}
        record = classify(data_dir, cache_dir=cache_dir, limit_per_class=limit_per_class, seed=seed, n_jobs=n_jobs,
                          progress=progress, **options)
        record.pop("test_predictions", None)
        part_records.append(record)
        config = MethodConfig(**record["config"])
        store = extract(dataset, [config], spec.name, side, cache_root, weights, fit_images=fit_images, seed=seed,
                        progress=progress)[config]
        if config.method in ACONV_METHODS:
            directory = pass_directory(cache_root, dataset, spec.name, side, weights)
            store = _aconv_store(store, config, dataset, directory, seed, progress)[0]
        gram, _ = _gram(store, config, spec, train, progress)
        grams.append(gram)
        norms.append(squared_norms(store.read()))
        labels.append(config.label())
    begin = time.perf_counter()
    kernel = combined_kernel(grams, norms, train)
    kernel_seconds = time.perf_counter() - begin
    result = train_and_test(kernel[train], dataset.labels[train], kernel[test], dataset.labels[test],
                            common.get("c_grid", DEFAULT_C_GRID), common.get("folds", 3), seed, n_jobs)
    seconds = {"gram": kernel_seconds, "select_c": result.pop("seconds_select_c"),
               "train_test": result.pop("seconds_train_test"), "total_this_run": time.perf_counter() - started,
               # the parts' own extraction, so a table row shows what the combination costs to compute
               "extract_network": sum(r["seconds"].get("extract_network", 0.0) for r in part_records),
               "extract_encode": sum(r["seconds"].get("extract_encode", 0.0) + r["seconds"].get("aconv_train", 0.0)
                                     for r in part_records)}
    return {
        "method": "combination",
        "label": " + ".join(labels) + " (normalised kernel sum)",
        "parts": part_records,
        "limit_per_class": limit_per_class,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "classes": len(dataset.classes),
        "dims": sum(r["dims"] for r in part_records),
        "bytes_per_image": sum(r["bytes_per_image"] for r in part_records),
        "seconds": seconds,
        # every test image's key and label beside its prediction, as a method's record: rows are compared paired
        "test_keys": [image_key(dataset, i) for i in test],
        "test_labels": dataset.labels[test].tolist(),
        "test_predictions": result.pop("predictions"),
        **result,
    }
