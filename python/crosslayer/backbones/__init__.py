"""Backbones: the registry (no torch needed), ONNX export (torch) and the onnxruntime runner."""

from crosslayer.backbones.registry import BACKBONES, DEFAULT_BACKBONE, BackboneSpec, get_backbone
from crosslayer.backbones.weights import RANDOM_WEIGHTS, WeightsError

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "BackboneSpec", "get_backbone", "RANDOM_WEIGHTS", "WeightsError"]
