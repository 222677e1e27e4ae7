"""Guidance channel selection per query (paper Section 3.5): the channels of largest mean guidance activation.

The paper's guidance layers are ReLU outputs, whose mean activation says how strongly a channel's part detector fires
in the query. On a signed guidance layer (MobileNetV2's linear bottlenecks features.15/16/17, about half their values
negative) the plain mean also ranks low a channel that fires strongly in some places and is negative elsewhere, so
`guidance_channel_means` offers two other rules: the mean of the positive part, or of |a|. All three are the same on a
non-negative guidance layer (the default pair's features.18, or the post-ReLU6 taps inside the blocks).
"""

from __future__ import annotations

import numpy as np

from crosslayer._validate import check_positive_int
from crosslayer.errors import UsageError
from crosslayer.search import select_channels


def check_channel_count(channels, dk: int) -> int | None:
    """`channels` as an int in [1, Dk], or None for all channels; a clear error otherwise."""
    if channels is None or (isinstance(channels, str) and channels == "all"):
        return None
    channels = check_positive_int(channels, "channels")
    if channels > dk:
        raise UsageError(f"channels: expected at most Dk={dk} guidance channels (this encoder has {dk}), got {channels}")
    return channels


def parse_channel_list(text: str, dk: int) -> list:
    """'10,20,all' -> [10, 20, None], each checked against Dk."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        values.append(check_channel_count(None if part == "all" else _as_int(part), dk))
    if not values:
        raise UsageError(f"channels: expected a comma-separated list of counts or 'all', got {text!r}")
    return values


def _as_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"channels: expected an integer or 'all', got {text!r}") from None


def channel_label(channels) -> str:
    return "all" if channels is None else str(channels)


CHANNEL_RULES = ("mean", "positive", "abs")


def guidance_channel_means(guidance: np.ndarray, rule: str = "mean") -> np.ndarray:
    """(n, Dk, H, W) guidance maps -> (n, Dk) float32 per-channel scores whose largest channels a query keeps.

    rule: "mean" the mean activation (the paper's rule, and what pooling's ``Codes.channel_mean`` holds), "positive"
    the mean of max(a, 0), "abs" the mean of |a|."""
    if rule not in CHANNEL_RULES:
        raise UsageError(f"rule: expected one of {', '.join(CHANNEL_RULES)}, got {rule!r}")
    maps = np.asarray(guidance)
    if maps.ndim != 4 or maps.shape[1] < 1 or maps.shape[2] * maps.shape[3] < 1:
        raise UsageError(f"guidance: expected (n, Dk, H, W) maps with Dk, H, W >= 1, got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.floating) and not np.issubdtype(maps.dtype, np.integer):
        raise UsageError(f"guidance: expected real numbers, got dtype {maps.dtype}")
    maps = maps.astype(np.float32, copy=False)
    if not np.isfinite(maps).all():
        raise UsageError("guidance: contains NaN or infinite values")
    if rule == "positive":
        maps = np.maximum(maps, 0)
    elif rule == "abs":
        maps = np.abs(maps)
    # float64 sums: the mean over many positions in float32 would round differently from the kernel's
    return maps.reshape(maps.shape[0], maps.shape[1], -1).mean(axis=2, dtype=np.float64).astype(np.float32)


def with_channel_rule(codes, guidance: np.ndarray, rule: str):
    """`codes` (a query's `crosslayer.Codes`) with the channel means that select its channels made by `rule` from
    its guidance maps (the codes' bits are unchanged: the rule only chooses which channels a search compares)."""
    from crosslayer.codes import Codes

    if not isinstance(codes, Codes):
        raise TypeError(f"codes: expected crosslayer.Codes, got {type(codes).__name__}")
    means = guidance_channel_means(guidance, rule)
    if means.shape != codes.channel_mean.shape:
        raise UsageError(f"guidance: {means.shape[1]} channels of {means.shape[0]} images do not match the codes' "
                         f"{codes.Dk} channels of {len(codes)} images")
    return Codes._from_valid_bits(codes.bits, means, codes.Dt, codes.identity, codes.keys)


def selection_masks(channel_mean: np.ndarray, counts) -> np.ndarray:
    """(len(counts), n, Dk) bool: per count and row, the channels `crosslayer.search` selects
    (`select_channels`: largest means, ties to the smaller index); None selects every channel."""
    means = np.asarray(channel_mean, dtype=np.float32)
    masks = np.zeros((len(counts),) + means.shape, dtype=bool)
    rows = np.arange(means.shape[0])[:, None]
    for i, count in enumerate(counts):
        if count is None:
            masks[i] = True
        else:
            masks[i][rows, select_channels(means, count)] = True
    return masks
