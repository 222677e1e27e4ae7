"""The worker bundle: the encoder file and the exported ONNX backbone, as bytes in Ray's object store, so that
workers encode images with onnxruntime alone — no torch, no weights package, no export cache."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crosslayer._atomic import atomic_write
from crosslayer.errors import FormatError


@dataclass(frozen=True)
class WorkerBundle:
    encoder_file: bytes
    model: bytes
    sha256: str  # of both, checked where they land

    @classmethod
    def of(cls, encoder, encoder_path) -> "WorkerBundle":
        """The bundle of a fitted encoder saved at `encoder_path` (its backbone exported here if not cached)."""
        encoder_bytes = Path(encoder_path).read_bytes()
        model = encoder.backbone_model()
        return cls(encoder_bytes, model, _digest(encoder_bytes, model))

    def load(self, threads: int, batch_size: int | None = None):
        """The encoder, on this machine, running the bundled model with `threads` onnxruntime and pooling threads."""
        from crosslayer.encoder import CrossLayerEncoder

        if _digest(self.encoder_file, self.model) != self.sha256:
            raise FormatError("worker bundle: checksum mismatch (damaged in transit)")
        # one copy per bundle and machine, shared by its actors (and by reruns): written atomically, checked on use
        folder = Path(tempfile.gettempdir()) / f"crosslayer-bundle-{self.sha256[:16]}"
        folder.mkdir(exist_ok=True)
        for name, data in (("encoder.xle", self.encoder_file), ("backbone.onnx", self.model)):
            file = folder / name
            if not file.is_file() or hashlib.sha256(file.read_bytes()).digest() != hashlib.sha256(data).digest():
                with atomic_write(file) as handle:
                    handle.write(data)
        options = {"threads": threads, "decode_workers": 1}
        if batch_size is not None:
            options["batch_size"] = batch_size
        encoder = CrossLayerEncoder.load(folder / "encoder.xle", **options)
        encoder.use_backbone_model(folder / "backbone.onnx")
        return encoder


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(hashlib.sha256(part).digest())
    return sha.hexdigest()
