"""crosslayer: cross-convolutional-layer pooling (Liu, Shen, van den Hengel, TPAMI 2017), fast.

Images -> two conv layers at one spatial layout (by default consecutive, t and t+1) -> P_k = sum_i a_ik x_i per
guidance channel -> per-channel L2 and signed square root (float) or 2-bit sign codes for popcount retrieval and
classification.
"""

from crosslayer._native import core as _core
from crosslayer._device import DeviceCodes
from crosslayer.codes import Codes, CodesFormatError, IdentityMismatchError
from crosslayer.errors import CrossLayerError, FormatError, UsageError
from crosslayer.pooling import pool
from crosslayer.search import gram, search, popcount_path, popcount_paths, set_popcount_path
from crosslayer.index import CodeIndex, CodeIndexError
from crosslayer._install_paths import NotBuiltError, cmake_dir, include_dir, library_path, ort_ops_library

__version__ = "0.4.0"


def build_info() -> dict:
    """What the compiled core was built with: version, CUDA and its archs, threads, popcount path, BLAS
    (``blas_choice``: the CROSSLAYER_BLAS build option; ``blas``: the library's own description)."""
    info = dict(_core.build_info())
    info["blas_choice"] = info["blas"]
    if info["blas_choice"] == "scipy-openblas32":
        import scipy_openblas32

        info["blas"] = scipy_openblas32.get_openblas_config()
    return info


def __getattr__(name):
    # The encoder pulls in onnxruntime and Pillow: imported on first use, so `import crosslayer` stays light.
    if name == "CrossLayerEncoder":
        from crosslayer.encoder import CrossLayerEncoder

        return CrossLayerEncoder
    raise AttributeError(f"module 'crosslayer' has no attribute {name!r}")


__all__ = [
    "Codes", "CodesFormatError", "DeviceCodes", "CrossLayerError", "FormatError", "UsageError", "pool", "build_info", "__version__", "gram", "search", "popcount_path",
    "popcount_paths", "set_popcount_path", "CodeIndex", "CodeIndexError", "CrossLayerEncoder", "IdentityMismatchError",
    "NotBuiltError", "cmake_dir", "include_dir", "library_path", "ort_ops_library",
]
