"""Images/s of the encoder exported as one ONNX model (standard ops; custom op when its library is built) vs
`CrossLayerEncoder.encode`, same images, same threads, same run.

Decoding is excluded from both: the images are decoded and resized once (`CrossLayerEncoder.load_pixels`), then the
ONNX model gets those uint8 pixels and `encode` gets the same arrays (it still normalises them, in its decode
threads, as the graph does inside). Before timing, each model's codes are checked against `encode`'s: a sign may
differ only where the float64 pooled value is within the float32 rounding bound of zero
(`reference.float32_pool_bound`), and channel means within 2 float32 ulps. Usage:
    PYTHONPATH=python python benchmarks/bench_embed.py [--data ../shared/data] [--images 48] [--side 448] [--write]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]


def _paths(data: Path, count: int) -> list[Path]:
    with open(data / "cub100" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [data / "cub100" / row["path"] for row in rows[:count]]


def _session(path, threads: int, library=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_model(session, pixels: np.ndarray, batch_size: int):
    bits, means = [], []
    for start in range(0, len(pixels), batch_size):
        b, m = session.run(["bits", "channel_mean"], {"images": pixels[start : start + batch_size]})
        bits.append(b)
        means.append(m)
    return np.concatenate(bits), np.concatenate(means)


def _check(encoder, images, codes, bits, channel_mean) -> str:
    """Raises if a sign differs outside the float32 bound or a mean by more than 2 ulps; says how many differ."""
    from crosslayer import reference

    local, guidance = [], []
    for batch in encoder.activations(images):
        local.append(batch.outputs[encoder.layers[0]])
        guidance.append(batch.outputs[encoder.layers[1]])
    local, guidance = np.concatenate(local), np.concatenate(guidance)
    signs = reference.unpack_ternary(bits, encoder.Dt)
    differ = 0
    for i in range(len(images)):  # one image at a time: float64 P of a whole batch is large
        exact = reference.cross_layer_pool(local[i : i + 1], guidance[i : i + 1], encoder.pca_)
        bound = reference.float32_pool_bound(local[i : i + 1], guidance[i : i + 1], encoder.pca_)
        if reference.sign_violations(signs[i : i + 1], exact, bound):
            raise AssertionError(f"image {i}: a code sign differs from float64 outside the float32 bound")
        expected = reference.unpack_ternary(codes.bits[i : i + 1], encoder.Dt)
        differ += int(np.count_nonzero(signs[i : i + 1] != expected))
    ulps = np.abs(channel_mean - codes.channel_mean) / np.spacing(np.abs(codes.channel_mean))
    if not np.all(ulps <= 2):
        raise AssertionError(f"channel_mean differs by up to {ulps.max():.1f} ulps")
    return f"{differ} of {signs.size} signs differ from encode (all within the bound)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPOSITORY.parent / "shared" / "data",
                        help="folder of the evaluation sets (default: ../shared/data beside the repository)")
    parser.add_argument("--images", type=int, default=48, help="CUB images timed (default 48)")
    parser.add_argument("--fit", type=int, default=16, help="images the PCA is fitted on (default 16)")
    parser.add_argument("--side", type=int, default=448, help="encoder side (default 448)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every path (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per run (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each path, interleaved, best kept (default 5)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/embed.md")
    args = parser.parse_args(argv)
    if not (args.data / "cub100").is_dir():
        parser.error(f"--data: {args.data} holds no cub100/ (pass the folder of the evaluation sets)")

    import crosslayer
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.onnx_encoder import export_encoder_onnx

    paths = _paths(args.data, args.images)
    encoder = CrossLayerEncoder(side=args.side, threads=args.threads, batch_size=args.batch_size,
                                decode_workers=args.threads).fit(paths[: args.fit])
    pixels = encoder.load_pixels(paths)
    images = list(pixels)  # the same decoded, resized pixels for encode
    codes = encoder.encode(images)  # also warms the session up

    forms = {"standard": None}
    library_fn = getattr(crosslayer, "ort_ops_library", None)
    library = library_fn() if library_fn is not None else None
    if library is not None and Path(library).exists():
        forms["custom"] = library
    else:
        print("custom: skipped (crosslayer.ort_ops_library is missing or the library is not built)")

    with tempfile.TemporaryDirectory() as folder:
        sessions = {}
        for ops, lib in forms.items():
            model = export_encoder_onnx(encoder, Path(folder) / f"encoder-{ops}.onnx", ops=ops)
            sessions[ops] = _session(model, args.threads, lib)
            bits, channel_mean = _run_model(sessions[ops], pixels, args.batch_size)
            print(f"{ops}: {_check(encoder, images, codes, bits, channel_mean)}")

        # interleaved, best of `repeat` each: the machine is shared, so a load change hits every path alike
        timed = {"CrossLayerEncoder.encode": lambda: encoder.encode(images)}
        for ops, session in sessions.items():
            timed[f"encoder.onnx ({ops} ops)"] = lambda session=session: _run_model(session, pixels, args.batch_size)
        best = {name: float("inf") for name in timed}
        for _ in range(args.repeat):
            for name, fn in timed.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
        encode_s = best["CrossLayerEncoder.encode"]
        rows = [(name, seconds, encode_s / seconds) for name, seconds in best.items()]

    load = os.getloadavg()
    lines = [
        f"{len(paths)} CUB images at side {args.side}, mobilenet_v2 default pair, full PCA (Dt=320), batch "
        f"{args.batch_size}, {args.threads} threads, best of {args.repeat} interleaved runs; decoding excluded from both (pre-loaded "
        f"pixels). Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores.",
        "",
        "| path | images/s | speed vs encode |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {len(paths) / seconds:.2f} | {ratio:.2f}x |" for name, seconds, ratio in rows]
    text = "\n".join(lines)
    print(text)
    if args.write:
        out = REPOSITORY / "benchmarks" / "results" / "embed.md"
        out.write_text("# Encoder as one ONNX model vs CrossLayerEncoder.encode\n\n"
                       f"`PYTHONPATH=python python benchmarks/bench_embed.py --data {args.data} --write`\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
