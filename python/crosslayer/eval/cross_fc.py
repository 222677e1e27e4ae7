"""Table 5 of the paper: cross-layer pooling with fully-connected layers, in their closest MobileNetV2 analogues.

The paper's AConv view treats a fully-connected layer applied to dense image regions (128x128 at stride 32 of a
512x512 image, 13x13 regions) as a convolutional layer whose "spatial units" are the regions. Table 5 pools two such
layers (FC-FC), or an original conv layer and one such layer (Conv-FC), with eq. 2: P_k = sum_r a_rk x_r, then
per-channel L2 and the signed square root, as every cross-layer row.

    fc-fc    local x_r: the region embedding (the 1280-d pooled features.18 of region r; the paper's fc6, 4096-d),
             PCA-reduced to `aconv_pca_dim` (the paper reduces fc6 to 2,000);
             guidance a_r: the region's classifier outputs (the paper's fc8, 1000-d) after a softmax (default) or a
             ReLU (`fc_guidance`). The method assumes non-negative guidance ("indicator" maps); raw logits are
             signed. Softmax turns them into the class posteriors of the region, so every one of the 1000 channels
             pools with positive weights that peak where its class is most likely; ReLU keeps the logits' own
             scale but leaves a channel empty wherever its logit is negative in every region.
             Dimensions: 1000 x aconv_pca_dim.
    conv-fc  local x_r: the original conv layer t (features.17, 320-d; the paper's conv5-4) sum-pooled over the
             cells region r covers, then signed square root (as the paper; no PCA, which the paper does not
             mention here); guidance a_r: the region embedding (1280-d, post-ReLU6 so non-negative; the paper's
             fc6). Dimensions: 1280 x 320 (the paper's 4,096 x 512).

Region path: "fast" only, i.e. the network runs once on the whole aconv_side image and a region's embedding is the
mean of the last conv map over the window of cells it covers (`crosslayer.eval.regions.window_mean`, as
`aconv-fast`); the region logits are the network's own classifier applied to that embedding. The exact path (every
region cropped and run through the network at 224) costs 169 network passes per image, ~24x this one's network time, which the
shared 2-core machine cannot afford on cub100; so these rows have none of the crop "style mismatch" the paper
discusses, like every `aconv-fast` row.

The classifier must be linear in the pooled embedding (MobileNetV2, EfficientNet-Lite0): it is read off the network
as logits = embedding @ weight + bias and checked to be linear; VGG/AlexNet (whose classifier takes the whole
pooled map through fc6/fc7) are refused.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import UsageError

PASS_KIND = "regions-fast"
METHODS = ("fc-fc", "conv-fc")
GUIDANCES = ("softmax", "relu")
REGIONS = "regions"  # (n, R, C_last) region embeddings
REGION_LOCAL = "region-local"  # (n, R, C_t) signed square root of layer t summed over each region
CLASSIFIER = "classifier"  # name of the (weight, bias) entry beside the PCAs
LINEAR_CLASSIFIERS = ("mobilenet_v2", "efficientnet_lite0")
CLASSES = 1000


def check_backbone(config, spec) -> None:
    if config.method == "fc-fc":
        if spec.architecture not in LINEAR_CLASSIFIERS:
            raise UsageError(f"method: fc-fc needs a classifier linear in the pooled embedding "
                             f"({', '.join(LINEAR_CLASSIFIERS)}); {spec.name} has fully-connected layers on the "
                             "whole pooled map")
        channels = spec.channels[spec.taps[-1]]
        if config.aconv_pca_dim > channels:
            raise UsageError(f"aconv_pca_dim: at most the {channels} channels of {spec.name}'s embedding, "
                             f"got {config.aconv_pca_dim}")
    from crosslayer.eval.regions import fast_windows

    for tap in taps(config, spec):
        fast_windows(spec.stride[tap], config.aconv_region, config.aconv_stride)


def local_layer(config, spec) -> str:
    return spec.check_pair(config.layers)[0]


def taps(config, spec) -> list[str]:
    last = spec.taps[-1]
    return [local_layer(config, spec), last] if config.method == "conv-fc" else [last]


def row_shape(config, spec) -> tuple:
    last = spec.channels[spec.taps[-1]]
    if config.method == "fc-fc":
        return (CLASSES * config.aconv_pca_dim,)
    return (last * spec.channels[local_layer(config, spec)],)


def pass_group(config) -> str:
    """Methods with the same regions share one pass."""
    return f"{PASS_KIND}-{config.aconv_side}-{config.aconv_region}-{config.aconv_stride}"


def regions_pass(members, spec):
    """The `Pass` of a group: the whole image at aconv_side, reduced to per-region outputs."""
    from crosslayer.encoder import Pass
    from crosslayer.eval.regions import fast_windows, window_mean
    from crosslayer.images import prepare

    config = members[0]
    last = spec.taps[-1]
    wanted = sorted({tap for member in members for tap in taps(member, spec)}, key=spec.tap_index)
    locals_ = sorted({local_layer(m, spec) for m in members if m.method == "conv-fc"})

    def windows(tap):
        return fast_windows(spec.stride[tap], config.aconv_region, config.aconv_stride)

    def reduce(outputs):
        reduced = {REGIONS: window_mean(outputs[last], *windows(last))}
        for tap in locals_:
            pooled = window_mean(outputs[tap], *windows(tap))  # a mean is the sum up to a factor L2 removes
            reduced[f"{REGION_LOCAL}:{tap}"] = np.sign(pooled) * np.sqrt(np.abs(pooled))
        return reduced

    return Pass(prepare=lambda source: prepare(source, config.aconv_side, "square", spec.mean, spec.std),
                reduce=reduce, taps=tuple(wanted), embedding=False, input_side=config.aconv_side)


def load_classifier(spec, weights, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (C_last, classes), bias (classes,)) float32 of the backbone's classifier, read off the network."""
    import torch

    from crosslayer.backbones.export import _load_network
    from crosslayer.backbones.weights import resolve_weights

    path, _ = resolve_weights(spec, weights)
    net = _load_network(spec, path, seed)
    channels = spec.channels[spec.taps[-1]]
    with torch.inference_mode():
        def logits(embeddings):
            return net.classify(torch.as_tensor(embeddings, dtype=torch.float32)[:, :, None, None]).double().numpy()

        bias = logits(np.zeros((1, channels)))[0]
        weight = logits(np.eye(channels)) - bias
        probe = np.random.default_rng(seed).normal(size=(2, channels))
        if not np.allclose(logits(probe), probe @ weight + bias, rtol=1e-4, atol=1e-4 * np.abs(weight).max()):
            raise UsageError(f"method: fc-fc needs a classifier linear in the pooled embedding; {spec.name}'s is not")
    if bias.shape != (CLASSES,):
        raise UsageError(f"method: fc-fc expects {CLASSES} classifier outputs, {spec.name} has {bias.shape[0]}")
    return weight.astype(np.float32), bias.astype(np.float32)


def guidance_of(logits: np.ndarray, kind: str) -> np.ndarray:
    if kind == "softmax":
        shifted = logits - logits.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=-1, keepdims=True)
    if kind == "relu":
        return np.maximum(logits, 0)
    raise UsageError(f"fc_guidance: expected one of {GUIDANCES}, got {kind!r}")


def _pool_regions(local: np.ndarray, guidance: np.ndarray) -> np.ndarray:
    """local (n, R, D), guidance (n, R, K) -> (n, K*D): eq. 2 over regions, per-channel L2, signed square root."""
    from crosslayer.pooling import pool

    x = np.ascontiguousarray(np.asarray(local, np.float32).transpose(0, 2, 1))[..., None]  # (n, D, R, 1)
    a = np.ascontiguousarray(np.asarray(guidance, np.float32).transpose(0, 2, 1))[..., None]  # (n, K, R, 1)
    return pool(x, a)


def encode(config, spec, outputs: dict, pca, classifier) -> np.ndarray:
    """One batch of the regions pass -> this method's rows (float32)."""
    embeddings = np.asarray(outputs[REGIONS], np.float32)
    if config.method == "fc-fc":
        weight, bias = classifier
        guidance = guidance_of(embeddings @ weight + bias, config.fc_guidance)
        mean, projection = pca
        return _pool_regions((embeddings - mean) @ projection, guidance)
    return _pool_regions(outputs[f"{REGION_LOCAL}:{local_layer(config, spec)}"], embeddings)
