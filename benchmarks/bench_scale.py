"""Two-stage search at a million items (issue 16, two-stage index item 3).

The database: the real codes of every image in the shared image indexes (`build_shared_indexes.py`, TAG: the 192 SMVS references,
scene15 and cub100: 10,579 images) plus synthetic distractors made from them (`_scale_data`: near-duplicates or
chimeras of real codes) up to `--items`, written through `CodeIndex.append` (one memory-mapped segment per
`--segment` items), then the coarse stage built as `ImageIndex.search(candidates=)` builds it. Queries: the 192 SMVS
phone photos (their codes from the shared query index).

Phases, each in its own process so that each one's peak RSS (`resource.getrusage`) is its own:
1. build: codes and coarse stage (skipped when DIR holds them from an earlier run with the same arguments); then
   the exhaustive masked search of every query (the reference: top 100), saved in DIR.
2. search: the page cache is emptied of the segment files (`posix_fadvise(POSIX_FADV_DONTNEED)`) before every timed
   run; two-stage search for each shortlist size: recall@10 against exhaustive, SMVS mAP (one relevant image a
   query, reciprocal rank in the top 100), per-query latency median and p95 at 1 query a batch and at 32.
3. faiss: FAISS `IndexBinaryIVF` over the bits of the 16-bit coarse table (every channel's live bit and first 15 signs,
   Dk x 16 bits an image) with plain Hamming distance (no channel mask), the same queries; its own top 10 and its
   top N re-ranked exactly, against exhaustive masked search.
4. faiss_full: FAISS `IndexBinaryHNSW` on the full live-and-sign bits (Dk*Dt + Dk bits an image,
   the compact code's bits as one vector, Hamming, no mask) of the first `--faiss-full-items` items (in memory they
   would not fit at 1M on this machine), own top 10 against exhaustive masked search over the same items.

    python benchmarks/bench_scale.py --items 1000000 --dir /work/scale/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import add_data_argument, data_set  # noqa: E402
from _scale_data import DISTRACTOR_SETS, load_set, smvs_relevance, synthetic_distractors  # noqa: E402

from crosslayer import CodeIndex, Codes, compact  # noqa: E402
from crosslayer.retrieval.coarse import TABLE_FOLDER, CoarseIndex  # noqa: E402
from crosslayer.search import search  # noqa: E402

WIDTHS = (16, 32, 64)  # coarse table words measured: 15, 31 and 63 components a channel


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drop_page_cache(codes: CodeIndex) -> None:
    """Asks the kernel to evict the segment files from the page cache (what a cold or oversized index sees)."""
    for name, _ in codes.segment_files():
        fd = os.open(codes.path / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def reciprocal_rank(ids: np.ndarray, relevant: np.ndarray) -> float:
    ranks = [np.flatnonzero(row == r) for row, r in zip(ids, relevant)]
    return float(np.mean([1.0 / (hit[0] + 1) if hit.size else 0.0 for hit in ranks]))


def recall_at_10(ids: np.ndarray, exhaustive: np.ndarray) -> float:
    return float(np.mean([np.isin(e[:10], i[:10]).mean() for i, e in zip(ids, exhaustive)]))


def load_real(args):
    """(queries, SMVS references, real distractors)."""
    queries, _ = load_set(args.tag, "smvs-queries", args.pca_dim)
    references, _ = load_set(args.tag, "smvs-database", args.pca_dim)
    distractors = Codes.concatenate([load_set(args.tag, name, args.pca_dim)[0] for name in args.sets.split(",")])
    return queries, references, distractors


# ---- phase 1 ----------------------------------------------------------------------------------------------------
def build(args) -> dict:
    directory = Path(args.dir)
    queries, references, distractors = load_real(args)
    real = Codes.concatenate([references, distractors])
    done = directory / "built.json"
    settings = {k: getattr(args, k) for k in ("tag", "sets", "pca_dim", "items", "segment", "parents", "flip_bits",
                                              "seed", "layout")}
    report = {}
    if done.is_file() and json.loads(done.read_text())["settings"] == settings:
        report = json.loads(done.read_text())["report"]
        print(f"reusing the database in {directory} (built with the same settings)", flush=True)
    else:
        if directory.exists():
            import shutil
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        start = time.perf_counter()
        codes = CodeIndex.create(directory / "codes", real.Dk, real.Dt, identity=real.identity, layout=args.layout)
        codes.append(real)  # ids 0..191: the SMVS references, in the order of their index
        rng = np.random.default_rng(args.seed)
        pending, written = [], len(real)
        for block in synthetic_distractors(distractors, args.items - len(real), rng, args.parents, args.flip_bits):
            pending.append(block)
            if sum(len(p) for p in pending) >= args.segment:
                codes.append(Codes.concatenate(pending))
                written += sum(len(p) for p in pending)
                pending = []
                print(f"  {written} items written, {time.perf_counter() - start:.0f} s", flush=True)
        if pending:
            codes.append(Codes.concatenate(pending))
        codes_s = time.perf_counter() - start
        report = {"items": len(codes), "codes_build_s": codes_s, "codes_bytes": codes.bytes_on_disk,
                  "bytes_per_item": codes.bytes_on_disk / len(codes)}
        for bits in WIDTHS:
            start = time.perf_counter()
            (directory / f"coarse{bits}").mkdir()
            CoarseIndex.open(directory / f"coarse{bits}", codes, bits)
            report[f"coarse{bits}_build_s"] = time.perf_counter() - start
            report[f"coarse{bits}_bytes"] = sum(
                f.stat().st_size for f in (directory / f"coarse{bits}" / TABLE_FOLDER).iterdir())
        start = time.perf_counter()
        drop_page_cache(codes)
        _, exhaustive = codes.search(queries, 100, args.channels)
        report["exhaustive_s_192_queries"] = time.perf_counter() - start
        if len(codes) <= 30_000:  # the index's search is the kernel's on the codes in memory
            _, direct = search(queries, Codes.concatenate([codes.get(np.arange(len(codes)))]), 10, args.channels)
            assert np.array_equal(direct, exhaustive[:, :10]), "index search differs from crosslayer.search"
        np.save(directory / "exhaustive.npy", exhaustive)
        report["build_peak_rss_mb"] = peak_rss_mb()
        codes.close()
        done.write_text(json.dumps({"settings": settings, "report": report}))
    return report


# ---- phase 2 ----------------------------------------------------------------------------------------------------
def timed_two_stage(codes, coarse, queries, candidates, channels, top=100):
    shortlist = coarse.shortlist(queries, candidates, channels, np.zeros(0, np.int64))
    return codes.rerank(queries, shortlist, top, channels)[1]


def search_phase(args) -> dict:
    directory = Path(args.dir)
    queries, _ = load_set(args.tag, "smvs-queries", args.pca_dim)
    relevant = smvs_relevance(args.tag, data_set(args.data, "."))
    exhaustive = np.load(directory / "exhaustive.npy")
    codes = CodeIndex.open(directory / "codes", "r")
    start = time.perf_counter()
    coarse = CoarseIndex.open(directory / f"coarse{args.word_bits}", codes, args.word_bits)
    report = {"word_bits": args.word_bits, "coarse_load_s": time.perf_counter() - start,
              "coarse_table_mb": coarse.nbytes / 2 ** 20, "exhaustive_mAP": reciprocal_rank(exhaustive, relevant),
              "rows": []}
    timing = queries[:args.timed_queries]
    timed_two_stage(codes, coarse, timing[:1], 10, args.channels)  # compiles the kernels
    for candidates in [int(n) for n in args.candidates.split(",")]:
        row = {"word_bits": args.word_bits, "candidates": candidates}
        # 32 a batch over all 192 queries: the recall and mAP run, timed; then 1 a batch over the first few
        for batch, chosen in ((32, queries), (1, timing)):
            drop_page_cache(codes)
            spent, found = [], []
            for start_row in range(0, len(chosen), batch):
                part = chosen[start_row:start_row + batch]
                start = time.perf_counter()
                found.append(timed_two_stage(codes, coarse, part, candidates, args.channels))
                spent.append((time.perf_counter() - start) / len(part))
            if batch == 32:
                ids = np.concatenate(found)
                row.update({"recall@10": recall_at_10(ids, exhaustive), "mAP": reciprocal_rank(ids, relevant)})
            row[f"ms_median_b{batch}"] = 1000 * float(np.median(spent))
            row[f"ms_p95_b{batch}"] = 1000 * float(np.percentile(spent, 95))
        # the coarse stage alone, warm: what the scan costs without the fine stage's reads
        start = time.perf_counter()
        coarse.shortlist(timing, candidates, args.channels, np.zeros(0, np.int64), num_threads=1)
        row["coarse_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(timing)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    report["search_peak_rss_mb"] = peak_rss_mb()
    codes.close()
    return report


# ---- phase 3 ----------------------------------------------------------------------------------------------------
def faiss_phase(args) -> dict:
    import faiss

    directory = Path(args.dir)
    queries, _ = load_set(args.tag, "smvs-queries", args.pca_dim)
    exhaustive = np.load(directory / "exhaustive.npy")
    codes = CodeIndex.open(directory / "codes", "r")
    coarse = CoarseIndex.open(directory / "coarse16", codes, 16)
    dk = codes.Dk
    # the bits of the 16-bit coarse table, item-major: Dk words of 16 bits (live bit and first 15 signs) = Dk*16 bits
    vectors = np.concatenate([np.ascontiguousarray(t.T).view(np.uint8) for t in coarse.tables])
    query_vectors = np.ascontiguousarray(coarse.query_words(queries.bits)).view(np.uint8)
    del coarse
    start = time.perf_counter()
    quantizer = faiss.IndexBinaryFlat(dk * 16)
    index = faiss.IndexBinaryIVF(quantizer, dk * 16, args.faiss_lists)
    train = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 40 * args.faiss_lists),
                                                    replace=False)]
    index.train(train)
    index.add(vectors)
    build_s = time.perf_counter() - start
    del vectors
    report = {"faiss_build_s": build_s, "faiss_lists": args.faiss_lists, "rows": []}
    for nprobe in [int(p) for p in args.faiss_nprobe.split(",")]:
        index.nprobe = nprobe
        for candidates in (10, 1000):
            start = time.perf_counter()
            _, ids = index.search(query_vectors, candidates)
            spent = (time.perf_counter() - start) / len(queries)
            row = {"nprobe": nprobe, "shortlist": candidates, "faiss_ms_per_query_b192": 1000 * spent}
            if candidates == 10:
                row["recall@10 (own top 10)"] = recall_at_10(ids, exhaustive)
            else:
                drop_page_cache(codes)
                start = time.perf_counter()
                reranked = codes.rerank(queries, ids, 10, args.channels)[1]
                row["rerank_ms_per_query"] = 1000 * (time.perf_counter() - start) / len(queries)
                row["recall@10 (re-ranked)"] = recall_at_10(reranked, exhaustive)
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    report["faiss_peak_rss_mb"] = peak_rss_mb()
    return report


def full_bit_vectors(bits: np.ndarray, dk: int, dt: int) -> np.ndarray:
    """(n, Dk*Dt/8 + Dk/8) uint8: every channel's Dt sign bits, then one live bit a channel (the compact code's
    bits as one binary vector; Dt and Dk multiples of 8)."""
    if bits.ndim == 2:  # compact
        signs = np.ascontiguousarray(compact.sign_planes(bits, dk, dt)).view(np.uint8)[:, :, :dt // 8]
        live = np.packbits(compact.live_mask(bits, dk), axis=1)
    else:
        signs = np.ascontiguousarray(bits[:, :, 1, :]).view(np.uint8)[:, :, :dt // 8]
        live = np.packbits((bits[:, :, 0, :] != 0).any(axis=-1), axis=1)
    signs = signs.reshape(len(bits), -1)
    return np.ascontiguousarray(np.concatenate([signs, live], axis=1))


def faiss_full_phase(args) -> dict:
    """FAISS binary indexes on the full live-and-sign bits of the first `--faiss-full-items` items (one item a
    segment's worth at least): own top 10 against exhaustive masked search over the same items."""
    import faiss

    directory = Path(args.dir)
    queries, _ = load_set(args.tag, "smvs-queries", args.pca_dim)
    codes = CodeIndex.open(directory / "codes", "r")
    chosen, count = [], 0
    for name, n in codes.segment_files():
        if count >= args.faiss_full_items:
            break
        chosen.append(name)
        count += n
    _, exhaustive = codes.search(queries, 10, args.channels, segments=chosen)
    vectors = np.concatenate([full_bit_vectors(bits, codes.Dk, codes.Dt) for entry, bits in codes.segment_codes()
                              if entry["file"] in chosen])
    query_vectors = full_bit_vectors(queries.bits, codes.Dk, codes.Dt)
    bits_per_item = vectors.shape[1] * 8
    report = {"items": count, "bits_per_item": bits_per_item, "rows": []}
    lists = 256 if count >= 50_000 else 16
    # FAISS trains a binary IVF by k-means on the vectors as floats (4 bytes a bit): 10 points a list keeps that
    # under 0.5 GB at ~40k bits an item (it warns that it wants 39)
    # IndexBinaryIVF is left out here: its k-means on ~40k-bit vectors was killed for memory on this machine
    for kind in ("hnsw",):
        start = time.perf_counter()
        if kind == "ivf":
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits_per_item), bits_per_item, lists)
            index.train(vectors[np.random.default_rng(0).choice(count, min(count, 10 * lists), replace=False)])
        else:
            index = faiss.IndexBinaryHNSW(bits_per_item, 16)
        index.add(vectors)
        build_s = time.perf_counter() - start
        for effort in (16, 128):
            if kind == "ivf":
                index.nprobe = effort
            else:
                index.hnsw.efSearch = effort
            start = time.perf_counter()
            _, ids = index.search(query_vectors, 10)
            row = {"index": kind, "lists" if kind == "ivf" else "M": lists if kind == "ivf" else 16,
                   "nprobe" if kind == "ivf" else "efSearch": effort, "build_s": build_s,
                   "ms_per_query_b192": 1000 * (time.perf_counter() - start) / len(queries),
                   "recall@10": recall_at_10(ids, exhaustive)}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
        del index
    report["faiss_full_peak_rss_mb"] = peak_rss_mb()
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--dir", default="/work/scale/bench", help="where the database is written")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--tag", default="f16f17", help="the layer pair's shared indexes (build_shared_indexes.py)")
    parser.add_argument("--sets", default=",".join(DISTRACTOR_SETS), help="the real distractor sets")
    parser.add_argument("--layout", default="compact", choices=["compact", "two_plane"],
                        help="the layout the segments store (the cache's codes are converted)")
    parser.add_argument("--pca-dim", type=int, default=128, help="the code's Dt (the first components of the cache's)")
    parser.add_argument("--segment", type=int, default=65536, help="items a segment")
    parser.add_argument("--parents", type=int, default=1)
    parser.add_argument("--flip-bits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--candidates", default="1000,2000,5000")
    parser.add_argument("--timed-queries", type=int, default=64)
    parser.add_argument("--faiss-lists", type=int, default=1024)
    parser.add_argument("--faiss-nprobe", default="8,64")
    parser.add_argument("--faiss-full-items", type=int, default=100_000)
    parser.add_argument("--word-bits", type=int, default=16, help="search phase: the coarse table's word")
    parser.add_argument("--phase", choices=["all", "build", "search", "faiss", "faiss_full"], default="all")
    args = parser.parse_args(argv)
    phases = {"build": build, "search": search_phase, "faiss": faiss_phase, "faiss_full": faiss_full_phase}
    if args.phase != "all":
        report = phases[args.phase](args)
        name = f"search{args.word_bits}" if args.phase == "search" else args.phase
        Path(args.dir, f"{name}.json").write_text(json.dumps(report, indent=1))
        return 0
    print(f"load average {os.getloadavg()}", flush=True)
    runs = [("build", []), *[("search", ["--word-bits", str(b)]) for b in WIDTHS], ("faiss", []), ("faiss_full", [])]
    for phase, extra in runs:
        done = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                               "--phase", phase, *extra])
        if done.returncode:
            return done.returncode
        name = f"search{extra[1]}" if extra else phase
        print(f"== {name} (load average {os.getloadavg()})\n{Path(args.dir, f'{name}.json').read_text()}",
              flush=True)
    print(f"load average {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
