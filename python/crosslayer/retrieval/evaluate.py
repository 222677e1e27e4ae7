"""The paper's retrieval experiment (Section 4.4) on a `queries.csv`/`database.csv` set, optionally with distractors.

Methods, each ranked over the whole database (+ distractors):
  spoc              sum-pooled guidance layer, L2, PCA-whitening learnt on the learn images, L2 (Babenko 2015)
  spoc-sign         the signs of the SPoC descriptor (1 bit a dimension), dot product
  embedding         the backbone's global average-pooled embedding, L2 (= SPoC before whitening)
  crosslayer-float  cosine of the float cross-layer representations over each query's selected channels
  crosslayer-codes  masked popcount similarity of the 2-bit sign codes (the paper's eq. 3)
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from crosslayer.encoder import CrossLayerEncoder
from crosslayer.errors import UsageError
from crosslayer.retrieval.channels import channel_label, selection_masks
from crosslayer.retrieval.datasets import image_paths, read_retrieval_set
from crosslayer.retrieval.feature_cache import FeatureCache, float_key
from crosslayer.retrieval.float_scores import FloatQueryScorer
from crosslayer.retrieval.metrics import average_precision, evaluate_ranks, relevance_matrix, relevant_ranks
from crosslayer.l2 import l2_normalize
from crosslayer.retrieval.spoc import SpocWhitening

DEFAULT_CHANNELS = (10, 20, 50, 100, 200, None)
RESULTS_FORMAT = "crosslayer-retrieval-results"
RESULTS_VERSION = 3


def write_results(path, data: str, distractors, records: list[dict]) -> None:
    """Writes the records of `evaluate` (a `crosslayer.formats` document) with the retrieval set and distractor
    folders they are of (as the caller names them: relative to a data root, or as given)."""
    from crosslayer.formats import write_json

    write_json(path, RESULTS_FORMAT, RESULTS_VERSION,
               {"data": str(data), "distractors": [str(d) for d in distractors], "records": records})


def read_results(path) -> dict:
    """{"data", "distractors", "records"} of a file from `write_results` (FormatError otherwise)."""
    from crosslayer.errors import FormatError
    from crosslayer.formats import read_json

    body = read_json(path, RESULTS_FORMAT, RESULTS_VERSION, "crosslayer retrieval results")
    if not isinstance(body.get("records"), list) or not isinstance(body.get("distractors"), list):
        raise FormatError(f"{path}: damaged crosslayer retrieval results (no records or distractors list)")
    return body


def sample_paths(folders, count: int, seed: int = 0) -> list[str]:
    paths = [p for folder in folders for p in image_paths(folder)]
    if len(paths) <= count:
        return paths
    chosen = np.sort(np.random.default_rng(seed).choice(len(paths), count, replace=False))
    return [paths[i] for i in chosen]


def distractor_name(folder) -> str:
    """The cache set of a distractor folder: its name for reading, a hash of its resolved path so that two folders
    of one name (/a/images, /b/images) are two sets."""
    resolved = Path(folder).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return f"distractors-{resolved.name or 'root'}-{digest}"


def default_cache_dir() -> Path:
    from crosslayer.backbones.export import cache_dir

    return cache_dir() / "retrieval-eval"


def compute_features(data, distractors, learn, cache_dir, channel_counts, encoder_options, learn_images=800,
                     with_float=True, progress=True):
    """Runs (or resumes) every backbone pass the evaluation needs; returns the open cache and the retrieval set.
    cache_dir None: `default_cache_dir()` ($CROSSLAYER_CACHE/retrieval-eval)."""
    rset = read_retrieval_set(data)
    learn_paths = sample_paths(learn, learn_images)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache = FeatureCache(cache_dir, CrossLayerEncoder(**encoder_options), fit_sources=learn_paths, progress=progress)
    cache.compute("learn", learn_paths, progress=progress)
    cache.compute("queries", rset.queries.paths, keep_float=with_float, on_error="raise", progress=progress)
    scorer, key = None, None
    if with_float:
        queries = cache.load("queries", rset.queries.paths)
        masks = selection_masks(queries["codes"].channel_mean, channel_counts)
        scorer = FloatQueryScorer(queries["float_reps"], cache.encoder.Dk, masks)
        key = float_key(queries["paths"], channel_counts)
    cache.compute("database", rset.database.paths, scorer, key, on_error="raise", progress=progress)
    for folder in distractors:
        cache.compute(distractor_name(folder), image_paths(folder), scorer, key, progress=progress)
    return cache, rset


def _codes_score_matrix(queries, segments, total: int, channels) -> np.ndarray:
    """Full (nq, total) popcount score matrix via the top-k search with k = total (every item ranked)."""
    from crosslayer.search import search_segments

    scores, ids = search_segments(queries, segments, total, channels)
    matrix = np.empty((len(queries), total), np.float64)
    np.put_along_axis(matrix, ids, scores.astype(np.float64), axis=1)
    return matrix


def _time_per_query(function, repeats: int) -> float:
    """Median seconds of `function()` over `repeats` calls (after one warm-up)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def evaluate(cache: FeatureCache, rset, distractors=(), channel_counts=DEFAULT_CHANNELS, with_float=True,
             spoc_dim: int = 256, latency_queries: int = 5, progress=True) -> list[dict]:
    """One record per (method, channel count): map, recall@1/5/10, database size, memory and query latency."""
    encoder = cache.encoder
    queries = cache.load("queries", rset.queries.paths)
    database = cache.load("database", rset.database.paths)
    parts = [database] + [cache.load(distractor_name(folder), image_paths(folder)) for folder in distractors]
    if with_float and all(p["float_scores"] is not None for p in parts):
        # float scores are columns per (query, channel count) as `compute_features` was asked for: other queries or
        # channel counts here would label them wrongly
        expected = float_key(queries["paths"], channel_counts)
        if any(p["float_key"] != expected for p in parts):
            raise UsageError("channel_counts: the cached float scores were computed against other queries or channel "
                             "counts; pass the ones given to compute_features")
    item_of = dict(zip(rset.database.paths, rset.database.items))
    labels = [item_of[p] for p in database["paths"]] + [None] * sum(len(p["paths"]) for p in parts[1:])
    query_items = [dict(zip(rset.queries.paths, rset.queries.items))[p] for p in queries["paths"]]
    relevant = relevance_matrix(query_items, labels)
    answerable = relevant.any(axis=1)
    if not answerable.all():
        print(f"note: {np.count_nonzero(~answerable)} queries have no relevant image in the database; left out")
    relevant = relevant[answerable]
    total = relevant.shape[1]
    n_distractors = total - len(database["paths"])
    common = {"queries": int(answerable.sum()), "database": len(database["paths"]), "distractors": n_distractors}

    def record(method, channels, scores, bytes_per_image, search_s, post_encode_s):
        ranks = relevant_ranks(scores[answerable], relevant)
        metrics = evaluate_ranks(ranks)
        # per query, for paired intervals of mAP differences between methods (the same queries in the same order)
        metrics["query_ap"] = [average_precision(r) for r in ranks]
        return {"method": method, "channels": channel_label(channels), **common, **metrics,
                "bytes_per_image": int(np.ceil(bytes_per_image)), "search_ms": 1e3 * search_s,
                "encode_ms": 1e3 * (backbone_s + post_encode_s), "search_note": ""}

    # query encoding latency: the backbone at batch size 1, then each method's own step
    sample = rset.queries.paths[:latency_queries]
    activations = [next(iter(encoder.activations([p]))) for p in sample[:1]]
    backbone_s = np.median([_time_per_query(lambda p=p: next(iter(encoder.activations([p]))), 1) for p in sample])
    outputs = activations[0].outputs
    records = []

    # SPoC and the global embedding: dense dot products
    if cache.learn_paths is None:
        raise UsageError("cache: opened without its learn set (fit_sources), which SPoC whitening is learnt on")
    learn = cache.load("learn", cache.learn_paths)
    whitening = SpocWhitening(spoc_dim).fit(learn["embedding"])
    all_embeddings = np.concatenate([p["embedding"] for p in parts])
    # spoc-sign: the paper's observation that binarising the pooled baseline costs accuracy (cross-layer does not)
    # bytes per image: float32 vectors; the signs packed one bit a dimension
    for method, transform, nbytes in (("spoc", whitening.transform, spoc_dim * 4),
                                      ("spoc-sign", lambda x: np.sign(whitening.transform(x)), spoc_dim / 8),
                                      ("embedding", lambda x: l2_normalize(np.asarray(x, np.float64)).astype(np.float32),
                                       all_embeddings.shape[1] * 4)):
        query_vectors = transform(queries["embedding"])
        database_vectors = transform(all_embeddings)
        scores = query_vectors @ database_vectors.T
        # the top 10 (all of a smaller database)
        top = min(10, len(database_vectors) - 1)
        search_s = _time_per_query(lambda: np.argpartition(-(query_vectors[:1] @ database_vectors.T), top, axis=1), 20)
        post_s = _time_per_query(lambda: transform(outputs["embedding"]), 20)
        records.append(record(method, None, scores, nbytes, search_s, post_s))
    del all_embeddings

    # cross-layer float: scores were computed while streaming the images through the backbone
    if with_float and all(p["float_scores"] is not None for p in parts):
        float_scores = np.concatenate([p["float_scores"] for p in parts], axis=1)
        dk, dt = encoder.Dk, encoder.Dt
        probe_reps = queries["float_reps"][:1]
        post_s = _time_per_query(lambda: encoder.pool_batch(outputs, "float"), 5)
        for s, channels in enumerate(channel_counts):
            masks = selection_masks(queries["codes"].channel_mean[:1], [channels])
            scorer = FloatQueryScorer(probe_reps, dk, masks)
            block = queries["float_reps"][:16]
            # one query against a 16-image block, scaled to the database: the scoring cost if the floats were held
            search_s = _time_per_query(lambda: scorer.score(block), 3) * total / len(block)
            records.append(record("crosslayer-float", channels, float_scores[:, :, s], dk * dt * 4, search_s, post_s))
            records[-1]["search_note"] = "scoring cost with every float representation in memory (1.6 MB/image)"
        del float_scores

    # cross-layer sign codes: the masked popcount search
    segments, base = [], 0
    for part in parts:
        segments.append((part["codes"].bits, base))
        base += len(part["paths"])
    query_codes = queries["codes"]
    post_s = _time_per_query(lambda: encoder.pool_batch(outputs, "codes"), 5)
    bytes_per_code = query_codes.nbytes // max(len(query_codes), 1)
    from crosslayer.search import search_segments

    for channels in channel_counts:
        scores = _codes_score_matrix(query_codes, segments, total, channels)
        # one query, one thread: the latency a single interactive search sees (OpenMP threads on a shared 2-core
        # machine add ~15 ms of contention for a search this small)
        search_s = _time_per_query(lambda: search_segments(query_codes[:1], segments, 10, channels, num_threads=1), 5)
        records.append(record("crosslayer-codes", channels, scores, bytes_per_code, search_s, post_s))
    return records


def markdown_table(records: list[dict]) -> str:
    lines = ["| method | channels | distractors | mAP | R@1 | R@5 | R@10 | bytes/image | encode ms | search ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {r['method']} | {r['channels']} | {r['distractors']} | {r['map']:.3f} | {r['recall@1']:.3f} | "
            f"{r['recall@5']:.3f} | {r['recall@10']:.3f} | {r['bytes_per_image']:,} | {r['encode_ms']:.0f} | "
            f"{r['search_ms']:.2f} |"
        )
    return "\n".join(lines)


def result_sheet(cache: FeatureCache, rset, out, distractors=(), channels=50, queries: int = 8, top: int = 5,
                 seed: int = 0):
    """A contact sheet of the sign-code search for a seeded sample of queries, hits marked correct/wrong from the
    ground truth. Returns the sampled query paths."""
    from crosslayer.retrieval.sheet import SheetHit, SheetRow, render_sheet
    from crosslayer.search import search_segments

    query_set = cache.load("queries", rset.queries.paths)
    parts = [cache.load("database", rset.database.paths)]
    parts += [cache.load(distractor_name(folder), image_paths(folder)) for folder in distractors]
    paths, segments, base = [], [], 0
    for part in parts:
        segments.append((part["codes"].bits, base))
        paths += part["paths"]
        base += len(part["paths"])
    item_of = dict(zip(rset.database.paths, rset.database.items))
    query_item = dict(zip(rset.queries.paths, rset.queries.items))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(query_set["paths"]), min(queries, len(query_set["paths"])), replace=False))
    scores, ids = search_segments(query_set["codes"][chosen], segments, top, channels)
    rows = []
    for row, q in enumerate(chosen):
        query = query_set["paths"][q]
        hits = [SheetHit(paths[i], int(s), item_of.get(paths[i]) == query_item[query]) for s, i in zip(scores[row], ids[row])]
        rows.append(SheetRow(query, hits))
    render_sheet(rows, out)
    return [query_set["paths"][q] for q in chosen]
