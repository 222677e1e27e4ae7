"""The CMake CUDA switch, checked by configuring only (a full build is too slow for the test suite)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import crosslayer

ROOT = Path(__file__).resolve().parent.parent


def configure(tmp_path, cuda: str) -> subprocess.CompletedProcess:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    pybind11 = pytest.importorskip("pybind11")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    command = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), *generator,
               f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
               f"-DCROSSLAYER_CUDA={cuda}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_unknown_cuda_switch_is_rejected(tmp_path):
    result = configure(tmp_path, "BOGUS")
    assert result.returncode != 0
    assert "CROSSLAYER_CUDA must be AUTO, ON or OFF" in result.stdout + result.stderr


def test_off_configures_a_cpu_only_module(tmp_path):
    result = configure(tmp_path, "OFF")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CUDA kernels enabled" not in result.stdout
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert "CMAKE_CUDA_COMPILER:" not in cache


def test_on_requires_nvcc(tmp_path):
    result = configure(tmp_path, "ON")
    if shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists():
        assert result.returncode == 0, result.stdout + result.stderr
        assert "CUDA kernels enabled" in result.stdout
    else:
        assert result.returncode != 0
        assert "no CUDA compiler" in result.stdout + result.stderr


def test_build_info_reports_cuda_consistently():
    info = crosslayer.build_info()
    assert isinstance(info["cuda"], bool)
    from crosslayer import _native

    has_kernels = hasattr(_native.core, "pool_cuda")
    assert info["cuda"] == has_kernels
    assert bool(info["cuda_archs"]) == info["cuda"]
