"""Fused cross-layer pooling (crosslayer.pool) vs the same pipeline in PyTorch eager and numpy, same threads.

    python benchmarks/bench_pool.py [--threads 2] [--batch 32] [--repeat 5]

Shapes: (a) MobileNetV2 features.17/18 at 448 px: n=32, 14x14, Dt=320 with PCA 320->320, Dk=1280;
        (b) VGG conv5_3/conv5_4 at 224 px: n=32, 14x14, Dt=Dk=512 with PCA 512->512.
Each shape is first checked against the reference (float within 1e-4 of torch after undoing the square root; codes
equal to torch's signs wherever torch's float32 value is not within rounding of zero), then timed. Peak memory of
the codes path is measured in a fresh subprocess (peak RSS growth during the call) and compared with
codes + per-thread scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import best_time, ratio_line  # noqa: E402

SHAPES = {
    "a: MobileNetV2 17/18 @448": dict(dt=320, dk=1280, side=14, pca_dim=320),
    "b: VGG conv5_3/5_4 @224": dict(dt=512, dk=512, side=14, pca_dim=512),
}


def make_inputs(n, dt, dk, side, pca_dim, seed=0):
    rng = np.random.default_rng(seed)
    local = np.maximum(rng.standard_normal((n, dt, side, side), dtype=np.float32) + 0.5, 0)
    guidance = np.maximum(rng.standard_normal((n, dk, side, side), dtype=np.float32), 0)
    q, _ = np.linalg.qr(rng.standard_normal((dt, dt)))
    proj = np.ascontiguousarray(q[:, :pca_dim], dtype=np.float32)
    mean = local.mean(axis=(0, 2, 3)).astype(np.float32)
    return local, guidance, (mean, proj)


def torch_pipeline(torch):
    weights = (2 ** torch.arange(64, dtype=torch.int64)).view(1, 1, 1, 64)
    weights[..., 63] = -(2**63)  # bit 63 as the int64 sign bit

    def run(local, guidance, mean, proj, output):
        n, dt = local.shape[:2]
        x = local.flatten(2).transpose(1, 2)  # (n, N, Dt)
        xp = (x - mean) @ proj
        pooled = torch.bmm(guidance.flatten(2), xp)  # (n, Dk, Dt')
        if output == "float":
            v = torch.nn.functional.normalize(pooled, dim=2)
            return (torch.sign(v) * v.abs().sqrt()).flatten(1)
        words = (pooled.shape[2] + 63) // 64
        pad = words * 64 - pooled.shape[2]
        padded = torch.nn.functional.pad(pooled, (0, pad))
        planes = []
        for plane in (padded != 0, padded < 0):
            grouped = plane.view(n, pooled.shape[1], words, 64).to(torch.int64)
            planes.append((grouped * weights).sum(dim=3))
        return torch.stack(planes, dim=2)  # (n, Dk, 2, words) int64 bit patterns

    return run


def numpy_pipeline(local, guidance, mean, proj, output):
    n, dt = local.shape[:2]
    x = local.reshape(n, dt, -1).transpose(0, 2, 1)
    pooled = guidance.reshape(n, guidance.shape[1], -1) @ ((x - mean) @ proj)
    if output == "float":
        norms = np.linalg.norm(pooled, axis=2, keepdims=True)
        v = np.divide(pooled, norms, out=np.zeros_like(pooled), where=norms > 0)
        return (np.sign(v) * np.sqrt(np.abs(v))).reshape(n, -1)
    bits = np.packbits(np.concatenate([pooled != 0, pooled < 0], axis=1).reshape(n, 2, pooled.shape[1], -1),
                       axis=-1, bitorder="little")
    return bits


def _status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(n, dt, dk, side, pca_dim, threads):
    import crosslayer

    local, guidance, pca = make_inputs(n, dt, dk, side, pca_dim)
    crosslayer.pool(local[:1], guidance[:1], pca, output="codes", num_threads=threads)  # load BLAS, spawn threads
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak (VmHWM) to the current RSS
    before = _status_bytes("VmRSS")
    codes = crosslayer.pool(local, guidance, pca, output="codes", num_threads=threads)
    after = _status_bytes("VmHWM")
    print(json.dumps({"growth": after - before, "codes": codes.nbytes, "inputs": local.nbytes + guidance.nbytes}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory-child", nargs=6, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(*args.memory_child)
        return

    import torch

    import crosslayer

    torch.set_num_threads(args.threads)
    run_torch = torch_pipeline(torch)
    print(f"crosslayer {crosslayer.__version__}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"numpy {np.__version__}; crosslayer threads {args.threads}; batch {args.batch}")
    for name, shape in SHAPES.items():
        local, guidance, (mean, proj) = make_inputs(args.batch, **shape)
        t_args = [torch.from_numpy(a) for a in (local, guidance, mean, proj)]

        # ---- correctness first ----
        ours = crosslayer.pool(local, guidance, (mean, proj), num_threads=args.threads)
        theirs = run_torch(*t_args, "float").numpy()
        undo = lambda v: np.sign(v) * v.astype(np.float64) ** 2  # noqa: E731
        float_err = np.abs(undo(ours) - undo(theirs)).max()
        assert float_err < 1e-4, f"{name}: float output differs from torch by {float_err}"
        codes = crosslayer.pool(local, guidance, (mean, proj), output="codes", num_threads=args.threads)
        torch_bits = run_torch(*t_args, "codes").numpy().view(np.uint64)
        differing = codes.bits != torch_bits
        # A code word may differ only where some value of that word sits within float32 rounding of zero.
        if differing.any():
            v = undo(theirs).reshape(args.batch, shape["dk"], -1)
            near_zero = np.abs(v) < 1e-5
            words = near_zero.reshape(args.batch, shape["dk"], -1)
            pad = (-words.shape[2]) % 64
            words = np.pad(words, ((0, 0), (0, 0), (0, pad))).reshape(args.batch, shape["dk"], -1, 64).any(axis=3)
            assert (~differing.any(axis=2) | words).all(), f"{name}: codes differ away from zero"
        print(f"\n[{name}]  n={args.batch} Dt={shape['dt']}->{shape['pca_dim']} Dk={shape['dk']} "
              f"N={shape['side']}^2   check: float max |err| {float_err:.1e}, code words differing "
              f"{int(differing.sum())}/{differing.size} (all near zero)")

        # ---- timing ----
        for output in ("float", "codes"):
            k = best_time(lambda: crosslayer.pool(local, guidance, (mean, proj), output=output,
                                                  num_threads=args.threads), args.repeat)
            with torch.inference_mode():
                t = best_time(lambda: run_torch(*t_args, output), args.repeat)
            nref = best_time(lambda: numpy_pipeline(local, guidance, mean, proj, output), max(2, args.repeat // 2))
            print(ratio_line(f"pool -> {output}", k, t, "torch-eager"))
            print(ratio_line(f"pool -> {output}", k, nref, "numpy      "))

        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(args.batch), str(shape["dt"]), str(shape["dk"]),
             str(shape["side"]), str(shape["pca_dim"]), str(args.threads)],
            capture_output=True, text=True, check=True)
        mem = json.loads(child.stdout)
        positions = shape["side"] ** 2
        scratch = args.threads * 4 * (shape["dk"] * shape["pca_dim"] + positions * (shape["dt"] + shape["pca_dim"]))
        print(f"codes path memory: peak RSS growth {mem['growth'] / 1e6:.1f} MB  (codes {mem['codes'] / 1e6:.1f} MB + "
              f"scratch {scratch / 1e6:.1f} MB = {(mem['codes'] + scratch) / 1e6:.1f} MB; inputs {mem['inputs'] / 1e6:.0f} MB; "
              f"a float batch would be {args.batch * shape['dk'] * shape['pca_dim'] * 4 / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
