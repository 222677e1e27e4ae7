"""Evaluation methods: their parameters, what they need from the backbone, their cache keys, and how one batch of
backbone outputs becomes their stored rows.

Method families and where their rows come from:
    global, sum-spm, max-spm, crosslayer*      one network pass over the whole image at `side` ("main" pass)
    jitter                                     10 crops (4 corners + centre, mirrored) per image ("jitter" pass)
    aconv / aconv-fast                         region embeddings at `aconv_side` ("aconv" / "aconv-fast" passes),
                                               then a guidance layer trained on the training split; aconv is the
                                               paper's (each region cropped and embedded, ~24x a pass), aconv-fast
                                               an APPROXIMATION (windows of one whole-image pass, no region crops,
                                               so none of the crops' change of scale and context)
    scfv                                       the main pass, with a dictionary learnt on the PCA sample (eval/scfv.py)
    fc-fc, conv-fc                             Table 5: one "regions-fast" pass at `aconv_side` (eval/cross_fc.py)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from crosslayer._validate import check_positive_int
from crosslayer.errors import UsageError

METHODS = ("global", "jitter", "sum-spm", "max-spm", "crosslayer", "crosslayer-sign", "crosslayer-max", "aconv", "aconv-fast",
           "scfv", "fc-fc", "conv-fc")
CROSSLAYER_METHODS = ("crosslayer", "crosslayer-sign", "crosslayer-max")
SPM_METHODS = ("sum-spm", "max-spm")
SPM_LAYERS = ("t", "t1", "both")
EMBEDDING = "embedding"
ACONV_METHODS = ("aconv", "aconv-fast")
CROSS_FC_METHODS = ("fc-fc", "conv-fc")
DEFAULT_FIT_IMAGES = 256
DEFAULT_SEED = 0


@dataclass(frozen=True)
class MethodConfig:
    method: str
    layers: tuple | None = None  # (local layer t, a later guidance layer at its stride); None: the default pair
    pca: bool = True
    l2: bool = True
    power: bool = True
    spm_levels: tuple = (0, 1, 2)
    spm_layer: str = "t1"
    jitter_crop: float = 0.875  # crop side / enlarged image side; crops are fed at `side` (224 of 256, as the paper)
    aconv_side: int = 512
    aconv_region: int = 128
    aconv_stride: int = 32
    aconv_region_side: int = 224  # network input side of one region crop (exact aconv)
    aconv_pca_dim: int = 256
    aconv_filters: int = 100
    aconv_epochs: int = 50
    aconv_lr: float = 0.01
    fit_images: int = DEFAULT_FIT_IMAGES  # training images sampled to fit the PCAs
    seed: int = DEFAULT_SEED  # PCA sample, AConv training, and the network itself for "random" weights
    scfv_atoms: int = 100  # SCFV dictionary size (Liu et al.'s)
    scfv_alpha: float = 0.1  # SCFV lasso weight, for local features of unit RMS norm
    fc_guidance: str = "softmax"  # fc-fc: the region logits after "softmax" or "relu"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("aconv_side", "aconv_region", "aconv_stride", "aconv_region_side", "aconv_pca_dim",
                     "aconv_filters", "aconv_epochs", "fit_images", "scfv_atoms"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), name))
        object.__setattr__(self, "seed", check_positive_int(self.seed, "seed", minimum=0))
        if isinstance(self.aconv_lr, bool) or not isinstance(self.aconv_lr, (int, float, np.floating, np.integer)):
            raise TypeError(f"aconv_lr: expected a number, got {type(self.aconv_lr).__name__}")
        if not (math.isfinite(self.aconv_lr) and self.aconv_lr > 0):
            raise UsageError(f"aconv_lr: expected a positive finite learning rate, got {self.aconv_lr}")
        from crosslayer.eval.cross_fc import GUIDANCES
        from crosslayer.eval.scfv import check_alpha

        object.__setattr__(self, "scfv_alpha", check_alpha(self.scfv_alpha))
        if self.fc_guidance not in GUIDANCES:
            raise UsageError(f"fc_guidance: expected one of {GUIDANCES}, got {self.fc_guidance!r}")
        if self.spm_layer not in SPM_LAYERS:
            raise UsageError(f"spm_layer: expected one of {SPM_LAYERS}, got {self.spm_layer!r}")
        levels = tuple(int(level) for level in self.spm_levels)
        if not levels or any(level < 0 or level > 4 for level in levels) or len(set(levels)) != len(levels):
            raise UsageError(f"spm_levels: expected distinct levels in 0..4, got {self.spm_levels!r}")
        object.__setattr__(self, "spm_levels", levels)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(str(layer) for layer in self.layers))
        if not 0.25 <= self.jitter_crop <= 1.0:
            raise UsageError(f"jitter_crop: expected a fraction in [0.25, 1], got {self.jitter_crop}")
        if self.aconv_region > self.aconv_side or self.aconv_region % self.aconv_stride:
            raise UsageError(f"aconv_region: must fit in aconv_side ({self.aconv_side}) and be a multiple of "
                             f"aconv_stride ({self.aconv_stride}), got {self.aconv_region}")
        if (self.aconv_side - self.aconv_region) % self.aconv_stride:
            raise UsageError("aconv_side: (aconv_side - aconv_region) must be a multiple of aconv_stride")

    # ---- which pass, which keys -----------------------------------------------------------------------------------
    @property
    def pass_kind(self) -> str:
        if self.method == "jitter":
            return "jitter"
        if self.method in ("aconv", "aconv-fast"):
            return self.method
        if self.method in CROSS_FC_METHODS:
            from crosslayer.eval.cross_fc import PASS_KIND

            return PASS_KIND
        return "main"

    def check_backbone(self, spec) -> None:
        """The checks that need the backbone, so a bad setting fails before any extraction."""
        if self.method in CROSSLAYER_METHODS or self.method in SPM_METHODS or self.method == "scfv":
            resolve_layers(self, spec)
        if self.method in CROSS_FC_METHODS:
            from crosslayer.eval import cross_fc

            cross_fc.check_backbone(self, spec)
        if self.method in ACONV_METHODS:
            output = spec.output_for(self.method)
            channels = spec.output_channels(output)
            if self.aconv_pca_dim > channels:
                raise UsageError(f"aconv_pca_dim: at most the {channels} channels of {spec.name}'s {output}, "
                                 f"got {self.aconv_pca_dim}")

    def relevant(self) -> dict:
        """The parameters that change this method's rows (the cache key covers these). `seed` and `fit_images` enter
        only when they differ from the defaults, so stores written before they were keyed keep their keys; `seed` is
        kept for every method because with "random" weights it seeds the network itself."""
        params = {"method": self.method}
        if self.seed != DEFAULT_SEED:
            params.update(seed=self.seed)
        if self.fit_images != DEFAULT_FIT_IMAGES and (needs_pca(self) or self.method in ACONV_METHODS):
            params.update(fit_images=self.fit_images)
        if self.method in CROSSLAYER_METHODS:
            params.update(layers=self.layers, pca=self.pca)
            if self.method != "crosslayer-sign":
                params.update(l2=self.l2, power=self.power)
        elif self.method in SPM_METHODS:
            params.update(layers=self.layers, spm_levels=list(self.spm_levels), spm_layer=self.spm_layer)
        elif self.method == "jitter":
            # crops fed at the network's side (image enlarged by 1/jitter_crop first), not at the crop's own side
            params.update(jitter_crop=self.jitter_crop, jitter_input="side")
        elif self.method == "scfv":
            params.update(layers=self.layers, pca=self.pca, scfv_atoms=self.scfv_atoms, scfv_alpha=self.scfv_alpha)
        elif self.method in CROSS_FC_METHODS:
            params.update(aconv_side=self.aconv_side, aconv_region=self.aconv_region, aconv_stride=self.aconv_stride)
            if self.method == "fc-fc":
                params.update(aconv_pca_dim=self.aconv_pca_dim, fc_guidance=self.fc_guidance)
            else:
                params.update(layers=self.layers)
        elif self.method in ("aconv", "aconv-fast"):
            params.update(aconv_side=self.aconv_side, aconv_region=self.aconv_region, aconv_stride=self.aconv_stride,
                          aconv_pca_dim=self.aconv_pca_dim)
            if self.method == "aconv":
                params.update(aconv_region_side=self.aconv_region_side)
        return params

    def key(self) -> str:
        text = json.dumps(self.relevant(), sort_keys=True)
        return f"{self.method}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def label(self) -> str:
        """A short human-readable name with the non-default options."""
        parts = [self.method]
        if self.layers is not None and self.method not in ("global", "jitter", "aconv", "aconv-fast", "fc-fc"):
            parts.append("x".join(self.layers))
        if self.method in SPM_METHODS:
            parts.append(f"L{''.join(map(str, self.spm_levels))}-{self.spm_layer}")
        if self.method == "fc-fc" and self.fc_guidance != "softmax":
            parts.append(f"{self.fc_guidance}-guidance")
        for flag in ("pca", "l2", "power"):
            if self.method in CROSSLAYER_METHODS and not getattr(self, flag):
                parts.append(f"no-{flag}")
        if self.method in ACONV_METHODS:
            if self.aconv_pca_dim != MethodConfig.aconv_pca_dim:
                parts.append(f"pca{self.aconv_pca_dim}")
            # AConv's PCA is its region reduction (aconv_pca_dim); l2 and power act on its guided pooling
            parts += [f"no-{flag}" for flag in ("l2", "power") if not getattr(self, flag)]
        return " ".join(parts)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        return data


def resolve_layers(config: MethodConfig, spec) -> tuple[str, str]:
    return spec.check_pair(config.layers)


def needs_pca(config: MethodConfig) -> bool:
    return (config.method in CROSSLAYER_METHODS or config.method == "scfv") and config.pca


def main_taps(configs, spec) -> list[str]:
    """Taps the main pass must output for these methods (in forward order)."""
    taps = set()
    for config in configs:
        if config.method in CROSSLAYER_METHODS or config.method in SPM_METHODS:
            taps.update(resolve_layers(config, spec))
        elif config.method == "scfv":
            taps.add(resolve_layers(config, spec)[0])
    return sorted(taps, key=spec.tap_position)


def row_layout(config: MethodConfig, spec) -> tuple[tuple, str]:
    """(row shape, dtype) of what the method stores per image."""
    from crosslayer.codes import words_per_plane
    from crosslayer.eval.spm import spm_dim

    if config.method in ("global", "jitter"):
        return (spec.output_channels(spec.output_for(config.method)),), "float32"
    if config.method in SPM_METHODS:
        local, guidance = resolve_layers(config, spec)
        chosen = {"t": [local], "t1": [guidance], "both": [local, guidance]}[config.spm_layer]
        return (sum(spm_dim(spec.channels[layer], config.spm_levels) for layer in chosen),), "float32"
    if config.method in CROSSLAYER_METHODS:
        local, guidance = resolve_layers(config, spec)
        dt, dk = spec.channels[local], spec.channels[guidance]
        if config.method == "crosslayer-sign":
            return (dk, 2, words_per_plane(dt)), "uint64"
        return (dk * dt,), "float16"
    if config.method == "scfv":
        return (config.scfv_atoms * spec.channels[resolve_layers(config, spec)[0]],), "float16"
    if config.method in CROSS_FC_METHODS:
        from crosslayer.eval.cross_fc import row_shape

        return row_shape(config, spec), "float16"
    grid = (config.aconv_side - config.aconv_region) // config.aconv_stride + 1
    return (grid * grid, config.aconv_pca_dim), "float16"


def encode_main(config: MethodConfig, spec, outputs: dict, pcas: dict, fitted=None) -> np.ndarray:
    """One batch of main-pass outputs -> this method's rows. fitted: what the method learnt besides the PCA (scfv:
    its (dictionary, scale))."""
    from crosslayer.eval import variants
    from crosslayer.eval.spm import spm_pool
    from crosslayer.l2 import l2_normalize
    from crosslayer.pooling import pool

    if config.method == "global":
        return l2_normalize(np.asarray(outputs[spec.output_for("global")], np.float32))
    local, guidance = resolve_layers(config, spec)
    if config.method in SPM_METHODS:
        pooling = "sum" if config.method == "sum-spm" else "max"
        chosen = {"t": [local], "t1": [guidance], "both": [local, guidance]}[config.spm_layer]
        parts = [spm_pool(outputs[layer], config.spm_levels, pooling) for layer in chosen]
        # each layer's vector is unit-norm; scaling keeps the concatenation unit-norm too
        return np.concatenate(parts, axis=1) / np.float32(np.sqrt(len(parts)))
    if config.method == "scfv":
        from crosslayer.eval.scfv import scfv_encode

        dictionary, scale = fitted
        pca = pcas.get((local, guidance)) if config.pca else None
        return scfv_encode(outputs[local], pca, dictionary, scale, config.scfv_alpha)
    x, a = outputs[local], outputs[guidance]
    pca = pcas.get((local, guidance)) if config.pca else None
    if config.method == "crosslayer-sign":
        return pool(x, a, pca, output="codes").bits
    if config.method == "crosslayer-max":
        return variants.cross_layer_max(x, a, pca, config.l2, config.power)
    if config.l2 and config.power:
        return pool(x, a, pca)
    return variants.cross_layer_sum(x, a, pca, config.l2, config.power)


def spm_layers(config: MethodConfig, spec) -> list[str]:
    """The layers an SPM method pools, in the order of its row's parts."""
    local, guidance = resolve_layers(config, spec)
    return {"t": [local], "t1": [guidance], "both": [local, guidance]}[config.spm_layer]
