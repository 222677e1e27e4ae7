"""The CMake CUDA switch, checked by configuring only (a full build is too slow for the test suite)."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import crosslayer

ROOT = Path(__file__).resolve().parent.parent


def configure(tmp_path, cuda: str, defines: dict | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    pybind11 = pytest.importorskip("pybind11")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    command = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), *generator,
               f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
               f"-DCROSSLAYER_CUDA={cuda}", *(f"-D{name}={value}" for name, value in (defines or {}).items())]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def nvcc_present() -> bool:
    return bool(shutil.which("nvcc")) or Path("/usr/local/cuda/bin/nvcc").exists()


def cmake_cache_options() -> dict:
    """The user-facing cache variables of CMakeLists.txt and their defaults: set(... CACHE STRING) and option()."""
    text = (ROOT / "CMakeLists.txt").read_text()
    options = dict(re.findall(r'^set\((CROSSLAYER_\w+) "([^"]*)" CACHE STRING', text, re.M))
    options.update(re.findall(r'^option\((CROSSLAYER_\w+) "[^"]*" (ON|OFF)\)', text, re.M))
    return options


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
    # without onnxruntime's headers (the default) the custom-op library is skipped, and it says so
    assert "the onnxruntime custom-op library is not built" in result.stdout


def test_on_requires_nvcc(tmp_path):
    result = configure(tmp_path, "ON")
    if nvcc_present():
        assert result.returncode == 0, result.stdout + result.stderr
        assert "CUDA kernels enabled" in result.stdout
    else:
        assert result.returncode != 0
        assert "no CUDA compiler" in result.stdout + result.stderr


def test_auto_compiles_cuda_when_nvcc_is_present(tmp_path):
    if not nvcc_present():
        pytest.skip("nvcc is not installed")
    result = configure(tmp_path, "AUTO")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CUDA kernels enabled for archs 80;90" in result.stdout


def test_auto_without_nvcc_builds_cpu_only_and_says_so(tmp_path):
    # CUDACXX naming a missing compiler stops CMake's search for nvcc (which also looks beyond PATH)
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if not (Path(d) / "nvcc").exists())
    env = {**os.environ, "PATH": path, "CUDACXX": str(tmp_path / "no-such-nvcc")}
    result = configure(tmp_path, "AUTO", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nvcc not found, building the CPU-only module" in result.stdout
    assert "CUDA kernels enabled" not in result.stdout


def test_pip_install_maps_every_cmake_option_to_its_environment_variable():
    """`X=... pip install .` must reach CMake for every option the README documents, with CMake's own default."""
    defines = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]["cmake"]["define"]
    options = cmake_cache_options()
    assert {"CROSSLAYER_CUDA", "CROSSLAYER_CUDA_ARCHS", "CROSSLAYER_WERROR"} <= set(options)
    for name, default in options.items():
        assert defines.get(name) == {"env": name, "default": default}, name


def test_cuda_archs_from_the_environment_reach_the_configure_step(tmp_path, monkeypatch):
    settings = pytest.importorskip("scikit_build_core.settings.skbuild_read_settings")
    monkeypatch.setenv("CROSSLAYER_CUDA_ARCHS", "90")
    monkeypatch.delenv("CROSSLAYER_CUDA", raising=False)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    defines = dict(settings.SettingsReader(pyproject, {}, state="wheel").settings.cmake.define)
    assert defines["CROSSLAYER_CUDA_ARCHS"] == "90"
    cuda = defines.pop("CROSSLAYER_CUDA")
    result = configure(tmp_path, cuda, defines)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CROSSLAYER_CUDA_ARCHS:STRING=90\n" in (tmp_path / "build" / "CMakeCache.txt").read_text()
    if nvcc_present():
        assert "CUDA kernels enabled for archs 90\n" in result.stdout


def test_build_info_reports_cuda_consistently():
    info = crosslayer.build_info()
    assert isinstance(info["cuda"], bool)
    from crosslayer import _native

    has_kernels = hasattr(_native.core, "pool_cuda")
    assert info["cuda"] == has_kernels
    assert bool(info["cuda_archs"]) == info["cuda"]


def test_unknown_blas_choice_is_rejected(tmp_path):
    result = configure(tmp_path, "OFF", {"CROSSLAYER_BLAS": "mkl"})
    assert result.returncode != 0
    assert "CROSSLAYER_BLAS must be scipy-openblas32 or system (got 'mkl')" in result.stdout + result.stderr


def test_system_blas_is_found_or_refused_with_a_reason(tmp_path):
    result = configure(tmp_path, "OFF", {"CROSSLAYER_BLAS": "system"})
    output = " ".join((result.stdout + result.stderr).split())
    if result.returncode == 0:
        assert "crosslayer: system BLAS" in output
        cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
        assert "CROSSLAYER_HAVE_CBLAS_SGEMM:INTERNAL=1" in cache
    else:
        assert "CROSSLAYER_BLAS=system" in output or "BLAS" in output


def test_ort_include_dir_without_the_header_is_rejected(tmp_path):
    missing = tmp_path / "no-headers"
    missing.mkdir()
    result = configure(tmp_path, "OFF", {"CROSSLAYER_ORT_INCLUDE_DIR": str(missing)})
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # CMake wraps long messages
    assert f"CROSSLAYER_ORT_INCLUDE_DIR='{missing}' has no onnxruntime_c_api.h" in output


def test_library_version_follows_pyproject():
    """The SONAME, the CMake package version and crosslayer.__version__ all come from pyproject.toml's version."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert crosslayer.__version__ == version
    major, minor, _ = version.split(".")
    assert Path(crosslayer.library_path()).name == f"libcrosslayer.so.{major}.{minor}"
    config_version = Path(crosslayer.cmake_dir()) / "crosslayerConfigVersion.cmake"
    assert f'set(PACKAGE_VERSION "{version}")' in config_version.read_text()
