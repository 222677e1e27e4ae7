"""Images/s of the encoder exported as one ONNX model (standard ops; custom op when its library is built) vs
`CrossLayerEncoder.encode`, same images, same threads, same run.

Decoding is excluded from both: the images are decoded and resized once (`CrossLayerEncoder.load_pixels`), then the
ONNX model gets those uint8 pixels and `encode` gets the same arrays (it still normalises them, in its decode
threads, as the graph does inside). Before timing, each model's codes are checked against `encode`'s: a sign may
differ only where the float64 pooled value is within the float32 rounding bound of zero
(`reference.float32_pool_bound`), and channel means within 2 float32 ulps. The paths are timed in interleaved
rounds (each round runs every path once) and the median round time of each is reported: a load change on the shared
machine then hits every path alike. `--write` replaces only the generated part of benchmarks/results/embed.md
(between its RESULTS_BEGIN/RESULTS_END markers), keeping the hand-written notes around it. Usage:
    PYTHONPATH=python python benchmarks/bench_embed.py [--data ../shared/data] [--images 48] [--side 448] [--write]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "benchmarks" / "results" / "embed.md"
RESULTS_BEGIN = "<!-- RESULTS_BEGIN: written by bench_embed.py --write; edit the notes outside these markers -->"
RESULTS_END = "<!-- RESULTS_END -->"


def _replace_results(document: str, generated: str) -> str:
    """`document` with the text between its markers replaced by `generated` (markers appended when absent)."""
    block = f"{RESULTS_BEGIN}\n{generated}\n{RESULTS_END}"
    if RESULTS_BEGIN in document and RESULTS_END in document:
        head, rest = document.split(RESULTS_BEGIN, 1)
        return head + block + rest.split(RESULTS_END, 1)[1]
    return document.rstrip("\n") + "\n\n" + block + "\n"


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
        expected = codes[i : i + 1].signs()
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
    parser.add_argument("--repeat", type=int, default=7,
                        help="interleaved timing rounds; each path's median round is reported (default 7)")
    parser.add_argument("--write", action="store_true", help="write the results into --out")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file --write updates between its markers (default benchmarks/results/embed.md)")
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
    try:
        forms["custom"] = crosslayer.ort_ops_library()
    except crosslayer.NotBuiltError as exc:
        print(f"custom: skipped ({exc})")

    with tempfile.TemporaryDirectory() as folder:
        sessions = {}
        for ops, lib in forms.items():
            model = export_encoder_onnx(encoder, Path(folder) / f"encoder-{ops}.onnx", ops=ops)
            sessions[ops] = _session(model, args.threads, lib)
            bits, channel_mean = _run_model(sessions[ops], pixels, args.batch_size)
            print(f"{ops}: {_check(encoder, images, codes, bits, channel_mean)}")

        # interleaved rounds, median per path: the machine is shared, so a load change hits every path alike
        timed = {"CrossLayerEncoder.encode": lambda: encoder.encode(images)}
        for ops, session in sessions.items():
            timed[f"encoder.onnx ({ops} ops)"] = lambda session=session: _run_model(session, pixels, args.batch_size)
        rounds = {name: [] for name in timed}
        load_start = os.getloadavg()
        for _ in range(args.repeat):
            for name, fn in timed.items():
                start = time.perf_counter()
                fn()
                rounds[name].append(time.perf_counter() - start)
        load_end = os.getloadavg()
        median = {name: statistics.median(times) for name, times in rounds.items()}
        best = {name: min(times) for name, times in rounds.items()}
        rows = [(name, median[name], median["CrossLayerEncoder.encode"] / median[name],
                 best["CrossLayerEncoder.encode"] / best[name]) for name in timed]

    lines = [
        f"{len(paths)} CUB images at side {args.side}, mobilenet_v2 default pair, full PCA (Dt=320), batch "
        f"{args.batch_size}, {args.threads} threads everywhere (onnxruntime intra-op = encode's threads), "
        f"{args.repeat} interleaved rounds, median reported; decoding excluded from both (pre-loaded pixels). "
        f"Load average (1/5/15 min) {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} before timing, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} after, on {os.cpu_count()} cores.",
        "",
        "| path | images/s (median) | speed vs encode (median) | speed vs encode (best rounds) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {len(paths) / seconds:.2f} | {ratio:.2f}x | {best_ratio:.2f}x |"
              for name, seconds, ratio, best_ratio in rows]
    lines += ["", "Round times (s, in run order): the spread is the machine's load, not the paths."]
    lines += [f"- {name}: " + " ".join(f"{t:.2f}" for t in times) for name, times in rounds.items()]
    text = "\n".join(lines)
    print(text)
    if args.write:
        title = "# Encoder as one ONNX model vs CrossLayerEncoder.encode\n"
        document = args.out.read_text() if args.out.exists() else title
        command = f"`PYTHONPATH=python python benchmarks/bench_embed.py --data {args.data} --write`\n\n"
        from crosslayer._atomic import atomic_write

        with atomic_write(args.out, "w") as handle:
            handle.write(_replace_results(document, command + text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
