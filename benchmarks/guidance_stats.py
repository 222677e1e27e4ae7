"""How signed MobileNetV2's candidate guidance layers are, and what that does to cross-layer pooling (issue 12).

    PYTHONPATH=python python benchmarks/guidance_stats.py [--data ROOT] [--images 24]

On a seeded sample of training images of scene15 and cub100 (side 448), one backbone pass outputs every candidate
tap; per tap the share of negative values, per (local, guidance) pair:
  - cancellation: mean over images and guidance channels of |sum_i a_ik x_i| / sum_i |a_ik| |x_i| (x centred over the
    sample): 1 when every position adds in one direction, small when the positions' contributions cancel;
  - explained: the share of the guidance layer's variance a linear map of the local layer explains (least squares
    with intercept over every position of the sample): the block outputs are affine in their input up to one
    ReLU6 layer, and features.16 adds features.15 back (a residual), so there the guidance is mostly a linear
    function of the local features;
  - negative means: the share of guidance channels whose mean activation over an image is negative (the paper's
    channel rule, eq. 3, never picks those first).
Writes benchmarks/results/guidance-stats.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

from crosslayer._atomic import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TAPS = ("features.15", "features.16.conv.0", "features.16.conv.1", "features.16", "features.17.conv.0",
        "features.17.conv.1", "features.17", "features.18")
PAIRS = (("features.15", "features.16"), ("features.15", "features.16.conv.0"), ("features.15", "features.16.conv.1"),
         ("features.16", "features.17"), ("features.16", "features.17.conv.0"), ("features.16", "features.17.conv.1"),
         ("features.17", "features.18"))


def sample(set_path, count: int, seed: int = 0) -> list:
    from crosslayer.eval.manifest import load_manifest

    dataset = load_manifest(set_path)
    train = dataset.indices("train")
    return [dataset.paths[i] for i in np.sort(np.random.default_rng(seed).choice(train, count, replace=False))]


def maps_of(paths, side: int) -> dict:
    """tap -> (n, C, H, W) float32 of every tap over the images."""
    from crosslayer.encoder import CrossLayerEncoder, Pass

    encoder = CrossLayerEncoder("mobilenet_v2", side=side, batch_size=8)
    parts: dict = {tap: [] for tap in TAPS}
    for batch in encoder.activations(paths, pass_=Pass(taps=TAPS, embedding=False)):
        for tap in TAPS:
            parts[tap].append(batch.outputs[tap])
    return {tap: np.concatenate(parts[tap]) for tap in TAPS}


def positions(maps: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n, H*W, C) float64."""
    n, c = maps.shape[:2]
    return maps.reshape(n, c, -1).transpose(0, 2, 1).astype(np.float64)


def pair_stats(local_maps: np.ndarray, guidance_maps: np.ndarray) -> dict:
    x, a = positions(local_maps), positions(guidance_maps)
    x = x - x.reshape(-1, x.shape[2]).mean(axis=0)
    pooled = np.einsum("npk,npt->nkt", a, x)
    bound = np.einsum("npk,np->nk", np.abs(a), np.linalg.norm(x, axis=2))
    cancellation = np.linalg.norm(pooled, axis=2) / np.maximum(bound, 1e-30)
    flat_x = np.concatenate([x.reshape(-1, x.shape[2]), np.ones((x.shape[0] * x.shape[1], 1))], axis=1)
    flat_a = a.reshape(-1, a.shape[2])
    coefficients, *_ = np.linalg.lstsq(flat_x, flat_a, rcond=None)
    residual = flat_a - flat_x @ coefficients
    explained = 1.0 - residual.var(axis=0).sum() / flat_a.var(axis=0).sum()
    return {"Dt": int(x.shape[2]), "Dk": int(a.shape[2]), "dims": int(x.shape[2] * a.shape[2]),
            "cancellation": float(cancellation.mean()), "explained": float(explained),
            "negative_channel_means": float((a.mean(axis=1) < 0).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=24, help="training images sampled per set")
    parser.add_argument("--side", type=int, default=448)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = {"images_per_set": args.images, "side": args.side, "sets": {}}
    for name in ("scene15", "cub100"):
        maps = maps_of(sample(data_set(args.data, name), args.images), args.side)
        taps = {tap: {"channels": int(maps[tap].shape[1]), "negative": float((maps[tap] < 0).mean())} for tap in TAPS}
        pairs = {" x ".join(pair): pair_stats(maps[pair[0]], maps[pair[1]]) for pair in PAIRS}
        result["sets"][name] = {"taps": taps, "pairs": pairs}
        print(name, json.dumps(taps), flush=True)
    result["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    with atomic_write(RESULTS / "guidance-stats.json", "w") as handle:
        json.dump(result, handle, indent=1)
    sets = list(result["sets"])
    lines = ["# MobileNetV2 guidance candidates: signs, cancellation, linear dependence",
             "",
             f"{args.images} seeded training images per set at side {args.side}; generated by "
             f"`benchmarks/guidance_stats.py` in {result['seconds']:.0f} s. See its docstring for the measures.",
             "",
             "| tap | channels | " + " | ".join(f"negative share ({s})" for s in sets) + " |",
             "|---|---:|" + "---:|" * len(sets)]
    for tap in TAPS:
        first = result["sets"][sets[0]]["taps"][tap]
        lines.append(f"| {tap} | {first['channels']} | "
                     + " | ".join(f"{100 * result['sets'][s]['taps'][tap]['negative']:.1f}%" for s in sets) + " |")
    lines += ["", "| local x guidance | Dt | Dk | dims | " + " | ".join(
        f"cancellation ({s}) | explained ({s}) | negative channel means ({s})" for s in sets) + " |",
              "|---|---:|---:|---:|" + "---:|---:|---:|" * len(sets)]
    for pair in result["sets"][sets[0]]["pairs"]:
        first = result["sets"][sets[0]]["pairs"][pair]
        cells = []
        for s in sets:
            p = result["sets"][s]["pairs"][pair]
            cells.append(f"{p['cancellation']:.3f} | {100 * p['explained']:.1f}% | {100 * p['negative_channel_means']:.1f}%")
        lines.append(f"| {pair} | {first['Dt']} | {first['Dk']} | {first['dims']:,} | " + " | ".join(cells) + " |")
    with atomic_write(RESULTS / "guidance-stats.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
