"""Loads the compiled core. Kept apart so every module imports the extension the same way."""

from __future__ import annotations

try:
    # Loads libscipy_openblas.so with RTLD_GLOBAL; _core links against that soname.
    import scipy_openblas32  # noqa: F401
except ImportError as exc:  # pragma: no cover - packaging error
    raise ImportError(
        "crosslayer needs the 'scipy-openblas32' package (its BLAS): pip install scipy-openblas32"
    ) from exc

try:
    from crosslayer import _core as core
except ImportError as exc:
    raise ImportError(
        "crosslayer's compiled extension (crosslayer._core) is not built or does not load "
        f"({exc}). Build and install it from the repository root with `pip install .` "
        "(or `python tools/dev_build.py` for an in-place development build)."
    ) from exc

__all__ = ["core"]
