#!/usr/bin/env python3
"""In-place development build: compiles crosslayer._core into python/crosslayer/ so `PYTHONPATH=python` works.

    python tools/dev_build.py [--cuda AUTO|ON|OFF] [--cuda-archs 80;90] [--werror] [--build-dir build/dev]
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", default=os.environ.get("CROSSLAYER_CUDA", "AUTO"), choices=["AUTO", "ON", "OFF"])
    parser.add_argument("--werror", action="store_true")
    parser.add_argument("--cuda-archs", default=None, help="CUDA architectures, e.g. 90 or '80;90' (CMake default)")
    parser.add_argument("--build-dir", default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    build = Path(args.build_dir or ROOT / "build" / f"dev-cuda-{args.cuda.lower()}")
    import pybind11

    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DCROSSLAYER_CUDA={args.cuda}", f"-DCROSSLAYER_WERROR={'ON' if args.werror else 'OFF'}",
    ]
    if args.cuda_archs:
        configure.append(f"-DCROSSLAYER_CUDA_ARCHS={args.cuda_archs}")
    subprocess.run(configure, check=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(args.jobs)], check=True)
    built = glob.glob(str(build / "_core*.so"))
    if len(built) != 1:
        print(f"expected one _core*.so in {build}, found {built}", file=sys.stderr)
        return 1
    for old in glob.glob(str(ROOT / "python" / "crosslayer" / "_core*.so")):
        os.unlink(old)
    shutil.copy2(built[0], ROOT / "python" / "crosslayer")
    print(f"built {Path(built[0]).name} -> python/crosslayer/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
