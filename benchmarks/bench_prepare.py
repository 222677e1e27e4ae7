"""Image preparation before and after the fused kernel (issue 13, part A), side by side in one run.

Per image (one thread): decode (Pillow), then the old preparation — Pillow's BILINEAR resize, numpy's normalisation
and the image's share of np.stack into a batch — against the core's fused kernel writing the network input straight
into its row of a batch (crosslayer/prepare_image.h), on its AVX-512 path and on its scalar path. Checked first: the
fused kernel's network inputs equal the old ones bit for bit on every image, for every resize policy.

--pipeline: CrossLayerEncoder.encode end to end on the same images (a fitted encoder file, e.g. the shared
mnv2-f17f18.xle), the old preparation (per-image arrays, np.stack) against the new (rows of rotating batch buffers),
with 1 and 2 decode workers, in interleaved rounds; images/s, per-stage seconds of the median round. Checked first:
the codes of old and new are identical.

    PYTHONPATH=python python benchmarks/bench_prepare.py --data ROOT [--images 64] [--rounds 3] [--side 448]
    PYTHONPATH=python python benchmarks/bench_prepare.py --data ROOT --pipeline --encoder FILE.xle [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

from crosslayer import reference  # noqa: E402
from crosslayer.images import RESIZE_POLICIES, load_image, normalize, resize_normalize  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the backbones use


def cub_paths(root, count):
    with open(data_set(root, "cub100/manifest.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [str(data_set(root, f"cub100/{row['path']}")) for row in rows[:count]]


def old_prepare(rgb, side, policy="square"):
    """As images.prepare was before the kernel: Pillow resize, then numpy normalisation, one array an image."""
    return normalize(reference.pillow_resize(rgb, side, policy), MEAN, STD)


def supported_paths():
    """The kernel's implementations this CPU runs (avx512 is refused where the CPU lacks it)."""
    from crosslayer.errors import UsageError

    paths = []
    for path in ("avx512", "scalar"):
        try:
            resize_normalize(np.zeros((1, 1, 3), np.uint8), 1, "square", MEAN, STD, path=path)
            paths.append(path)
        except UsageError:
            pass
    return paths


def check_exact(decoded, side):
    for policy in RESIZE_POLICIES:
        for rgb in decoded:
            for path in supported_paths():
                new = resize_normalize(rgb, side, policy, MEAN, STD, path=path)
                assert np.array_equal(new.view(np.uint32), old_prepare(rgb, side, policy).view(np.uint32)), policy
    print(f"check: fused kernel == Pillow resize + numpy normalise, bit for bit, {len(decoded)} images x "
          f"{len(RESIZE_POLICIES)} policies ({' and '.join(supported_paths())} paths)")


def per_image(args):
    paths = cub_paths(args.data, args.images)
    decoded = [load_image(path) for path in paths]
    check_exact(decoded, args.side)
    batch = np.empty((len(decoded), 3, args.side, args.side), np.float32)

    def time_decode():
        for path in paths:
            load_image(path)

    def time_old_resize():
        return [reference.pillow_resize(rgb, args.side) for rgb in decoded]

    resized = time_old_resize()

    def time_old_normalise():
        return [normalize(image, MEAN, STD) for image in resized]

    inputs = time_old_normalise()

    def time_old_stack():  # in batches of 16, as the pipeline stacked them
        for begin in range(0, len(inputs), 16):
            np.stack(inputs[begin : begin + 16])

    def kernel(path):
        def run():
            for i, rgb in enumerate(decoded):
                resize_normalize(rgb, args.side, "square", MEAN, STD, out=batch[i], path=path)
        return run

    stages = {"decode": time_decode, "old resize (Pillow)": time_old_resize, "old normalise (numpy)": time_old_normalise,
              "old np.stack (batches of 16)": time_old_stack}
    for path in supported_paths():
        stages[f"new fused kernel, {path}"] = kernel(path)
    seconds = {name: [] for name in stages}
    for _ in range(args.rounds):  # interleaved: every stage once a round
        for name, run in stages.items():
            begin = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - begin)
    ms = {name: 1e3 * statistics.median(values) / len(paths) for name, values in seconds.items()}
    old = ms["old resize (Pillow)"] + ms["old normalise (numpy)"] + ms["old np.stack (batches of 16)"]
    print(f"\n{len(paths)} CUB images, side {args.side}, one thread, median of {args.rounds} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| stage | ms an image |\n|---|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} |")
    print(f"| old resize + normalise + stack | {old:.3f} |")
    for path in supported_paths():
        new = ms[f"new fused kernel, {path}"]
        print(f"\nold / new ({path}): {old / new:.1f}x less time after decoding; decode + preparation "
              f"{ms['decode'] + old:.3f} -> {ms['decode'] + new:.3f} ms an image "
              f"({(ms['decode'] + old) / (ms['decode'] + new):.2f}x)")


def pipeline(args):
    import crosslayer.encoder as encoder_module
    from crosslayer import batches
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.stage_times import STAGES, StageTimes

    paths = cub_paths(args.data, args.images)
    encoder = CrossLayerEncoder.load(args.encoder, threads=args.threads)
    new_stream = encoder_module.stream_batches

    def old_stream(sources, prepare, run, batch_size, decode_workers=2, on_error="raise", stage_times=None,
                   input_shape=None, buffers=None, start=None):
        def prepare_old(source):  # with the stages images.prepare recorded then
            begin = time.perf_counter()
            rgb = load_image(source)
            decoded = time.perf_counter()
            resized = reference.pillow_resize(rgb, encoder.side, encoder.policy)
            scaled = time.perf_counter()
            network_input = normalize(resized, encoder.spec.mean, encoder.spec.std)
            if stage_times is not None:
                stage_times.add("decode", decoded - begin)
                stage_times.add("resize", scaled - decoded)
                stage_times.add("normalise", time.perf_counter() - scaled)
            return network_input
        return batches.stream_batches(sources, prepare_old, run, batch_size, decode_workers, on_error, stage_times)

    def encode(variant, workers):
        encoder_module.stream_batches = old_stream if variant == "old" else new_stream
        encoder.decode_workers = workers
        encoder.stage_times_ = StageTimes()
        begin = time.perf_counter()
        codes = encoder.encode(paths)
        return codes, time.perf_counter() - begin, encoder.stage_times_.seconds()

    try:
        encode("new", 2)  # warm-up: the backbone session
        old_codes, new_codes = encode("old", 2)[0], encode("new", 2)[0]
        assert np.array_equal(old_codes.bits, new_codes.bits) and np.array_equal(old_codes.channel_mean,
                                                                                 new_codes.channel_mean)
        print(f"check: codes of the old and the new preparation identical ({len(paths)} images)")
        variants = [(variant, workers) for workers in (2, 1) for variant in ("old", "new")]
        runs = {key: [] for key in variants}
        for _ in range(args.rounds):
            for key in variants:
                runs[key].append(encode(*key)[1:])
    finally:
        encoder_module.stream_batches = new_stream
    print(f"\nCrossLayerEncoder.encode, {len(paths)} CUB images, side {encoder.side}, {args.threads} inference threads, "
          f"batch {encoder.batch_size}, median of {args.rounds} interleaved rounds, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    shown = [stage for stage in STAGES if stage not in ("writing",)]
    print("| preparation | decode workers | images/s | wall s | " + " | ".join(shown) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(shown))
    rates = {}
    for key, results in runs.items():
        wall, stages = sorted(results, key=lambda result: result[0])[len(results) // 2]
        rates[key] = len(paths) / wall
        print(f"| {key[0]} | {key[1]} | {rates[key]:.2f} | {wall:.2f} | "
              + " | ".join(f"{stages[stage]:.2f}" for stage in shown) + " |")
    for workers in (2, 1):
        print(f"new / old with {workers} decode worker(s): {rates[('new', workers)] / rates[('old', workers)]:.2f}x")
    print(f"new, 1 worker / new, 2 workers: {rates[('new', 1)] / rates[('new', 2)]:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--pipeline", action="store_true", help="time CrossLayerEncoder.encode end to end")
    parser.add_argument("--encoder", default=None, help="a fitted encoder file (--pipeline)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.pipeline:
        if not args.encoder:
            parser.error("--pipeline needs --encoder FILE.xle")
        pipeline(args)
    else:
        per_image(args)


if __name__ == "__main__":
    main()
