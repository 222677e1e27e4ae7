"""The encoder's settings and their defaults, defined once: `CrossLayerEncoder`'s signature and the command line
both read them from `ENCODER_DEFAULTS`; the retrieval commands (`index build`, `extract`, `search`) start from
`RETRIEVAL_DEFAULTS` instead where a backbone has them."""

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
                    fit-set trap and the warning that guards it. The retrieval commands use RETRIEVAL_DEFAULTS.
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


@dataclass(frozen=True)
class RetrievalDefaults:
    """What the retrieval commands use where an option is not given, for one backbone.

    layers:   the (layer t, layer t+1) pair `index build` / `extract` encode with when --layers is not given.
    pca_dim:  their PCA dimension when the pair is `layers` and --pca-dim is not given (another pair keeps the
              encoder default: a pca_dim is measured for one pair).
    channels: the guidance channels `search` compares per query when --channels is not given (None: all).
    """

    layers: tuple[str, str]
    pca_dim: int | None
    channels: int | None


# Chosen over layer pair x pca_dim x channels (benchmarks/results/code_size.md): on SMVS with 10,387 distractors,
# features.16 x features.17 at pca_dim 128 with all 320 channels had the best mAP of the 60 configurations (0.626 at
# 5,160 bytes an image in the compact format; the paper's pair, full rotation: 0.557 at 51,360), and it does not fall
# into the fit-set trap (bench_fit_set.py). Its SVM accuracy is 2.5 points below the paper's pair on cub100 (and 1.5
# above on scene15), so the classification eval and `CrossLayerEncoder()` keep ENCODER_DEFAULTS; backbones not listed
# here use ENCODER_DEFAULTS for retrieval too.
RETRIEVAL_DEFAULTS = {
    "mobilenet_v2": RetrievalDefaults(layers=("features.16", "features.17"), pca_dim=128, channels=None),
}


# the masked search's channels where no retrieval default applies (the paper's setting; `ImageIndex.search`)
SEARCH_CHANNELS = 50


def retrieval_channels(backbone: str, layers) -> int | None:
    """The guidance channels `search` compares by default in an index of this backbone and layer pair: the
    retrieval default when the pair is the retrieval one (an index built before, with the paper's pair, keeps
    SEARCH_CHANNELS)."""
    chosen = RETRIEVAL_DEFAULTS.get(backbone)
    return chosen.channels if chosen is not None and tuple(layers) == chosen.layers else SEARCH_CHANNELS


def retrieval_encoder_settings(backbone: str, layers, pca_dim, pca_dim_given: bool) -> tuple:
    """(layers, pca_dim) a retrieval command encodes with: `RETRIEVAL_DEFAULTS` of the backbone fill in the layers
    when `layers` is None, and the pca_dim when it was not given and the pair is the retrieval one."""
    chosen = RETRIEVAL_DEFAULTS.get(backbone)
    if chosen is None:
        return layers, pca_dim
    if layers is None:
        layers = chosen.layers
    if not pca_dim_given and tuple(layers) == chosen.layers:
        pca_dim = chosen.pca_dim
    return tuple(layers), pca_dim
