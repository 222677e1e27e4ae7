"""Guidance channel selection per query (paper Section 3.5): the channels of largest mean guidance activation."""

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
