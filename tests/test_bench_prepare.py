"""benchmarks/bench_prepare.py end to end on a tiny data root, as a user runs it: the per-image comparison and the
--pipeline comparison both check their results first and print their tables."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _cli import child_env

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_prepare.py"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    (root / "cub100" / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = ["path,label,split"]
    for i, (height, width) in enumerate([(40, 52), (61, 33), (50, 50)]):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / f"cub100/images/{i}.jpg")
        rows.append(f"images/{i}.jpg,bird{i},train")
    (root / "cub100" / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def run(*arguments):
    result = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True,
                            env=child_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_per_image_comparison_checks_then_times(data_root):
    out = run("--data", str(data_root), "--images", "3", "--rounds", "1", "--side", "40")
    assert "check: fused kernel == Pillow resize + numpy normalise, bit for bit, 3 images x 3 policies" in out
    assert "| new fused kernel, avx512 |" in out or "| new fused kernel, scalar |" in out
    assert "old / new (scalar):" in out


@pytest.mark.filterwarnings("ignore:fit. 3 images:UserWarning")
def test_pipeline_comparison_checks_codes_then_times(data_root, tmp_path, backbone_cache):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from crosslayer.encoder import CrossLayerEncoder

    paths = sorted(str(p) for p in (data_root / "cub100" / "images").iterdir())
    encoder_file = tmp_path / "enc.xle"
    CrossLayerEncoder(weights="random", side=64, pca_dim=1, batch_size=2, threads=1).fit(paths).save(encoder_file)
    out = run("--data", str(data_root), "--pipeline", "--encoder", str(encoder_file), "--images", "3", "--rounds",
              "1", "--threads", "1")
    assert "check: codes of the old and the new preparation identical (3 images)" in out
    assert "new, 1 worker / new, 2 workers:" in out
