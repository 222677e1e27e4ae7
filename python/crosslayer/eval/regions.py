"""Region embeddings for AConv: the backbone's pooled embedding of dense square regions of the image.

Exact: every region (e.g. 128x128 at stride 32 of a 512x512 image -> 13x13 regions) is cropped, resized to the
network's input side and embedded (the paper's AConv). Fast, an approximation of it: the network runs once on the
whole image and the embedding of a region is the mean of the last conv map over the window of cells the region
covers (4x4 cells at stride 1 of the 16x16 map). Those cells have seen the whole image's context at the whole
image's scale, not a crop magnified to the network's input side, so the fast version lacks the image-style mismatch
between regions and whole images the paper names for AConv's weakness on fine-grained birds; measured on subsets
(classification-scene15-subset20.md, classification-cub100-subset2.md).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from crosslayer.errors import UsageError


def region_grid(side: int, region: int, stride: int) -> int:
    return (side - region) // stride + 1


def window_mean(maps: np.ndarray, window: int, step: int) -> np.ndarray:
    """(n, C, H, W) -> (n, G*G, C): means of window x window cells at `step`, row-major positions."""
    maps = np.asarray(maps, np.float32)
    if window > maps.shape[2] or window > maps.shape[3]:
        raise UsageError(f"window: {window} cells do not fit a {maps.shape[2]}x{maps.shape[3]} map")
    views = sliding_window_view(maps, (window, window), axis=(2, 3))[:, :, ::step, ::step]  # (n, C, G, G, w, w)
    pooled = views.mean(axis=(4, 5))
    n, c = pooled.shape[:2]
    return np.ascontiguousarray(pooled.reshape(n, c, -1).transpose(0, 2, 1))


def fast_windows(network_stride: int, region: int, stride: int) -> tuple[int, int]:
    """(window, step) in cells of the last conv map for regions of `region` pixels at `stride` pixels."""
    if region % network_stride or stride % network_stride:
        raise UsageError(
            f"aconv_region/aconv_stride: fast region embeddings need multiples of the network stride {network_stride}, "
            f"got {region} and {stride}"
        )
    return region // network_stride, stride // network_stride


def region_crops(image: np.ndarray, region: int, stride: int, out_side: int) -> np.ndarray:
    """(side, side, 3) uint8 -> (G*G, out_side, out_side, 3) uint8 crops, row-major."""
    from PIL import Image

    side = image.shape[0]
    starts = range(0, side - region + 1, stride)
    crops = []
    for top in starts:
        for left in starts:
            crop = image[top : top + region, left : left + region]
            if out_side != region:
                crop = np.asarray(Image.fromarray(crop).resize((out_side, out_side), Image.BILINEAR))
            crops.append(crop)
    return np.stack(crops)
