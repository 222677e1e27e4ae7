"""Builds the shared image indexes several benchmarks read (bench_code_size, bench_scale, bench_stage1,
classify_shared_index, bench_extract --reference): one fp32 encoder per layer pair, its PCA fitted on a seeded
sample of 800 TRAIN images of scene15 + cub100 (so the indexes serve classification as well as retrieval; the
encoder's fit uses 256 of them), then `crosslayer index build --encoder ... --embeddings` of the SMVS queries and
database, scene15 and cub100 (every image, both splits).

    PYTHONPATH=python python benchmarks/build_shared_indexes.py [--data ../shared/data] [--out DIR] [--pairs f17f18,f16f17]

--out defaults to $CROSSLAYER_SHARED_INDEXES, else ~/.cache/crosslayer/indexes; it gets OUT/mnv2-TAG.xle and
OUT/TAG/{smvs-queries,smvs-database,scene15,cub100}/. Resumable (index build resumes; a fitted encoder is kept).
About 4 minutes a pair on two idle cores (10,773 images at side 448).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import add_data_argument, data_set  # noqa: E402

from crosslayer.encoder import CrossLayerEncoder  # noqa: E402

PAIRS = {"f17f18": None, "f16f17": ("features.16", "features.17")}  # None: the backbone's default pair
SETS = (("smvs-queries", "smvs", "queries.csv"), ("smvs-database", "smvs", "database.csv"),
        ("scene15", "scene15", "manifest.csv"), ("cub100", "cub100", "manifest.csv"))
FIT_SAMPLE = 800


def default_out() -> Path:
    from crosslayer.backbones.export import cache_dir

    return Path(os.environ.get("CROSSLAYER_SHARED_INDEXES") or cache_dir() / "indexes")


def fit_sample(data: Path, seed: int = 0) -> list[str]:
    train = []
    for name in ("scene15", "cub100"):
        with open(data_set(data, name) / "manifest.csv", newline="") as handle:
            train += [str(data_set(data, name) / row["path"]) for row in csv.DictReader(handle) if row["split"] == "train"]
    random.Random(seed).shuffle(train)
    return sorted(train[:FIT_SAMPLE])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--out", default=None, help="where the indexes go (default: $CROSSLAYER_SHARED_INDEXES or "
                                                    "~/.cache/crosslayer/indexes)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"layer pairs to build, of {', '.join(PAIRS)}")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    for tag in [t.strip() for t in args.pairs.split(",") if t.strip()]:
        if tag not in PAIRS:
            raise SystemExit(f"--pairs: unknown {tag!r}; available: {', '.join(PAIRS)}")
        encoder_path = out / f"mnv2-{tag}.xle"
        if not encoder_path.exists():
            started = time.perf_counter()
            layers = {} if PAIRS[tag] is None else {"layers": PAIRS[tag]}
            encoder = CrossLayerEncoder(backbone="mobilenet_v2", side=448, **layers)
            encoder.fit(fit_sample(data), progress=True)
            encoder.save(encoder_path)
            print(f"{tag}: encoder fitted in {time.perf_counter() - started:.1f} s", flush=True)
        for name, folder, manifest in SETS:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "crosslayer", "index", "build", str(out / tag / name), "--images",
                            str(data_set(data, folder) / manifest), "--encoder", str(encoder_path), "--embeddings",
                            "--quiet"], check=True)
            print(f"{tag} {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
