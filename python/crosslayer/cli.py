"""The `crosslayer` command line. Each subcommand lives in its own function; `main` only dispatches."""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    import crosslayer

    for key, value in crosslayer.build_info().items():
        print(f"{key:>20}: {value}")
    return 0


def _cmd_demo(args) -> int:
    """Encodes synthetic activations of the MobileNetV2 layer pair and prints what came out."""
    import time

    import numpy as np

    import crosslayer
    from crosslayer import reference

    rng = np.random.default_rng(args.seed)
    n, dt, dk, side = args.images, 320, 1280, 14
    x_t = rng.standard_normal((n, dt, side, side), dtype=np.float32)
    a_t1 = np.maximum(rng.standard_normal((n, dk, side, side), dtype=np.float32), 0)
    pca = tuple(np.asarray(v, np.float32) for v in reference.pca_fit(reference.local_features(x_t[:2])))
    start = time.perf_counter()
    rep = crosslayer.pool(x_t, a_t1, pca)
    mid = time.perf_counter()
    codes = crosslayer.pool(x_t, a_t1, pca, output="codes")
    end = time.perf_counter()
    print(f"synthetic activations: {n} images, layer t {dt}x{side}x{side}, layer t+1 {dk}x{side}x{side}")
    print(f"float representation: {rep.shape} float32, {rep[0].nbytes / 1e6:.2f} MB/image, {mid - start:.3f} s")
    print(f"sign codes:           {codes!r}, {end - mid:.3f} s")
    print(f"compression: {rep[0].nbytes / (codes.nbytes / n):.1f}x")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosslayer", description="Cross-convolutional-layer pooling.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what the compiled core was built with")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="the built-in default job")
    demo.add_argument("--images", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    from crosslayer.retrieval.cli import register as register_retrieval

    register_retrieval(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        # bad input (arguments, files, index mismatch) gets one clear line, not a traceback
        parser.exit(2, f"crosslayer {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
