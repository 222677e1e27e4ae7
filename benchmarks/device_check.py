#!/usr/bin/env python3
"""GPU check of the CUDA kernels: parity with the CPU kernels / float64 reference, then timings against PyTorch.

Run on a machine with an NVIDIA GPU after `python tools/dev_build.py --cuda ON` (or an installed CUDA build), or
let it build first (`--build`: tools/dev_build.py --cuda ON --werror, for the GPU's arch or --cuda-archs):

    PYTHONPATH=python python benchmarks/device_check.py [--build [--cuda-archs 90]] [--quick]

Parity (exact where the math is exact):
  * pool -> codes: every code bit must equal sign(P) of the float64 reference except where |P| is within the
    TF32 rounding bound (crosslayer.reference.tf32_sign_bound: 2^-8 * sum_i |a_ik| S_ij); violations are counted
    and must be 0. Bits that differ from the CPU kernel's are counted too (allowed only inside the bound).
  * gram / search: scores and ids exactly equal to the CPU kernels (crosslayer.gram / crosslayer.search on host
    copies of the same codes; the search at scale on a 4,096-item prefix of the database) and to a PyTorch
    reference; both rank ties by the smaller id, so ids must be equal too.
Timings (CUDA events, median): crosslayer vs PyTorch eager and torch.compile (TF32 allowed) for pool -> codes at
n=128, H=W=14, Dt_in=Dt=Dk=512 with PCA; search over 100,000 codes of 512x512 (8 words per plane), 50 channels,
vs a PyTorch search that looks popcounts up in a 256-entry table. Floors come from the measured device-to-device
copy bandwidth and TF32 matmul rate. The search's bandwidth target counts the bytes it must read: per item the union
of the queries' selected channel lines (queries share channels); the bytes the kernel loads (every query's lines,
repeats possibly served by L2) are reported beside it. Exit codes: 0 ok (or no GPU: prints why), 1 parity or
target failure, 2 environment (torch/CUDA build missing, or the --build failed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))


def log(message: str) -> None:
    print(message, flush=True)


def build_extension(torch, archs: str | None) -> None:
    """In-place CUDA build (warnings as errors) for `archs`, by default the GPU's own compute capability."""
    if archs is None:
        major, minor = torch.cuda.get_device_capability()
        archs = f"{major}{minor}"
    command = [sys.executable, str(ROOT / "tools" / "dev_build.py"), "--cuda", "ON", "--werror", "--cuda-archs", archs]
    log(f"device_check: building: {' '.join(command)}")
    started = time.time()
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        log("device_check: the CUDA build failed (its output is above)")
        sys.exit(2)
    log(f"device_check: built in {time.time() - started:.0f}s")


def environment(build: bool, archs: str | None):
    try:
        import torch
    except ImportError:
        log("device_check: PyTorch is not installed; this check needs torch with CUDA")
        sys.exit(2)
    if not torch.cuda.is_available():
        log("device_check: no CUDA GPU is present on this machine; nothing to check (skipped)")
        sys.exit(0)
    if build:  # before the first import of crosslayer, which loads the extension
        build_extension(torch, archs)
    import crosslayer

    if not crosslayer.build_info()["cuda"]:
        log("device_check: crosslayer was built without CUDA; build with `python tools/dev_build.py --cuda ON`")
        sys.exit(2)
    return torch, crosslayer


def time_ms(torch, fn, warmup=3, repeat=15):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def ceilings(torch):
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = time_ms(torch, lambda: dst.copy_(src), repeat=10)
    copy_bw = 2 * src.numel() * 4 / (copy_ms * 1e-3)
    del src, dst
    torch.backends.cuda.matmul.allow_tf32 = True
    a = torch.randn(8192, 8192, device="cuda")
    b = torch.randn(8192, 8192, device="cuda")
    mm_ms = time_ms(torch, lambda: a @ b, repeat=10)
    rate = 2 * 8192**3 / (mm_ms * 1e-3)
    del a, b
    return copy_bw, rate


# ---- PyTorch versions of the pipeline ----------------------------------------------------------------------------

def torch_pack(torch, values):
    """(n, Dk, Dt) float -> (n, Dk, 2, words) int64 bit-planes (nonzero, negative), the codes.h layout."""
    n, dk, dt = values.shape
    words = (dt + 63) // 64
    pad = words * 64 - dt
    planes = torch.stack([values != 0, values < 0], dim=2)
    if pad:
        planes = torch.nn.functional.pad(planes, (0, pad))
    shifts = torch.arange(64, device=values.device, dtype=torch.int64)
    return (planes.view(n, dk, 2, words, 64).to(torch.int64) << shifts).sum(-1)


def torch_pool_codes(torch, x, g, mean, proj):
    n, dt_in, h, w = x.shape
    xc = x.reshape(n, dt_in, h * w) - mean[:, None]
    xp = torch.matmul(proj.t(), xc)                        # (n, Dt, positions)
    pooled = torch.bmm(g.reshape(n, g.shape[1], h * w), xp.transpose(1, 2))
    return torch_pack(torch, pooled), g.reshape(n, g.shape[1], h * w).mean(-1)


def byte_table(torch):
    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32, device="cuda")


def torch_popcount(table, words):
    import torch

    return table[words.view(torch.uint8).long()].view(*words.shape, 8).sum(-1)


def torch_search(torch, table, queries, database, channels, k, chunk=4096):
    """Top-k by table-lookup popcounts; database int64 (n, Dk, 2, words). Ties rank the smaller id first."""
    results_s, results_i = [], []
    nd = database.shape[0]
    for q in range(queries.shape[0]):
        sel = channels[q].long()
        qn, qg = queries[q, sel, 0], queries[q, sel, 1]
        scores = []
        for s in range(0, nd, chunk):
            x = database[s : s + chunk][:, sel]
            both = x[:, :, 0] & qn
            diff = both & (x[:, :, 1] ^ qg)
            scores.append((torch_popcount(table, both) - 2 * torch_popcount(table, diff)).sum((1, 2)))
        scores = torch.cat(scores).to(torch.int64)
        ids = torch.arange(nd, device="cuda")
        order = torch.argsort(-scores * (nd + 1) + ids)  # exact: (score desc, id asc)
        results_s.append(scores[order[:k]].to(torch.int32))
        results_i.append(ids[order[:k]])
    return torch.stack(results_s), torch.stack(results_i)


def host_codes(crosslayer, bits, channels=None):
    """`Codes` on the host of device codes `bits` (n, Dk, 2, words) int64. Their channel means are 1 on each row's
    `channels` (n, c) and 0 elsewhere, so crosslayer.search(..., channels=c) selects exactly those channels, as a
    search_device call given `channels` does; the means of database codes are never read."""
    n, dk, _, words = bits.shape
    mean = np.zeros((n, dk), np.float32)
    if channels is not None:
        np.put_along_axis(mean, channels.cpu().numpy().astype(np.int64), 1.0, axis=1)
    return crosslayer.Codes(bits.cpu().numpy().view(np.uint64), mean, 64 * words)


def equal_to_cpu(torch, got, want) -> bool:
    """Device results (tensors) exactly equal to the CPU kernels' (numpy arrays), dtype included."""
    return all(g.dtype == torch.from_numpy(w).dtype and np.array_equal(g.cpu().numpy(), w) for g, w in zip(got, want))


def random_codes(torch, n, dk, words, generator=None):
    nz = torch.randint(-(2**62), 2**62, (n, dk, words), device="cuda", dtype=torch.int64, generator=generator)
    nz = nz ^ (torch.randint(0, 2, (n, dk, words), device="cuda", dtype=torch.int64, generator=generator) << 63)
    neg = torch.randint(-(2**62), 2**62, (n, dk, words), device="cuda", dtype=torch.int64, generator=generator) & nz
    return torch.stack([nz, neg], dim=2).contiguous()


# ---- checks ------------------------------------------------------------------------------------------------------

def parity(torch, crosslayer, rows, failures, n=16):
    from crosslayer import _device, reference

    rng = np.random.default_rng(0)
    dt_in, dk, h, w, dt = 512, 512, 14, 14, 500  # Dt not a multiple of 64
    local = np.maximum(rng.standard_normal((n, dt_in, h, w)), 0).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    mean = local.mean(axis=(0, 2, 3)).astype(np.float32)
    proj = np.linalg.qr(rng.standard_normal((dt_in, dt_in)))[0][:, :dt].astype(np.float32)
    gpu = crosslayer.pool(*(torch.from_numpy(v).cuda() for v in (local, guidance)),
                          pca=(torch.from_numpy(mean).cuda(), torch.from_numpy(proj).cuda()), output="codes").to_host()
    cpu = crosslayer.pool(local, guidance, pca=(mean, proj), output="codes")
    # float64 reference and TF32 bound, on the GPU for speed (same formulas as crosslayer.reference)
    d = lambda v: torch.from_numpy(v).cuda().double()
    x = d(local).reshape(n, dt_in, h * w).transpose(1, 2)
    a = d(guidance).reshape(n, dk, h * w)
    pooled = torch.bmm(a, (x - d(mean)) @ d(proj)).cpu().numpy()
    bound = (reference.TF32_SIGN_TOLERANCE * torch.bmm(a.abs(), (x.abs() + d(mean).abs()) @ d(proj).abs())).cpu().numpy()
    gpu_bad = reference.sign_violations(gpu.signs(), pooled, bound)
    cpu_bad = reference.sign_violations(cpu.signs(), pooled, bound)
    differ = gpu.signs() != cpu.signs()
    outside = int(np.count_nonzero(differ & (np.abs(pooled) > bound)))
    mean_err = float(np.max(np.abs(gpu.channel_mean - cpu.channel_mean)))
    rows.append(("pool codes vs float64 sign (outside TF32 bound)", f"{gpu_bad} of {pooled.size}", "0"))
    rows.append(("pool codes: bits differing from CPU kernel", f"{int(differ.sum())} ({outside} outside bound)", "0 outside"))
    rows.append(("CPU codes vs float64 sign (same bound)", f"{cpu_bad}", "info"))
    rows.append(("channel_mean max |GPU - CPU|", f"{mean_err:.2e}", "<= 1e-5"))
    if gpu_bad or outside or mean_err > 1e-5:
        failures.append("pool parity")

    gen = torch.Generator(device="cuda").manual_seed(1)
    db = random_codes(torch, 3000, 64, 8, gen)
    q = random_codes(torch, 5, 64, 8, gen)
    db[1500:2000] = db[0:500]  # ties
    channels = torch.stack([torch.randperm(64, device="cuda", generator=gen)[:13] for _ in range(5)]).int()
    table = byte_table(torch)
    got = _device.search_device(q.view(torch.uint64), db.view(torch.uint64), 512, channels, 100, id_base=0)
    want = torch_search(torch, table, q, db, channels, 100)
    ok = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    rows.append(("search top-100 scores+ids == torch reference", "equal" if ok else "DIFFER", "equal"))
    if not ok:
        failures.append("search parity")
    cpu = crosslayer.search(host_codes(crosslayer, q, channels), host_codes(crosslayer, db), k=100,
                            channels=channels.shape[1])
    ok = equal_to_cpu(torch, got, cpu)
    rows.append(("search top-100 scores+ids == CPU kernel", "equal" if ok else "DIFFER", "equal"))
    if not ok:
        failures.append("search parity with CPU")
    gram = _device.gram_device(q.view(torch.uint64), db[:700].view(torch.uint64), 512)
    ok = equal_to_cpu(torch, [gram], [crosslayer.gram(host_codes(crosslayer, q), host_codes(crosslayer, db[:700]))])
    rows.append(("gram == CPU kernel", "equal" if ok else "DIFFER", "equal"))
    if not ok:
        failures.append("gram parity with CPU")
    all_channels = torch.arange(64, device="cuda", dtype=torch.int32).expand(5, 64).contiguous()
    ref_scores = torch_search(torch, table, q, db[:700], all_channels, 700)
    ref_gram = torch.empty_like(gram)
    ref_gram.scatter_(1, ref_scores[1], ref_scores[0])
    ok = torch.equal(gram, ref_gram)
    rows.append(("gram == torch reference", "equal" if ok else "DIFFER", "equal"))
    if not ok:
        failures.append("gram parity")


def print_kernel_profile(torch, label, fn, calls=5):
    """GPU time per kernel (CUPTI, through torch.profiler) of `calls` calls: where the time goes."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        print(f"--- {label}: GPU time per kernel over {calls} calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        print(f"--- {label}: profiler unavailable ({type(exc).__name__}: {exc})")


def pool_timing(torch, crosslayer, rows, failures, copy_bw, mm_rate, compile_budget_s):
    from crosslayer import _device

    n, dt_in, dk, h, w = 128, 512, 512, 14, 14
    x = torch.randn(n, dt_in, h, w, device="cuda").relu_()
    g = torch.randn(n, dk, h, w, device="cuda").relu_()
    mean = x.mean((0, 2, 3))
    proj = torch.linalg.qr(torch.randn(dt_in, dt_in, device="cuda"))[0].contiguous()
    torch.backends.cuda.matmul.allow_tf32 = True
    ours = lambda: _device.pool_device(x, g, (mean, proj), "codes", check_finite=False)
    ours_api = lambda: crosslayer.pool(x, g, pca=(mean, proj), output="codes")
    eager = lambda: torch_pool_codes(torch, x, g, mean, proj)
    t_ours = time_ms(torch, ours)
    t_api = time_ms(torch, ours_api)
    t_eager = time_ms(torch, eager)
    # same codes as PyTorch's TF32 pipeline apart from near-zero values
    same = (ours().bits.view(torch.int64) == eager()[0]).float().mean().item()
    t_compiled, compile_note = float("nan"), ""
    try:
        compiled = torch.compile(lambda: torch_pool_codes(torch, x, g, mean, proj))
        start = time.time()
        compiled()
        torch.cuda.synchronize()
        compile_s = time.time() - start
        compile_note = f"compile {compile_s:.0f}s"
        if compile_s <= compile_budget_s:
            t_compiled = time_ms(torch, compiled)
            print_kernel_profile(torch, "torch.compile pool->codes", compiled)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        compile_note = f"torch.compile failed: {type(exc).__name__}"
    flops = 2 * n * h * w * dt_in * dt_in + 2 * n * dk * h * w * dt_in
    bytes_moved = 4 * n * h * w * (dt_in + dk) + n * dk * 2 * 8 * 8
    floor = max(flops / mm_rate, bytes_moved / copy_bw) * 1e3
    rows.append(("pool->codes crosslayer kernel (ms)", f"{t_ours:.3f}", f"floor {floor:.3f}"))
    rows.append(("pool->codes crosslayer.pool incl. NaN check (ms)", f"{t_api:.3f}", ""))
    # breakdown: the pooling GEMM alone (no PCA) and the float output
    t_no_pca = time_ms(torch, lambda: _device.pool_device(x, g, None, "codes", check_finite=False))
    t_float = time_ms(torch, lambda: _device.pool_device(x, g, (mean, proj), "float", check_finite=False))
    rows.append(("  of which pooling GEMM (same call without PCA, ms)", f"{t_no_pca:.3f}", ""))
    rows.append(("pool->float crosslayer kernel (ms)", f"{t_float:.3f}", ""))
    t_loop = time_ms(torch, lambda: [ours() for _ in range(10)]) / 10
    rows.append(("pool->codes, 10 calls back to back (ms per call)", f"{t_loop:.3f}", "host gaps amortised"))
    print_kernel_profile(torch, "crosslayer pool->codes", ours)
    rows.append(("pool->codes torch eager TF32 (ms)", f"{t_eager:.3f}", f"x{t_eager / t_ours:.2f}"))
    rows.append(("pool->codes torch.compile TF32 (ms)", f"{t_compiled:.3f}",
                 f"x{t_compiled / t_ours:.2f} (target >= 2) {compile_note}"))
    rows.append(("pool codes words equal to torch TF32 codes", f"{100 * same:.3f}%", "near 100"))
    if not (t_compiled / t_ours >= 2):
        failures.append("pool target (>= 2x torch.compile)")


def search_timing(torch, crosslayer, rows, failures, copy_bw, n_items, n_queries=8, n_channels=50, k=100,
                  n_cpu_items=4096):
    from crosslayer import _device

    dk, words = 512, 8
    gen = torch.Generator(device="cuda").manual_seed(2)
    db = torch.empty((n_items, dk, 2, words), dtype=torch.int64, device="cuda")
    for s in range(0, n_items, 10000):
        db[s : s + 10000] = random_codes(torch, min(10000, n_items - s), dk, words, gen)
    q = random_codes(torch, n_queries, dk, words, gen)
    channels = torch.stack([torch.randperm(dk, device="cuda", generator=gen)[:n_channels]
                            for _ in range(n_queries)]).int()
    qu, dbu = q.view(torch.uint64), db.view(torch.uint64)
    dt = 64 * words
    ours = lambda: _device.search_device(qu, dbu, dt, channels, k)
    table = byte_table(torch)
    t_ours = time_ms(torch, ours, warmup=2, repeat=10)
    got = ours()
    want = torch_search(torch, table, q[:1], db, channels[:1], k)
    if not (torch.equal(got[0][:1], want[0]) and torch.equal(got[1][:1], want[1])):
        failures.append("search parity at scale")
        rows.append(("search at scale == torch reference", "DIFFER", "equal"))
    # the CPU kernel on a prefix of the database (all of it would be 6.5 GB on the host and minutes of CPU time)
    prefix = min(n_items, n_cpu_items)
    got_prefix = _device.search_device(qu, dbu[:prefix], dt, channels, min(k, prefix))
    cpu = crosslayer.search(host_codes(crosslayer, q, channels), host_codes(crosslayer, db[:prefix]), k=k,
                            channels=n_channels)
    ok = equal_to_cpu(torch, got_prefix, cpu)
    rows.append((f"search {n_queries}q x first {prefix} items == CPU kernel", "equal" if ok else "DIFFER", "equal"))
    if not ok:
        failures.append("search parity with CPU at scale")
    t_table = time_ms(torch, lambda: torch_search(torch, table, q[:1], db, channels[:1], k), warmup=1, repeat=3)
    t_table *= n_queries  # one query timed, same work per query
    line_bytes = 2 * words * 8  # one channel of one item: both planes
    # Queries share channels: each item's lines in the union of the selections must be read once at least.
    union_lines = int(torch.unique(channels).numel())
    must_read = n_items * union_lines * line_bytes
    loaded = n_items * n_queries * n_channels * line_bytes  # every query's lines; repeats may be L2 hits
    achieved = must_read / (t_ours * 1e-3)
    rows.append((f"search {n_queries}q x {n_items} items, {n_channels} ch, k={k} (ms)", f"{t_ours:.3f}",
                 f"floor {must_read / copy_bw * 1e3:.3f}"))
    rows.append(("search torch 256-table lookup (ms, per-query x n)", f"{t_table:.3f}",
                 f"x{t_table / t_ours:.1f} (target >= 20)"))
    rows.append(("search channel lines per item: union of queries' / all queries'",
                 f"{union_lines} / {n_queries * n_channels}", "info"))
    rows.append(("search bandwidth on bytes it must read (union of lines)", f"{achieved / 1e9:.0f} GB/s",
                 f"{100 * achieved / copy_bw:.0f}% of copy (target >= 50%)"))
    loaded_rate = loaded / (t_ours * 1e-3)
    rows.append(("search bandwidth on bytes the kernel loads (each query's lines)", f"{loaded_rate / 1e9:.0f} GB/s",
                 f"{100 * loaded_rate / copy_bw:.0f}% of copy"))
    if t_table / t_ours < 20:
        failures.append("search target (>= 20x table lookup)")
    if achieved < 0.5 * copy_bw:
        failures.append("search target (>= 50% copy bandwidth)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller search database (10,000 items)")
    parser.add_argument("--compile-budget", type=float, default=120.0, help="seconds allowed for torch.compile")
    parser.add_argument("--build", action="store_true",
                        help="first build the extension in place: tools/dev_build.py --cuda ON --werror")
    parser.add_argument("--cuda-archs", default=None,
                        help="with --build: CUDA architectures, e.g. 90 or '80;90' (default: this GPU's)")
    args = parser.parse_args()
    if args.cuda_archs is not None and not args.build:
        parser.error("--cuda-archs: only with --build")
    torch, crosslayer = environment(args.build, args.cuda_archs)
    log(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | crosslayer {crosslayer.build_info()}")
    rows, failures = [], []
    copy_bw, mm_rate = ceilings(torch)
    rows.append(("measured copy bandwidth (read+write)", f"{copy_bw / 1e9:.0f} GB/s", ""))
    rows.append(("measured TF32 matmul 8192^3", f"{mm_rate / 1e12:.0f} TFLOP/s", ""))
    steps = [
        ("parity", lambda: parity(torch, crosslayer, rows, failures)),
        ("pool timing", lambda: pool_timing(torch, crosslayer, rows, failures, copy_bw, mm_rate, args.compile_budget)),
        ("search timing", lambda: search_timing(torch, crosslayer, rows, failures, copy_bw,
                                                10_000 if args.quick else 100_000)),
    ]
    for name, step in steps:
        started = time.time()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others' results
            import traceback

            traceback.print_exc()
            failures.append(f"{name} raised {type(exc).__name__}: {exc}")
        log(f"[{name}: {time.time() - started:.1f}s]")
        torch.cuda.empty_cache()
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'check'.ljust(width)} | value | reference / target |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {a.ljust(width)} | {b} | {c} |" for a, b, c in rows]
    lines.append(f"\nresult: {'OK' if not failures else 'FAILED: ' + '; '.join(failures)}")
    table = "\n".join(lines)
    log(table)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "device_check.md").write_text(table + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
