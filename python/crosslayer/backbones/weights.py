"""Finding and verifying pretrained weights: a pinned file inside an installed package, or a user-supplied file."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from crosslayer.backbones.registry import BackboneSpec

RANDOM_WEIGHTS = "random"  # untrained weights (seeded), for tests and timing only


class WeightsError(RuntimeError):
    """Pretrained weights are missing, or a file is not the one that was pinned."""


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_weights_path(spec: BackboneSpec) -> Path:
    """The weights file shipped in the backbone's weights package (located without importing the package)."""
    source = spec.weights
    if source.package is None:
        raise WeightsError(f"{spec.name}: no pretrained weights ship with a package; {source.install_hint}")
    found = importlib.util.find_spec(source.package)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(f"{spec.name}: weights package {source.package!r} is not installed; {source.install_hint}")
    path = Path(list(found.submodule_search_locations)[0]) / source.relative_path
    if not path.is_file():
        raise WeightsError(f"{spec.name}: {path} is missing from {source.package!r}; reinstall: {source.install_hint}")
    return path


def resolve_weights(spec: BackboneSpec, weights=None) -> tuple[Path | None, str]:
    """(file or None for random weights, identity used in cache keys). Pinned files are checked against their hash."""
    if weights == RANDOM_WEIGHTS:
        return None, RANDOM_WEIGHTS
    if weights is None:
        path = packaged_weights_path(spec)
        digest = file_sha256(path)
        if digest != spec.weights.sha256:
            raise WeightsError(f"{spec.name}: {path} has sha256 {digest}, expected {spec.weights.sha256}")
        return path, digest
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights: {path} is not a file")
    return path, file_sha256(path)


def available(spec: BackboneSpec) -> bool:
    """Whether pretrained weights can be found without a user file."""
    try:
        packaged_weights_path(spec)
    except WeightsError:
        return False
    return True
