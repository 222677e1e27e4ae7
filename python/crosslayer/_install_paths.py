"""Where the installed native parts live, for programs that embed crosslayer without Python.

The wheel (and tools/dev_build.py's in-place build, which copies the same install) lays them out inside the package:

    crosslayer/libcrosslayer.so.X.Y                          the C API (crosslayer/crosslayer.h)
    crosslayer/libcrosslayer_ortops.so                       onnxruntime custom ops (only when built with
                                                             CROSSLAYER_ORT_INCLUDE_DIR)
    crosslayer/include/crosslayer/crosslayer.h
    crosslayer/share/cmake/crosslayer/crosslayerConfig.cmake find_package(crosslayer CONFIG REQUIRED)
"""

from __future__ import annotations

from pathlib import Path

from crosslayer.errors import CrossLayerError

PACKAGE_DIR = Path(__file__).resolve().parent


class NotBuiltError(CrossLayerError, FileNotFoundError):
    """A native part was not built into this installation of crosslayer; the message says how to build it."""


def _existing(path: Path, what: str, how: str) -> str:
    if not path.exists():
        raise NotBuiltError(f"{what} is not in this crosslayer installation ({path} is missing): {how}")
    return str(path)


_REBUILD = "reinstall with `pip install .` (or `python tools/dev_build.py` in a checkout)"


def cmake_dir() -> str:
    """The folder of crosslayerConfig.cmake: pass it as -Dcrosslayer_DIR=... to find_package(crosslayer CONFIG)."""
    return _existing(PACKAGE_DIR / "share" / "cmake" / "crosslayer", "the CMake package", _REBUILD)


def include_dir() -> str:
    """The folder holding crosslayer/crosslayer.h."""
    return _existing(PACKAGE_DIR / "include", "the C header", _REBUILD)


def library_path() -> str:
    """Path of libcrosslayer.so.X.Y, the shared library of the C API (the one the Python extension links)."""
    found = sorted(PACKAGE_DIR.glob("libcrosslayer.so.*"))
    if len(found) != 1:
        raise NotBuiltError(f"expected one libcrosslayer.so.* in {PACKAGE_DIR}, found {[p.name for p in found]}: {_REBUILD}")
    return str(found[0])


def ort_ops_library() -> str:
    """Path of libcrosslayer_ortops.so, onnxruntime's custom ops of domain ai.crosslayer:
    ``SessionOptions().register_custom_ops_library(crosslayer.ort_ops_library())``."""
    return _existing(
        PACKAGE_DIR / "libcrosslayer_ortops.so", "the onnxruntime custom-op library",
        "it is built only when onnxruntime's C headers are given: CROSSLAYER_ORT_INCLUDE_DIR=DIR pip install . "
        "(or `python tools/dev_build.py --ort-include DIR`)",
    )
