#!/usr/bin/env python3
"""In-place development build: compiles crosslayer._core, libcrosslayer (the C API), its CMake package and, with
onnxruntime's headers, libcrosslayer_ortops into python/crosslayer/ so `PYTHONPATH=python` works.

    python tools/dev_build.py [--cuda AUTO|ON|OFF] [--cuda-archs 80;90] [--werror] [--build-dir build/dev]
                              [--blas scipy-openblas32|system] [--ort-include DIR | --no-ort]

The build is installed (cmake --install) into a staging folder and its `crosslayer/` part copied into
python/crosslayer/, so the in-place package has the wheel's layout: crosslayer.cmake_dir() and
crosslayer.ort_ops_library() work the same in a checkout and in site-packages.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "crosslayer"
# CI and the tests take onnxruntime's C headers from the shared vendor folder beside the repository.
DEFAULT_ORT_INCLUDE = ROOT.parent / "shared" / "vendor" / "onnxruntime" / "include"
# What the build installs into the package folder (all git-ignored); removed before each copy so nothing stale stays.
BUILT_PATTERNS = ("_core*.so", "libcrosslayer*.so*")
BUILT_FOLDERS = ("include", "share")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", default=os.environ.get("CROSSLAYER_CUDA", "AUTO"), choices=["AUTO", "ON", "OFF"])
    parser.add_argument("--werror", action="store_true")
    parser.add_argument("--cuda-archs", default=None, help="CUDA architectures, e.g. 90 or '80;90' (CMake default)")
    parser.add_argument("--blas", default=os.environ.get("CROSSLAYER_BLAS", "scipy-openblas32"),
                        choices=["scipy-openblas32", "system"])
    ort = parser.add_mutually_exclusive_group()
    ort.add_argument("--ort-include", default=os.environ.get("CROSSLAYER_ORT_INCLUDE_DIR"),
                     help=f"onnxruntime C API headers (default: {DEFAULT_ORT_INCLUDE} when it exists)")
    ort.add_argument("--no-ort", action="store_true", help="do not build the onnxruntime custom-op library")
    parser.add_argument("--build-dir", default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    build = Path(args.build_dir or ROOT / "build" / f"dev-cuda-{args.cuda.lower()}")
    ort_include = "" if args.no_ort else (args.ort_include or (str(DEFAULT_ORT_INCLUDE) if DEFAULT_ORT_INCLUDE.is_dir() else ""))
    import pybind11

    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DCROSSLAYER_CUDA={args.cuda}", f"-DCROSSLAYER_WERROR={'ON' if args.werror else 'OFF'}",
        f"-DCROSSLAYER_BLAS={args.blas}", f"-DCROSSLAYER_ORT_INCLUDE_DIR={ort_include}",
    ]
    if args.cuda_archs:
        configure.append(f"-DCROSSLAYER_CUDA_ARCHS={args.cuda_archs}")
    subprocess.run(configure, check=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(args.jobs)], check=True)
    stage = build / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    subprocess.run(["cmake", "--install", str(build), "--prefix", str(stage)], check=True, stdout=subprocess.DEVNULL)
    staged = stage / "crosslayer"
    for pattern in BUILT_PATTERNS:
        for old in PACKAGE.glob(pattern):
            old.unlink()
    for folder in BUILT_FOLDERS:
        shutil.rmtree(PACKAGE / folder, ignore_errors=True)
    copied = []
    for item in sorted(staged.iterdir()):
        if item.is_dir():
            shutil.copytree(item, PACKAGE / item.name)
        else:
            shutil.copy2(item, PACKAGE / item.name)
        copied.append(item.name)
    print(f"built {', '.join(copied)} -> python/crosslayer/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
