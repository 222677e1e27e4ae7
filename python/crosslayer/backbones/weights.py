"""Finding and verifying pretrained weights: a pinned file inside an installed package, or a user-supplied file."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from crosslayer.backbones.registry import BackboneSpec
from crosslayer.errors import CrossLayerError

RANDOM_WEIGHTS = "random"  # untrained weights (seeded), for tests and timing only


class WeightsError(CrossLayerError, RuntimeError):
    """Pretrained weights are missing, or a file is not the one that was pinned."""


def file_sha256(path) -> str:
    """The file's sha256 hex digest. Remembered per (file, inode, size, mtime): a weights file is hashed by the export,
    by the encoder's resume checks and when a network is built, and a VGG file takes seconds to hash."""
    path = Path(path).resolve()
    status = path.stat()
    return _sha256_of_version(str(path), status.st_ino, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: str, inode: int, size: int, mtime_ns: int) -> str:
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


def weights_identity(spec: BackboneSpec, weights=None, seed: int = 0) -> str:
    """What identifies the network's weights in an encoder file: the weights file's sha256 hex digest (the pinned one
    for the packaged weights, which `resolve_weights` verifies when the network is built), or "random:SEED"."""
    if weights == RANDOM_WEIGHTS:
        return f"{RANDOM_WEIGHTS}:{seed}"
    if weights is None:
        if spec.weights.package is None or spec.weights.sha256 is None:
            raise WeightsError(f"{spec.name}: no pretrained weights ship with a package; {spec.weights.install_hint}")
        return spec.weights.sha256
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights: {path} is not a file")
    return file_sha256(path)


def describe_weights(identity: str | None) -> str:
    """An identity from `weights_identity` in words, for error messages."""
    if identity is None:
        return "unrecorded weights"
    if identity.startswith(f"{RANDOM_WEIGHTS}:"):
        return f"untrained weights (seed {identity.split(':', 1)[1]})"
    return f"weights with sha256 {identity}"


def available(spec: BackboneSpec) -> bool:
    """Whether pretrained weights can be found without a user file."""
    try:
        packaged_weights_path(spec)
    except WeightsError:
        return False
    return True
