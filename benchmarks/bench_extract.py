"""End-to-end extraction (decode -> backbone -> codes), crosslayer pipeline vs a plain torch-eager script.

Both compute the same sign codes of the default MobileNetV2 pair at side 448 from the same CUB images with the same
number of threads; the result is checked (codes agree up to signs of values at rounding level) before timing.
Peak RSS of each is measured in a fresh subprocess. Usage:
    PYTHONPATH=python python benchmarks/bench_extract.py [--data ROOT] [--images 96] [--threads 2]
(ROOT holds cub100/manifest.csv; default ../shared/data beside the repository.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import add_data_argument, data_set  # noqa: E402

MANIFEST = "cub100/manifest.csv"


def _paths(args):
    from crosslayer.extract import read_manifest

    return read_manifest(data_set(args.data, MANIFEST))[: args.images]


def run_crosslayer(args) -> dict:
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.extract import Store, extract

    paths = _paths(args)
    encoder = CrossLayerEncoder(side=args.side, threads=args.threads, batch_size=args.batch_size,
                                decode_workers=args.threads).fit(paths[: args.fit])
    encoder.save(args.encoder)
    encoder.activations([])  # export/session creation outside the timing, as for torch's model build
    encoder._backbone()
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        extract(paths, store, encoder, progress=False, save_embedding=True)
        seconds = time.perf_counter() - start
        Store(store).codes().save(args.codes)
    return {"seconds": seconds}


def run_torch(args) -> dict:
    """The plain script: PIL decode + resize, torch eager MobileNetV2, numpy pooling + sign packing."""
    import numpy as np
    import torch

    from crosslayer import reference
    from crosslayer.backbones.export import torch_reference
    from crosslayer.codes import Codes
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.images import prepare

    torch.set_num_threads(args.threads)
    encoder = CrossLayerEncoder.load(args.encoder)
    spec = encoder.spec
    net = torch_reference("mobilenet_v2", encoder.layers)
    mean, proj = (np.asarray(v, np.float64) for v in encoder.pca_)
    paths = _paths(args)
    start = time.perf_counter()
    parts = []
    for i in range(0, len(paths), args.batch_size):
        batch = np.stack([prepare(p, args.side, "square", spec.mean, spec.std) for p in paths[i : i + args.batch_size]])
        local, guidance = net(batch)
        # same math as the fused kernel, vectorised: PCA, P = A X, signs packed
        n, dt, h, w = local.shape
        x = (local.reshape(n, dt, h * w).transpose(0, 2, 1).astype(np.float32) - mean.astype(np.float32)) @ proj.astype(np.float32)
        a = guidance.reshape(n, guidance.shape[1], h * w)
        pooled = a @ x  # (n, Dk, Dt)
        parts.append(Codes(reference.pack_ternary(np.sign(pooled).astype(np.int8)), a.mean(axis=2), dt))
    seconds = time.perf_counter() - start
    Codes.concatenate(parts).save(args.codes)
    return {"seconds": seconds}


def _child(args) -> int:
    result = (run_crosslayer if args.which == "crosslayer" else run_torch)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--fit", type=int, default=32)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--which", default=None)
    parser.add_argument("--encoder", default=None)
    parser.add_argument("--codes", default=None)
    args = parser.parse_args()
    if args.which:
        return _child(args)

    import numpy as np

    from crosslayer.codes import Codes

    work = tempfile.mkdtemp(prefix="bench_extract_")
    encoder_path = os.path.join(work, "encoder.xle")
    results = {}
    for which in ("crosslayer", "torch"):
        codes = os.path.join(work, f"{which}.xlc")
        command = [sys.executable, __file__, "--which", which, "--encoder", encoder_path, "--codes", codes,
                   "--data", str(args.data), "--images", str(args.images), "--fit", str(args.fit), "--side", str(args.side),
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[which] = json.loads(out)
    ours, theirs = Codes.load(os.path.join(work, "crosslayer.xlc")), Codes.load(os.path.join(work, "torch.xlc"))
    mismatch = float((ours.signs() != theirs.signs()).mean())
    assert len(ours) == len(theirs) == args.images and mismatch < 1e-4, f"codes differ: {mismatch:.2e} of signs"
    mean_err = float(np.abs(ours.channel_mean - theirs.channel_mean).max())
    print(f"{args.images} CUB images, side {args.side}, MobileNetV2 features.17 x features.18, {args.threads} threads")
    print(f"check: codes agree on {100 * (1 - mismatch):.4f}% of signs, channel means within {mean_err:.1e}")
    for which, label in (("crosslayer", "crosslayer extract (onnxruntime)"), ("torch", "plain torch eager script")):
        r = results[which]
        print(f"{label:>34}: {args.images / r['seconds']:6.2f} images/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"speed-up: {results['torch']['seconds'] / results['crosslayer']['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
