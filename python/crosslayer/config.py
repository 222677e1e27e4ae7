"""The encoder's settings and their defaults, defined once: `CrossLayerEncoder`'s signature and the command line
both read them from `ENCODER_DEFAULTS`."""

from __future__ import annotations

from dataclasses import dataclass

# Input sides outside this range are refused before anything runs: below, the layer pair's maps vanish; above, one
# image's activations outgrow memory (MobileNetV2 at 4096: ~2.3 GB for one image; a 100000-pixel side would ask
# for hundreds of GB per batch). The method's sides are 224-512 and a 12-megapixel photo's long side is ~4000, so
# larger sides would only upsample.
MIN_SIDE = 32
MAX_SIDE = 4096
# the backbone's arithmetic (see CrossLayerEncoder): fp32 is the reference
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class EncoderConfig:
    """What an encoder computes (backbone .. seed) and how fast (batch_size, threads, decode_workers).

    backbone:       registry name of the network.
    layers:         (layer t, layer t+1) tap names; None: the backbone's default pair.
    side:           images are resized to side x side pixels.
    policy:         how an image becomes square: "square" (stretch), "center-crop" or "pad".
    pca_dim:        PCA output dimension Dt; None: the full decorrelating rotation (the paper), kept as the default
                    because it measured best on real images (benchmarks/results/two_stage.md: SMVS mAP 0.486 vs
                    0.335 at 64 components, scene15 accuracy 88.0% vs 86.0%); see `CrossLayerEncoder` for the
                    fit-set trap and the warning that guards it.
    fit_images:     at most this many images (a seeded sample) are used to learn the PCA.
    seed:           the PCA sample, and the network itself for "random" weights.
    batch_size:     images per backbone run.
    threads:        onnxruntime and pooling threads; 0: all cores.
    decode_workers: threads decoding and resizing images ahead of the backbone.
    precision:      the backbone's arithmetic: "fp32" (the reference), "bf16" (OpenVINO, optional package) or "int8"
                    (quantised, calibrated by the fit); both faster, and their codes differ from fp32's: see
                    CrossLayerEncoder.
    draft:          decode JPEGs of at least twice the side at a reduced scale (Pillow draft mode; changes pixels).
    """

    backbone: str = "mobilenet_v2"
    layers: tuple[str, str] | None = None
    side: int = 448
    policy: str = "square"
    pca_dim: int | None = None
    fit_images: int = 256
    seed: int = 0
    batch_size: int = 16
    threads: int = 0
    decode_workers: int = 2
    draft: bool = False
    precision: str = "fp32"


ENCODER_DEFAULTS = EncoderConfig()
