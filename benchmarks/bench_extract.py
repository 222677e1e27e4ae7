"""Images -> codes end to end, side by side in one run: the pipeline as it was (onnxruntime threads spinning), the
pipeline now at each precision (fp32, bf16 on OpenVINO, int8), a bare session of each precision's runtime on the same
model fed ready batches (the backbone-only ceiling of each precision), and a plain torch-eager script; plus the compute floor (the model's FLOPs at the side
against this CPU's measured GEMM rate) and, with --quality, the sign agreement of int8 and draft-decoded codes with
fp32 codes on real images.

Every variant runs in its own subprocess (peak RSS), in interleaved rounds; the median round is reported with the
load average, since the machine may be shared. Results are checked first: the pipeline's fp32 codes agree with the
torch script's (up to signs of values at rounding level) and with the old pipeline's exactly. Usage:
    PYTHONPATH=python python benchmarks/bench_extract.py [--data ROOT] [--images 64] [--threads 2] [--rounds 3]
    PYTHONPATH=python python benchmarks/bench_extract.py --quality [--quality-images 210]
    PYTHONPATH=python python benchmarks/bench_extract.py --data ROOT --reference FP32_DIR --candidate DIR
    PYTHONPATH=python python benchmarks/bench_extract.py --data ROOT --quality-graph-pooling --reference FP32_DIR \
        --encoder-file ENCODER.xle [--quality-images 70]
    PYTHONPATH=python python benchmarks/bench_extract.py --data ROOT --pooling-cost [--encoder-file ENCODER.xle]
(--reference/--candidate: quality of a precision on whole sets, from image indexes of smvs-queries, smvs-database,
scene15 and cub100 made with one PCA: `compare_indexes`; --quality-graph-pooling: bf16 pooled in OpenVINO's graph
against the fp32 kernel's pooling of the same bf16 maps and against fp32 codes; --pooling-cost: the core time of
each pooling route in one process. bf16 variants take options: `parse_variant`.)
(ROOT holds cub100/, scene15/, smvs/; default ../shared/data beside the repository.)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

MANIFEST = "cub100/manifest.csv"
VARIANTS = ("before", "fp32", "bf16", "int8", "ort-fp32", "ov-bf16", "ort-int8", "torch")
DEFAULT_VARIANTS = ("before", "fp32", "bf16", "bf16-kernelpool", "int8", "ort-fp32", "ov-bf16", "ort-int8", "torch")
LABELS = {
    "before": "pipeline as before (ort spinning)",
    "fp32": "pipeline now, fp32",
    "bf16": "pipeline now, bf16 (OpenVINO)",
    "int8": "pipeline now, int8",
    "ort-fp32": "bare ort fp32 session, ready batches",
    "ov-bf16": "bare OpenVINO bf16 request, ready batches",
    "ort-int8": "bare ort int8 session, ready batches",
    "torch": "plain torch-eager script",
}
# Options appended to a bf16 variant's name, "-" separated (e.g. ov-bf16-s2-b32, bf16-s1-kernelpool):
#   sN: N OpenVINO streams (default: the runtime's OPENVINO_STREAMS); bN: batch of N (default --batch-size);
#   rN: N images in one OpenVINO request (default: the runtime's IMAGES_PER_REQUEST);
#   dynamic: the model compiled once as exported (dynamic batch and sides), not once per request shape;
#   kernelpool: the pipeline pools the layers' bf16 maps with the fp32 kernel instead of in OpenVINO's graph (the
#   pipeline before graph pooling).
OPTION_LABELS = {"kernelpool": "pooled by the fp32 kernel, as before", "dynamic": "model as exported, dynamic shapes"}


def parse_variant(which: str):
    """(base variant, {"streams": int|None, "batch": int|None, "per_request": int|None, "dynamic": bool,
    "kernelpool": bool})."""
    options = {"streams": None, "batch": None, "per_request": None, "dynamic": False, "kernelpool": False}
    tokens = which.split("-")
    while len(tokens) > 1 and "-".join(tokens) not in VARIANTS:
        token = tokens.pop()
        if token in ("dynamic", "kernelpool"):
            options[token] = True
        elif token[:1] in "sbr" and token[1:].isdigit():
            options[{"s": "streams", "b": "batch", "r": "per_request"}[token[0]]] = int(token[1:])
        else:
            raise SystemExit(f"variant {which!r}: unknown option {token!r}")
    base = "-".join(tokens)
    if base not in VARIANTS:
        raise SystemExit(f"variant {which!r}: unknown (variants: {', '.join(VARIANTS)} with options)")
    if base not in ("bf16", "ov-bf16") and (options["streams"] or options["dynamic"] or options["per_request"]):
        raise SystemExit(f"variant {which!r}: streams, images a request and dynamic shapes apply to bf16 on "
                         f"OpenVINO only")
    return base, options


def label(which: str) -> str:
    base, options = parse_variant(which)
    extra = [f"{options['streams']} stream(s)"] if options["streams"] else []
    extra += [f"batch {options['batch']}"] if options["batch"] else []
    extra += [f"{options['per_request']} image(s) a request"] if options["per_request"] else []
    extra += [OPTION_LABELS[key] for key in ("dynamic", "kernelpool") if options[key]]
    extra += ["pooled in the graph"] if base == "bf16" and not options["kernelpool"] else []
    return LABELS[base] + (f" [{', '.join(extra)}]" if extra else "")


def _split(root, name, split, count, step=1):
    with open(data_set(root, f"{name}/manifest.csv"), newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    return [str(data_set(root, f"{name}/{row['path']}")) for row in rows[::step]][:count]


def _paths(args):
    from crosslayer.extract import read_manifest

    return read_manifest(data_set(args.data, MANIFEST))[: args.images]


def _encoder(args, precision, batch_size=None):
    from crosslayer.encoder import CrossLayerEncoder

    encoder = CrossLayerEncoder.load(args.encoder_int8 if precision == "int8" else args.encoder, threads=args.threads,
                                     batch_size=batch_size or args.batch_size, decode_workers=args.decode_workers)
    # bf16 needs no calibration: the fp32 encoder's PCA, so its codes compare with fp32's sign by sign
    return encoder.with_precision("bf16") if precision == "bf16" else encoder


def run_pipeline(args, precision, spinning=False, options=None) -> dict:
    from crosslayer.backbones.runtime import OnnxBackbone
    from crosslayer.codes import Codes

    options = options or {}
    _set_runtime_options(options)
    encoder = _encoder(args, precision, options.get("batch"))
    runner = encoder._backbone()
    if spinning:  # the session as it was made before: idle intra-op threads busy-wait
        encoder._runners[(tuple(encoder.layers), True)] = OnnxBackbone(runner.model_path, intra_op_threads=args.threads,
                                                                        allow_spinning=True)
    if options.get("kernelpool"):  # the bf16 maps out of the graph, pooled by the fp32 kernel (encode before graph pooling)
        def encode(images):
            return Codes.concatenate([encoder.pool_batch(batch.outputs, "codes") for batch in encoder.activations(images)])
    else:
        encode = encoder.encode
    paths = _paths(args)
    encode(paths[: encoder.batch_size])  # warm-up, untimed
    encoder.stage_times_.reset()
    start, cpu = time.perf_counter(), time.process_time()
    codes = encode(paths)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    codes.save(args.codes)
    return {"seconds": seconds, "cpu_seconds": cpu, "stages": encoder.stage_times_.seconds()}


def _set_runtime_options(options) -> None:
    """This child process only: the runners made from now on take these instead of the runtime's defaults."""
    from crosslayer.backbones import runtime

    if options.get("streams"):
        runtime.OPENVINO_STREAMS = options["streams"]
    if options.get("per_request"):
        runtime.IMAGES_PER_REQUEST = options["per_request"]
    if options.get("dynamic"):
        runtime.STATIC_SHAPES = False


def run_bare(args, precision, options=None) -> dict:
    import numpy as np

    from crosslayer.backbones.runtime import backbone_runner

    options = options or {}
    _set_runtime_options(options)
    batch_size = options.get("batch") or args.batch_size
    encoder = _encoder(args, precision)
    model = encoder.backbone_model()
    session = backbone_runner(model, precision, args.threads, streams=options.get("streams"))
    paths = _paths(args)
    batches = [np.stack([encoder._prepare(p) for p in paths[i : i + batch_size]])
               for i in range(0, len(paths), batch_size)]
    session.run(batches[0])
    start, cpu = time.perf_counter(), time.process_time()
    if hasattr(session, "start"):  # OpenVINO: every batch queued at once, so no stream waits at a batch's end
        for pending in [session.start(batch) for batch in batches]:
            pending.result()
    else:
        for batch in batches:
            session.run(batch)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def run_torch(args) -> dict:
    """The plain script: PIL decode + resize, torch eager MobileNetV2, numpy pooling + sign packing."""
    import numpy as np
    import torch

    from crosslayer import reference
    from crosslayer.backbones.export import torch_reference
    from crosslayer.codes import Codes
    from crosslayer.images import prepare

    torch.set_num_threads(args.threads)
    encoder = _encoder(args, "fp32")
    spec = encoder.spec
    net = torch_reference("mobilenet_v2", encoder.layers)
    mean, proj = (np.asarray(v, np.float32) for v in encoder.pca_)
    paths = _paths(args)
    net(np.stack([prepare(paths[0], args.side, "square", spec.mean, spec.std)]))
    start = time.perf_counter()
    parts = []
    for i in range(0, len(paths), args.batch_size):
        batch = np.stack([prepare(p, args.side, "square", spec.mean, spec.std) for p in paths[i : i + args.batch_size]])
        local, guidance = net(batch)
        # same math as the fused kernel, vectorised: PCA, P = A X, signs packed
        n, dt, h, w = local.shape
        x = (local.reshape(n, dt, h * w).transpose(0, 2, 1) - mean) @ proj
        a = guidance.reshape(n, guidance.shape[1], h * w)
        parts.append(Codes(reference.pack_ternary(np.sign(a @ x).astype(np.int8)), a.mean(axis=2), dt))
    seconds = time.perf_counter() - start
    Codes.concatenate(parts).save(args.codes)
    return {"seconds": seconds}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args) -> int:
    which, options = parse_variant(args.which)
    if which in ("before", "fp32", "bf16", "int8"):
        result = run_pipeline(args, "fp32" if which == "before" else which, spinning=which == "before", options=options)
    elif which.startswith(("ort-", "ov-")):
        result = run_bare(args, which.split("-", 1)[1], options)
    else:
        result = run_torch(args)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))
    return 0


# ---- compute floor ---------------------------------------------------------------------------------------------------

def model_flops(side: int) -> float:
    """Multiply-adds x 2 of the exported network (the layer pair and the embedding) on one side x side image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from crosslayer.backbones.export import _last_tap_index, _load_network, _tap_module
    from crosslayer.backbones.registry import get_backbone
    from crosslayer.backbones.weights import resolve_weights

    spec = get_backbone("mobilenet_v2")
    taps = spec.default_pair
    module = _tap_module(_load_network(spec, resolve_weights(spec, None)[0], 0), taps,
                         [spec.tap_index(t) for t in taps], _last_tap_index(spec), True, False)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(torch.zeros(1, 3, side, side))
    return float(counter.get_total_flops())


def gemm_rates(threads: int) -> dict:
    """GFLOP/s of a 1024^3 matrix product with `threads` threads: fp32 and bf16 (torch), int8 (onnxruntime
    MatMulInteger); median of 5."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    n = 1024
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(5):
            begin = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - begin)
        rates[name] = 2 * n**3 / float(np.median(times)) / 1e9
    rates["int8"] = _int8_gemm_rate(n, threads)
    return rates


def _int8_gemm_rate(n: int, threads: int) -> float:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    session.run(None, feeds)
    times = []
    for _ in range(5):
        begin = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - begin)
    del onnx
    return 2 * n**3 / float(np.median(times)) / 1e9


# ---- quality: sign agreement with fp32 on real images ----------------------------------------------------------------

def quality(args) -> int:
    """Sign agreement with fp32 codes and SMVS retrieval with int8 against fp32, and JPEG draft decoding against
    the full decode. Both precisions learn their PCA (and int8 its calibration) on the same train images; sign
    agreement compares int8 activations pooled with the fp32 PCA (two PCAs fitted apart have arbitrary eigenvector
    signs, so their codes are not comparable bit by bit), retrieval uses each encoder as a user would."""
    import numpy as np

    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.datasets import read_retrieval_set
    from crosslayer.retrieval.metrics import evaluate_scores, relevance_matrix
    from crosslayer.search import search_segments

    third = args.quality_images // 3
    train = _split(args.data, "cub100", "train", 100, 29) + _split(args.data, "scene15", "train", 100, 15)
    smvs = read_retrieval_set(data_set(args.data, "smvs"))
    images = (_split(args.data, "cub100", "test", third, 9) + _split(args.data, "scene15", "test", third, 9)
              + smvs.database.paths[:third])
    print(f"load average {os.getloadavg()[0]:.1f}; side {args.side}; PCA and int8 calibration on {len(train)} "
          f"train images (cub100, scene15)")
    settings = dict(side=args.side, threads=args.threads, batch_size=args.batch_size, fit_images=len(train))
    fp32 = CrossLayerEncoder(**settings).fit(train)
    int8 = CrossLayerEncoder(precision="int8", **settings).fit(train)
    int8_fp32_pca = CrossLayerEncoder(precision="int8", **settings)
    int8_fp32_pca.int8_model_, int8_fp32_pca.pca_ = int8.int8_model_, fp32.pca_
    agreement = (int8_fp32_pca.encode(images).signs() == fp32.encode(images).signs()).mean(axis=(1, 2))
    print(f"int8 vs fp32 sign agreement (same PCA), {len(images)} images (cub100, scene15 test, smvs database): "
          f"median {np.median(agreement):.4f}, min {agreement.min():.4f}")

    relevant = relevance_matrix(smvs.queries.items, smvs.database.items)
    per_query = {}
    for name, encoder in (("fp32", fp32), ("int8", int8)):
        queries, database = encoder.encode(smvs.queries.paths), encoder.encode(smvs.database.paths)
        scores, ids = search_segments(queries, [(database.bits, 0)], len(database), channels=50)
        matrix = np.empty(scores.shape, np.float64)
        np.put_along_axis(matrix, ids, scores.astype(np.float64), axis=1)
        # average precision per query (one relevant item each: reciprocal rank, ties counted against)
        per_query[name] = np.array([evaluate_scores(matrix[i : i + 1], relevant[i : i + 1])["map"]
                                    for i in range(len(matrix))])
    difference = per_query["int8"] - per_query["fp32"]
    rng = np.random.default_rng(0)
    boot = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(2000)]
    print(f"SMVS ({len(relevant)} queries, 50 channels) mAP: fp32 {per_query['fp32'].mean():.4f}, "
          f"int8 {per_query['int8'].mean():.4f}; difference {difference.mean():+.4f} "
          f"(paired bootstrap 95% interval {np.percentile(boot, 2.5):+.4f} .. {np.percentile(boot, 97.5):+.4f})")

    side = 224  # the sets' images are under twice 448 on a side: draft decoding only applies at smaller sides here
    plain = CrossLayerEncoder(side=side, threads=args.threads, fit_images=len(train)).fit(train)
    drafted = CrossLayerEncoder(side=side, draft=True, threads=args.threads)
    drafted.pca_ = plain.pca_  # the same encoder but for the decode
    photos = smvs.queries.paths[:third]  # phone photos of 640 x 480 (the database scans are under 448 on a side)
    agree = (drafted.encode(photos).signs() == plain.encode(photos).signs()).mean(axis=(1, 2))
    print(f"draft vs full decode, smvs queries at side {side} ({len(photos)} images, 640 x 480 decoded at 320 x 240): "
          f"sign agreement median {np.median(agree):.4f}, min {agree.min():.4f}")
    return 0


# ---- quality of a precision on whole sets, against fp32 indexes made with the same PCA ------------------------------

QUALITY_SETS = ("smvs-queries", "smvs-database", "scene15", "cub100")


def _set_codes(index, paths):
    """The codes of `paths` in an open image index, in that order (one set in memory at a time: the machine is
    shared, and both precisions' sets together would take ~2 GB)."""
    return index.codes.get(index.ids_of(paths))


def _absolute(path) -> str:
    """A path as an image index records it (absolute, normalised)."""
    return os.path.normpath(os.path.abspath(str(path)))


def _mcnemar(right_a, right_b) -> float:
    """Exact two-sided McNemar p-value of paired right/wrong outcomes (binomial test of the discordant pairs)."""
    from scipy.stats import binomtest

    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _bootstrap(difference, draws=4000, seed=0):
    rng = np.random.default_rng(seed)
    means = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(draws)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare_indexes(args) -> int:
    """Quality of a candidate precision against fp32 on whole sets, each encoded into an image index per set
    (QUALITY_SETS) with the SAME PCA under --reference and --candidate (whose images may be a subset): sign agreement
    of every image, cub100 and scene15 accuracy of crosslayer-sign (linear SVM on the popcount Gram, C by 3-fold CV:
    `crosslayer.eval.svm`) with McNemar's test on the paired test predictions, SMVS mAP (queries vs references + every
    cub100 and scene15 image as distractors; masked search with 50 and all channels) with a paired bootstrap."""
    from crosslayer.retrieval.image_index import ImageIndex

    print(f"reference {args.reference}, candidate {args.candidate}; load average {os.getloadavg()[0]:.1f}")
    with contextlib.ExitStack() as stack:
        # each opened once: a segment's checksum is verified the first time it is read
        roots = {which: {name: stack.enter_context(ImageIndex.open(Path(root) / name)) for name in QUALITY_SETS}
                 for which, root in (("fp32", args.reference), ("candidate", args.candidate))}
        return _compare(args, roots)


def _compare(args, roots) -> int:
    from crosslayer.eval.gram import codes_gram
    from crosslayer.eval.svm import train_and_test
    from crosslayer.retrieval.datasets import read_retrieval_set
    from crosslayer.retrieval.metrics import evaluate_scores, relevance_matrix
    from crosslayer.search import search_segments

    paths = {name: roots["candidate"][name].paths() for name in QUALITY_SETS}  # the candidate's may be a subset
    for name in QUALITY_SETS:
        agreement = []
        for i in range(0, len(paths[name]), 256):
            chunk = paths[name][i : i + 256]
            reference, candidate = (_set_codes(roots[which][name], chunk) for which in ("fp32", "candidate"))
            # a sign differs where either bit plane (positive, negative) differs: counted on the packed bits
            differ = np.bitwise_or.reduce(reference.bits ^ candidate.bits, axis=2)
            agreement.append(1 - np.bitwise_count(differ).sum(axis=(1, 2)) / (reference.Dk * reference.Dt))
        agreement = np.concatenate(agreement)
        print(f"| sign agreement, {name} ({len(agreement)} images) | median {np.median(agreement):.4f}, mean "
              f"{agreement.mean():.4f}, min {agreement.min():.4f} |", flush=True)

    smvs = read_retrieval_set(data_set(args.data, "smvs"))
    item_of = dict(zip(map(_absolute, smvs.database.paths), smvs.database.items))
    query_item = dict(zip(map(_absolute, smvs.queries.paths), smvs.queries.items))
    searched = ("smvs-database", "scene15", "cub100")
    database_items = [item_of[p] for p in paths["smvs-database"]]
    total = sum(len(paths[name]) for name in searched)
    relevant = relevance_matrix([query_item[p] for p in paths["smvs-queries"]],
                                database_items + [None] * (total - len(database_items)))
    per_query = {}
    for which, root in roots.items():
        queries = _set_codes(root["smvs-queries"], paths["smvs-queries"])
        for channels in (50, None):
            # exact ternary dot products: one set at a time, the score columns side by side
            matrix, base = np.empty((len(queries), total), np.float64), 0
            for name in searched:
                database = _set_codes(root[name], paths[name])
                scores, ids = search_segments(queries, [(database.bits, base)], len(database), channels)
                np.put_along_axis(matrix, ids, scores.astype(np.float64), axis=1)
                base += len(database)
                del database
            per_query[which, channels] = np.array([evaluate_scores(matrix[i : i + 1], relevant[i : i + 1])["map"]
                                                   for i in range(len(matrix))])
    for channels in (50, None):
        fp32, candidate = per_query["fp32", channels], per_query["candidate", channels]
        low, high = _bootstrap(candidate - fp32)
        print(f"| SMVS mAP, {channels or 'all'} channels ({len(relevant)} queries, {total} database images) | fp32 "
              f"{fp32.mean():.4f}, candidate {candidate.mean():.4f}: {(candidate - fp32).mean():+.4f}, paired "
              f"bootstrap 95% {low:+.4f} .. {high:+.4f} |", flush=True)

    for name in ("scene15", "cub100"):
        with open(data_set(args.data, f"{name}/manifest.csv"), newline="") as handle:
            rows = {_absolute(data_set(args.data, f"{name}/{row['path']}")): row for row in csv.DictReader(handle)}
        labels = np.array([rows[p]["label"] for p in paths[name]])
        train = np.array([rows[p]["split"] == "train" for p in paths[name]])
        train_index, test_index = np.flatnonzero(train), np.flatnonzero(~train)
        right = {}
        for which, root in roots.items():
            set_codes = _set_codes(root[name], paths[name])
            gram = codes_gram(set_codes.bits, set_codes.Dt, train_index)
            del set_codes
            result = train_and_test(gram[train_index], labels[train_index], gram[test_index], labels[test_index])
            right[which] = np.asarray(result["predictions"]) == labels[test_index]
            print(f"  {name} {which}: accuracy {result['accuracy']:.4f} (C {result['C']:g})", flush=True)
        difference = right["candidate"].mean() - right["fp32"].mean()
        print(f"| {name} crosslayer-sign accuracy ({len(test_index)} test images) | fp32 {right['fp32'].mean():.4f}, "
              f"candidate {right['candidate'].mean():.4f}: {difference:+.4f}; McNemar p = "
              f"{_mcnemar(right['candidate'], right['fp32']):.3f}; bootstrap 95% "
              f"{'%+.4f .. %+.4f' % _bootstrap(right['candidate'].astype(float) - right['fp32'])} |", flush=True)
    return 0


# ---- what the pooling costs at bf16: in OpenVINO's graph vs the fp32 kernel on the graph's maps ----------------------

def pooling_cost(args) -> int:
    """In one process, interleaved, on ready batches: the bare bf16 request alone, followed by the fp32 kernel's pooling
    of its maps, and with the pooling appended to its graph then finished by the core, for 1 and 2 OpenVINO streams;
    wall and process CPU seconds an image (min and median of --rounds), the codes compacted as `encode` does. The
    minimum is the least disturbed round on a shared machine."""
    from crosslayer.backbones.runtime import CHANNEL_MEAN, POOLED, GraphPooling, OpenVinoBackbone
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.pooling import finish_pooled, pool

    if args.encoder_file:
        encoder = CrossLayerEncoder.load(args.encoder_file, threads=args.threads)
    else:
        train = _split(args.data, "cub100", "train", args.fit, 29)
        encoder = CrossLayerEncoder(side=args.side, threads=args.threads, fit_images=args.fit).fit(train)
    model, (local, guidance) = encoder.backbone_model(), encoder.layers
    paths = _paths(args)
    images = np.stack([encoder._prepare(p) for p in paths])
    batch, threads = args.batch_size, args.threads
    graph = GraphPooling(local, guidance, *encoder.pca_)

    def steps(streams):
        bare = OpenVinoBackbone(model, threads=threads, streams=streams)
        pooled = OpenVinoBackbone(model, threads=threads, streams=streams, pooling=graph)

        def run(runner, finish):
            def go():
                for i in range(0, len(images), batch):
                    finish(runner.run(images[i : i + batch]))
            return go

        return {f"s{streams} bare": run(bare, lambda out: None),
                f"s{streams} + fp32 kernel": run(bare, lambda out: pool(out[local], out[guidance], encoder.pca_, "codes",
                                                                        num_threads=threads).compact(lossy=True)),
                f"s{streams} + graph": run(pooled, lambda out: finish_pooled(out[POOLED], out[CHANNEL_MEAN], "codes",
                                                                             num_threads=threads,
                                                                             check_finite=False).compact(lossy=True))}

    variants = {**steps(1), **steps(2)}
    for go in variants.values():
        go()  # warm-up
    wall, cpu, loads = {k: [] for k in variants}, {k: [] for k in variants}, [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, go in variants.items():
            begin, begin_cpu = time.perf_counter(), time.process_time()
            go()
            wall[name].append((time.perf_counter() - begin) / len(images))
            cpu[name].append((time.process_time() - begin_cpu) / len(images))
        loads.append(os.getloadavg()[0])
    print(f"{len(images)} CUB images, side {args.side}, batch {batch}, {threads} threads, {args.rounds} interleaved "
          f"rounds; load average {min(loads):.1f}-{max(loads):.1f}")
    print("| step | wall ms an image (min, median) | core-ms an image (min, median) | core-ms over bare (median) |")
    print("|---|---:|---:|---:|")
    for name in variants:
        bare = np.median(cpu[name.split(" ")[0] + " bare"])
        print(f"| {name} | {1000 * min(wall[name]):.2f}, {1000 * np.median(wall[name]):.2f} | {1000 * min(cpu[name]):.2f}, "
              f"{1000 * np.median(cpu[name]):.2f} | {1000 * (np.median(cpu[name]) - bare):+.2f} |")
    return 0


# ---- quality of the pooling in OpenVINO's graph (bf16) ----------------------------------------------------------------

def _average_precisions(queries, database, relevant, channels=None) -> np.ndarray:
    """Average precision of each query (exact ternary scores, `channels` masked channels or all)."""
    from crosslayer.retrieval.metrics import evaluate_scores
    from crosslayer.search import search_segments

    scores, ids = search_segments(queries, [(database.bits, 0)], len(database), channels)
    matrix = np.empty(scores.shape, np.float64)
    np.put_along_axis(matrix, ids, scores.astype(np.float64), axis=1)
    return np.array([evaluate_scores(matrix[i : i + 1], relevant[i : i + 1])["map"] for i in range(len(matrix))])


def quality_graph_pooling(args) -> int:
    """bf16 codes pooled in OpenVINO's graph against (a) the same encoder's bf16 maps pooled by the fp32 kernel and
    (b) fp32 codes, all with the PCA of --encoder-file; fp32 codes are read from the image indexes under --reference
    (made with that encoder). Sign agreement on every SMVS query and reference and --quality-images test images of
    cub100 and scene15 each; SMVS mAP (queries vs references, all channels) with paired bootstrap intervals."""
    from crosslayer.codes import Codes
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.eval.stats import paired_bootstrap
    from crosslayer.retrieval.datasets import read_retrieval_set
    from crosslayer.retrieval.image_index import ImageIndex
    from crosslayer.retrieval.metrics import relevance_matrix

    fp32 = CrossLayerEncoder.load(args.encoder_file, threads=args.threads, batch_size=args.batch_size,
                                  decode_workers=args.decode_workers)
    bf16 = fp32.with_precision("bf16")
    print(f"encoder {args.encoder_file} (pca_dim {fp32.pca_dim}, Dk {fp32.Dk}, Dt {fp32.Dt}); fp32 codes from "
          f"{args.reference}; load average {os.getloadavg()[0]:.1f}")
    codes = {}
    for name in ("smvs-queries", "smvs-database", "cub100", "scene15"):
        with ImageIndex.open(Path(args.reference) / name) as index:
            paths = index.paths()
            if name in ("cub100", "scene15"):
                with open(data_set(args.data, f"{name}/manifest.csv"), newline="") as handle:
                    test = {_absolute(data_set(args.data, f"{name}/{row['path']}")) for row in csv.DictReader(handle)
                            if row["split"] == "test"}
                paths = [p for p in paths if p in test]
                paths = paths[:: max(1, len(paths) // args.quality_images)][: args.quality_images]
            reference = _set_codes(index, paths)
        graph = bf16.encode(paths)
        kernel = Codes.concatenate([bf16.pool_batch(batch.outputs, "codes") for batch in bf16.activations(paths)])
        codes[name] = {"paths": paths, "fp32": reference, "graph": graph, "kernel": kernel}
        for other in ("kernel", "fp32"):
            agreement = (graph.signs() == codes[name][other].signs()).mean(axis=(1, 2))
            print(f"| sign agreement, {name} ({len(paths)} images), graph-pooled vs {other} | median "
                  f"{np.median(agreement):.4f}, mean {agreement.mean():.4f}, min {agreement.min():.4f} |", flush=True)
        agreement = (kernel.signs() == codes[name]["fp32"].signs()).mean(axis=(1, 2))
        print(f"| sign agreement, {name}, kernel-pooled bf16 vs fp32 | median {np.median(agreement):.4f}, mean "
              f"{agreement.mean():.4f}, min {agreement.min():.4f} |", flush=True)

    smvs = read_retrieval_set(data_set(args.data, "smvs"))
    item_of = dict(zip(map(_absolute, smvs.database.paths), smvs.database.items))
    item_of.update(zip(map(_absolute, smvs.queries.paths), smvs.queries.items))
    relevant = relevance_matrix([item_of[p] for p in codes["smvs-queries"]["paths"]],
                                [item_of[p] for p in codes["smvs-database"]["paths"]])
    for channels in (None, 50):  # 50: the strongest channels by the channel means, which the graph computes too
        precisions = {which: _average_precisions(codes["smvs-queries"][which], codes["smvs-database"][which],
                                                 relevant, channels) for which in ("fp32", "kernel", "graph")}
        print(f"SMVS mAP, {channels or 'all'} channels ({relevant.shape[0]} queries vs {relevant.shape[1]} "
              f"references): " + ", ".join(f"{which} {ap.mean():.4f}" for which, ap in precisions.items()))
        for a, b in (("graph", "fp32"), ("graph", "kernel"), ("kernel", "fp32")):
            result = paired_bootstrap(precisions[a], precisions[b])
            print(f"| SMVS mAP, {channels or 'all'} channels, {a} - {b} | {result['difference']:+.4f} (paired "
                  f"bootstrap 95% {result['low']:+.4f} .. {result['high']:+.4f}) |")
    return 0


def quality_requests(args) -> int:
    """bf16 codes as the pipeline makes them since run P (one image a request, the model compiled for that static
    shape) against bf16 codes made as before (requests of 8 images, the model as exported) and against fp32 codes,
    all with one PCA (fitted on 100 cub100 + 100 scene15 train images): sign agreement on every SMVS query and
    reference and --quality-images test images of cub100 and scene15 each; SMVS mAP (queries vs references, all
    and 50 channels) with paired bootstrap intervals."""
    from crosslayer.backbones import runtime
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.eval.stats import paired_bootstrap
    from crosslayer.retrieval.datasets import read_retrieval_set
    from crosslayer.retrieval.metrics import relevance_matrix

    train = _split(args.data, "cub100", "train", 100, 29) + _split(args.data, "scene15", "train", 100, 15)
    settings = dict(side=args.side, threads=args.threads, batch_size=args.batch_size, fit_images=len(train),
                    decode_workers=args.decode_workers)
    fp32 = CrossLayerEncoder(**settings).fit(train)
    now, before = fp32.with_precision("bf16"), fp32.with_precision("bf16")

    before._pooling_backbone().static_shapes = False  # the model compiled once as exported, as before run P
    smvs = read_retrieval_set(data_set(args.data, "smvs"))
    sets = {"smvs-queries": list(smvs.queries.paths), "smvs-database": list(smvs.database.paths),
            "cub100": _split(args.data, "cub100", "test", args.quality_images, 9),
            "scene15": _split(args.data, "scene15", "test", args.quality_images, 9)}
    print(f"load average {os.getloadavg()[0]:.1f}; side {args.side}; PCA on {len(train)} train images")
    codes = {}
    for name, paths in sets.items():
        runtime.IMAGES_PER_REQUEST = 8
        old = before.encode(paths)
        runtime.IMAGES_PER_REQUEST = 1
        codes[name] = {"fp32": fp32.encode(paths), "before": old, "now": now.encode(paths)}
        for a, b in (("now", "before"), ("now", "fp32"), ("before", "fp32")):
            agreement = (codes[name][a].signs() == codes[name][b].signs()).mean(axis=(1, 2))
            print(f"| sign agreement, {name} ({len(paths)} images), bf16 {a} vs {b} | median {np.median(agreement):.4f}, "
                  f"mean {agreement.mean():.4f}, min {agreement.min():.4f} |", flush=True)
    relevant = relevance_matrix(smvs.queries.items, smvs.database.items)
    for channels in (None, 50):
        precisions = {which: _average_precisions(codes["smvs-queries"][which], codes["smvs-database"][which],
                                                 relevant, channels) for which in ("fp32", "before", "now")}
        print(f"SMVS mAP, {channels or 'all'} channels ({relevant.shape[0]} queries vs {relevant.shape[1]} "
              f"references): " + ", ".join(f"{which} {ap.mean():.4f}" for which, ap in precisions.items()))
        for a, b in (("now", "before"), ("now", "fp32")):
            result = paired_bootstrap(precisions[a], precisions[b])
            print(f"| SMVS mAP, {channels or 'all'} channels, {a} - {b} | {result['difference']:+.4f} (paired "
                  f"bootstrap 95% {result['low']:+.4f} .. {result['high']:+.4f}) |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--fit", type=int, default=48)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated; bf16 variants take options (see OPTION_LABELS), e.g. ov-bf16-s2-b32")
    parser.add_argument("--no-floor", action="store_true", help="skip the compute floor (FLOPs and GEMM rates)")
    parser.add_argument("--quality", action="store_true", help="measure sign agreement instead of speed")
    parser.add_argument("--quality-images", type=int, default=210)
    parser.add_argument("--which", default=None)
    parser.add_argument("--encoder", default=None)
    parser.add_argument("--encoder-int8", default=None)
    parser.add_argument("--codes", default=None)
    parser.add_argument("--reference", default=None, help="folder of fp32 image indexes, one per QUALITY_SETS")
    parser.add_argument("--candidate", default=None, help="folder of the candidate's image indexes (the same PCA)")
    parser.add_argument("--quality-graph-pooling", action="store_true",
                        help="bf16 pooled in OpenVINO's graph vs the fp32 kernel and fp32 codes (--reference, --encoder-file)")
    parser.add_argument("--encoder-file", default=None, help="the encoder the --reference indexes were made with")
    parser.add_argument("--quality-requests", action="store_true",
                        help="bf16 codes one image a request (static shapes) against requests of 8 and fp32")
    parser.add_argument("--pooling-cost", action="store_true",
                        help="cost of the bf16 pooling in OpenVINO's graph vs the fp32 kernel, in one process")
    args = parser.parse_args()
    if args.pooling_cost:
        return pooling_cost(args)
    if args.quality_requests:
        return quality_requests(args)
    if args.quality_graph_pooling:
        if not (args.reference and args.encoder_file):
            parser.error("--quality-graph-pooling needs --reference and --encoder-file")
        return quality_graph_pooling(args)
    if args.reference or args.candidate:
        if not (args.reference and args.candidate):
            parser.error("--reference and --candidate go together")
        return compare_indexes(args)
    if args.which:
        return _child(args)
    if args.quality:
        return quality(args)

    import numpy as np

    from crosslayer.codes import Codes
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.stage_times import STAGES

    variants = [v for v in args.variants.split(",") if v]
    bases = {v: parse_variant(v)[0] for v in variants}
    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    args.encoder, args.encoder_int8 = str(work / "fp32.xle"), str(work / "int8.xle")
    train = _split(args.data, "cub100", "train", args.fit, 29)
    for precision, path in (("fp32", args.encoder), ("int8", args.encoder_int8)):
        if precision == "int8" and "int8" not in {base.split("-")[-1] for base in bases.values()}:
            continue
        CrossLayerEncoder(side=args.side, threads=args.threads, fit_images=args.fit, precision=precision).fit(train).save(path)
    loads, runs = [os.getloadavg()[0]], {v: [] for v in variants}
    for round_ in range(args.rounds):
        for which in variants:
            command = [sys.executable, __file__, "--which", which, "--encoder", args.encoder, "--encoder-int8",
                       args.encoder_int8, "--codes", str(work / f"{which}.xlc"), "--data", str(args.data),
                       "--images", str(args.images), "--side", str(args.side), "--threads", str(args.threads),
                       "--decode-workers", str(args.decode_workers), "--batch-size", str(args.batch_size)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            runs[which].append(json.loads(out))
        loads.append(os.getloadavg()[0])

    codes = {v: Codes.load(work / f"{v}.xlc") for v in variants if (work / f"{v}.xlc").exists()}
    print(f"{args.images} CUB images, side {args.side}, MobileNetV2 features.17 x features.18, {args.threads} "
          f"threads, {args.decode_workers} decode workers, batch {args.batch_size}, {args.rounds} interleaved rounds "
          f"(median); load average {min(loads):.1f}-{max(loads):.1f}")
    if "fp32" in codes and "torch" in codes:
        mismatch = float((codes["fp32"].signs() != codes["torch"].signs()).mean())
        assert len(codes["fp32"]) == args.images and mismatch < 1e-4, f"codes differ: {mismatch:.2e} of signs"
        print(f"check: pipeline fp32 codes agree with the torch script's on {100 * (1 - mismatch):.4f}% of signs")
    if "fp32" in codes and "before" in codes:
        assert np.array_equal(codes["fp32"].signs(), codes["before"].signs()), "non-spinning session changed codes"
        print("check: pipeline fp32 codes identical to the pipeline as before")
    pipelines_bf16 = [v for v in codes if bases[v] == "bf16"]
    kernel_pooled = [v for v in pipelines_bf16 if parse_variant(v)[1]["kernelpool"]]
    for which in pipelines_bf16:
        if "fp32" in codes:
            agreement = (codes[which].signs() == codes["fp32"].signs()).mean(axis=(1, 2))
            assert agreement.min() > 0.9, f"{which} codes: {agreement.min():.3f} of signs agree with fp32 (same PCA)"
            print(f"check: {which} codes agree with fp32 codes (same PCA) on a median {np.median(agreement):.4f}, min "
                  f"{agreement.min():.4f} of signs per image")
        if kernel_pooled and which not in kernel_pooled:
            # the same bf16 maps (up to OpenVINO's own run-to-run differences), pooled in bf16 vs by the fp32 kernel
            agreement = (codes[which].signs() == codes[kernel_pooled[0]].signs()).mean(axis=(1, 2))
            assert agreement.min() > 0.98, f"{which}: {agreement.min():.4f} of signs agree with {kernel_pooled[0]}"
            print(f"check: {which} codes (pooled in the graph) agree with {kernel_pooled[0]}'s on a median "
                  f"{np.median(agreement):.4f}, min {agreement.min():.4f} of signs per image")

    def median(which, key="seconds"):
        return float(np.median([r[key] for r in runs[which]]))

    def ceiling_of(which):
        """The fastest bare session of a pipeline's precision in this run (bf16: over every OpenVINO configuration)."""
        bare = {"fp32": "ort-fp32", "before": "ort-fp32", "bf16": "ov-bf16", "int8": "ort-int8"}.get(bases[which])
        candidates = [v for v in variants if bases[v] == bare]
        return min(candidates, key=median) if candidates else None

    print("\n| variant | images/s | x bare ort fp32 | x own ceiling | core-ms an image | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for which in variants:
        rate = args.images / median(which)
        versus = f"{median('ort-fp32') / median(which):.2f}" if "ort-fp32" in runs else "-"
        ceiling = ceiling_of(which)
        own = f"{median(ceiling) / median(which):.2f}" if ceiling else "-"
        cpu = f"{1000 * median(which, 'cpu_seconds') / args.images:.1f}" if "cpu_seconds" in runs[which][0] else "-"
        rss = max(r["peak_rss_mb"] for r in runs[which])
        print(f"| {label(which)} | {rate:.2f} | {versus} | {own} | {cpu} | {rss:.0f} |")
    ceilings = {ceiling_of(v) for v in variants if bases[v] == "bf16"} - {None}
    if ceilings:
        print(f"(bf16 ceiling: {', '.join(sorted(ceilings))}, the fastest bare OpenVINO configuration of this run)")

    staged = [v for v in variants if "stages" in runs[v][0]]
    if staged:
        print(f"\nper-stage seconds (median round; decode/resize/normalise are decode-worker time, overlapped)")
        print("| variant | wall | " + " | ".join(STAGES[:-1]) + " |")
        print("|---|---:|" + "---:|" * (len(STAGES) - 1))
        for which in staged:
            middle = sorted(runs[which], key=lambda r: r["seconds"])[len(runs[which]) // 2]
            print(f"| {which} | {middle['seconds']:.2f} | " + " | ".join(f"{middle['stages'][s]:.2f}" for s in STAGES[:-1]) + " |")

    if args.no_floor:
        return 0
    flops = model_flops(args.side)
    rates = gemm_rates(args.threads)
    print(f"\ncompute floor: {flops / 1e9:.2f} GFLOP per image at side {args.side}; measured GEMM (1024^3, "
          f"{args.threads} threads): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
    for name, rate in rates.items():
        print(f"  {name}: floor {rate * 1e9 / flops:.1f} images/s at the GEMM rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
