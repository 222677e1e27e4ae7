"""Benchmarks find their data from --data, by default ../shared/data beside the repository, and record set paths
relative to it."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from _cli import child_env

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_data_root_is_beside_the_repository_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _module("_data")
    assert data.DEFAULT_DATA == BENCHMARKS.parent.parent / "shared" / "data"
    assert data.data_set(tmp_path, "smvs") == tmp_path / "smvs"
    assert data.data_set(tmp_path, "/elsewhere/set") == Path("/elsewhere/set")
    assert data.relative_to_data(tmp_path, tmp_path / "cub100") == "cub100"
    assert data.relative_to_data(tmp_path / "root", "/elsewhere/set") == "/elsewhere/set"


@pytest.mark.parametrize("script", ["bench_extract.py", "reproduce_retrieval.py", "reproduce_classification.py"])
def test_benchmarks_take_data_with_the_default_beside_the_repository(script, tmp_path):
    env = child_env()  # the crosslayer under test (installed in CI), not the source tree
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--data" in done.stdout
    assert str(BENCHMARKS.parent.parent / "shared" / "data") in done.stdout.replace("\n", "").replace(" ", "") or \
        "../shared/data" in done.stdout
    assert "/work/shared" not in (BENCHMARKS / script).read_text()


def test_bench_extract_reads_its_images_under_the_data_root(tmp_path):
    bench = _module("bench_extract")
    (tmp_path / "cub100").mkdir()
    images = []
    for i in range(3):
        images.append(tmp_path / "cub100" / f"{i}.jpg")
    (tmp_path / "cub100" / "manifest.csv").write_text("path\n" + "".join(f"{p.name}\n" for p in images))

    class Args:
        data = tmp_path
        images = 2

    assert [Path(p) for p in bench._paths(Args)] == images[:2]


def test_bench_extract_variant_options_parse_and_refuse_unknown_ones():
    bench = _module("bench_extract")
    none = {"streams": None, "batch": None, "per_request": None, "dynamic": False, "kernelpool": False}
    assert bench.parse_variant("ov-bf16-s2-b32-r4") == ("ov-bf16", none | {"streams": 2, "batch": 32, "per_request": 4})
    assert bench.parse_variant("bf16-s1-kernelpool")[1] == none | {"streams": 1, "kernelpool": True}
    assert bench.parse_variant("ov-bf16-dynamic")[1] == none | {"dynamic": True}
    assert bench.parse_variant("ort-fp32") == ("ort-fp32", none)
    assert "8 image(s) a request" in bench.label("ov-bf16-r8") and "dynamic shapes" in bench.label("bf16-dynamic")
    assert "pooled by the fp32 kernel" in bench.label("bf16-kernelpool")
    for bad in ("fp32-s2", "bf16-fast", "gpu", "ort-fp32-r2", "fp32-dynamic"):
        with pytest.raises(SystemExit):
            bench.parse_variant(bad)
