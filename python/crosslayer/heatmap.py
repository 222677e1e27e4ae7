"""Guidance heatmaps: where, in one image, the guidance channels that matter fire.

Cross-layer pooling weights layer t's local features by layer t+1's activation maps a_k, and the masked search
compares a query only on its `channels` guidance channels of largest mean activation. A heatmap sheet shows the image
as the network saw it (after the encoder's resize policy), then the sum of the selected maps (the region the masked
similarity attends to), then each selected map a_k, bilinearly upsampled to the image and overlaid in an
inferno-like colour map. The channel tiles share one colour scale, so their strengths compare at a glance; the sum
has its own. PNG, written atomically, with the settings in a text chunk holding a `crosslayer.formats` document
(`read_heatmap_settings`).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crosslayer._atomic import atomic_write
from crosslayer._validate import check_positive_int
from crosslayer.errors import FormatError, UsageError
from crosslayer.formats import document_text, parse_json

HEATMAP_FORMAT = "crosslayer-heatmap"
HEATMAP_VERSION = 2
_PNG_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, struct.error, zlib.error)


class HeatmapFormatError(FormatError):
    """A file is not a heatmap sheet, is of another version, or its settings chunk is damaged."""
DEFAULT_CHANNELS = 6
MAX_CHANNELS = 64  # beyond a few dozen tiles a sheet is no longer something to look at
TILE = 256
CAPTION = 58
PAD = 8
COLUMNS = 4

# matplotlib's "inferno" sampled at 9 evenly spaced points: luminance rises monotonically from black to pale yellow,
# so brighter always means stronger, in colour and in grey.
_INFERNO = np.array([
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164),
], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> (..., 3) uint8 colours, piecewise-linear through `_INFERNO`."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    knots = np.linspace(0.0, 1.0, len(_INFERNO))
    channels = [np.interp(values, knots, _INFERNO[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def upsample(activation: np.ndarray, size: int) -> np.ndarray:
    """(h, w) map -> (size, size) float32, bilinear (Pillow): cell (i, j) of the map covers the size/h x size/w
    block of the image it was computed from, and its value lands at that block's centre."""
    from PIL import Image

    activation = np.ascontiguousarray(activation, dtype=np.float32)
    if activation.ndim != 2:
        raise UsageError(f"activation: expected an (h, w) map, got shape {activation.shape}")
    return np.asarray(Image.fromarray(activation, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """`heat` (same height and width, values in [0, 1]) blended over the image in grey: the colour's opacity grows
    with the heat, so cold regions still show the image and hot ones show the colour. Grey, because an image's own
    reds and yellows would read as heat."""
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)[..., None]
    grey = np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    alpha = 0.2 + 0.65 * heat
    blended = (1.0 - alpha) * grey[..., None] + alpha * colormap(heat[..., 0])
    return np.rint(blended).astype(np.uint8)


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


# ---- layout --------------------------------------------------------------------------------------------------------

def heatmap_size(channel_count: int, tile: int = TILE) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of `channel_count` channel tiles (plus the image and the sum tiles)."""
    tiles = channel_count + 2
    columns = min(COLUMNS, tiles)
    rows = math.ceil(tiles / columns)
    return PAD + columns * (tile + PAD), PAD + rows * (tile + CAPTION + PAD)


def tile_origin(position: int, tile: int = TILE) -> tuple[int, int]:
    """(left, top) of tile `position`: 0 the image, 1 the sum, 2.. the channels in the order given."""
    row, column = divmod(position, COLUMNS)
    return PAD + column * (tile + PAD), PAD + row * (tile + CAPTION + PAD)


# ---- channels ------------------------------------------------------------------------------------------------------

def check_heatmap_path(out) -> Path:
    if Path(out).suffix.lower() != ".png":
        raise UsageError(f"out: expected a .png file name, got {str(out)!r}")
    return Path(out)


def check_channel_choice(dk: int, channels=DEFAULT_CHANNELS, channel_ids=None) -> None:
    """`channels` (a count in [1, min(Dk, MAX_CHANNELS)]) or explicit `channel_ids` (distinct, each in [0, Dk))."""
    if channel_ids is None:
        count = check_positive_int(channels, "channels")
        if count > min(dk, MAX_CHANNELS):
            raise UsageError(f"channels: expected at most {min(dk, MAX_CHANNELS)} (Dk={dk}, and a sheet shows at most "
                             f"{MAX_CHANNELS}), got {count}")
        return
    ids = list(channel_ids)
    if not ids:
        raise UsageError("channel_ids: expected at least one channel id")
    if len(ids) > MAX_CHANNELS:
        raise UsageError(f"channel_ids: a sheet shows at most {MAX_CHANNELS} channels, got {len(ids)}")
    for value in ids:
        check_positive_int(value, "channel_ids", minimum=0)
        if value >= dk:
            raise UsageError(f"channel_ids: {value} is not a guidance channel (expected ids in [0, {dk - 1}], Dk={dk})")
    if len(set(ids)) != len(ids):
        raise UsageError(f"channel_ids: expected distinct ids, got {ids}")


def choose_channels(channel_mean: np.ndarray, channels=DEFAULT_CHANNELS, channel_ids=None) -> np.ndarray:
    """The channels to show: `channel_ids` as given, or else the `channels` of largest mean activation by the masked
    search's own rule (`crosslayer.search.select_channels`: ties to the smaller id), so exactly the channels a search
    with this image as the query compares; those strongest first."""
    from crosslayer.search import select_channels

    means = np.asarray(channel_mean, dtype=np.float32).reshape(-1)
    check_channel_choice(len(means), channels, channel_ids)
    if channel_ids is not None:
        return np.asarray(channel_ids, dtype=np.int64)
    chosen = select_channels(means[None], channels)[0]
    return chosen[np.argsort(-means[chosen], kind="stable")].astype(np.int64)


# ---- the network's view --------------------------------------------------------------------------------------------

@dataclass
class GuidanceMaps:
    """One image as the network saw it and its guidance activations."""
    source: str
    rgb: np.ndarray  # (side, side, 3) uint8: the image after the encoder's resize policy
    guidance: np.ndarray  # (Dk, H, W) float32: layer t+1
    channel_mean: np.ndarray  # (Dk,) float32, as in the image's codes
    settings: dict  # the encoder's backbone, layers, side, policy


def guidance_maps(encoder, image) -> GuidanceMaps:
    """Runs `encoder`'s backbone on one image (a path or an HxWx3 uint8 array); raises ImageError for a bad one."""
    from crosslayer.images import as_rgb_array, load_image, resize
    from crosslayer.pooling import pool

    rgb = load_image(image) if isinstance(image, (str, Path)) else as_rgb_array(image)
    shown = resize(rgb, encoder.side, encoder.policy)
    (batch,) = list(encoder.activations([str(image) if isinstance(image, Path) else image]))
    local, guidance = batch.outputs[encoder.layers[0]], batch.outputs[encoder.layers[1]]
    # The channel means come from the pooling kernel, as in the codes the search ranks channels by: a numpy mean
    # rounds differently, and a near-tie could then select another channel. They do not depend on the PCA.
    channel_mean = pool(local, guidance, output="codes", num_threads=encoder.threads).channel_mean[0]
    source = str(image) if isinstance(image, (str, Path)) else f"array {rgb.shape}"
    settings = {**encoder.settings(), "weights": encoder.weights}  # None: the packaged weights
    return GuidanceMaps(source, shown, np.asarray(guidance[0], np.float32), channel_mean, settings)


# ---- rendering -----------------------------------------------------------------------------------------------------

def _network_view(maps: GuidanceMaps, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(maps.rgb).resize((size, size), Image.LANCZOS))


def attended_region(maps: GuidanceMaps, channel_ids, size: int) -> tuple[np.ndarray, float, float]:
    """The image as the network saw it (size x size) with the sum of the `channel_ids` maps overlaid, on its own
    colour scale: the region a masked similarity on those channels weighs most. Returns (rgb, scale low, high)."""
    total = upsample(maps.guidance[np.asarray(channel_ids, dtype=np.int64)].sum(axis=0), size)
    low, high = min(0.0, float(total.min())), float(total.max())
    return overlay(_network_view(maps, size), _scaled(total, low, high)), low, high


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or built without FreeType: the small bitmap font
        return ImageFont.load_default()


def render_heatmaps(maps: GuidanceMaps, channel_ids, out, tile: int = TILE) -> tuple[int, int]:
    """Writes the heatmap sheet of `channel_ids` (shown in that order) to `out` (.png); returns its (width, height)."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    out = check_heatmap_path(out)
    tile = check_positive_int(tile, "tile", minimum=16)
    dk = maps.guidance.shape[0]
    ids = [int(c) for c in np.asarray(channel_ids).reshape(-1)]
    check_channel_choice(dk, channel_ids=ids)

    image = _network_view(maps, tile)
    heats = np.stack([upsample(maps.guidance[c], tile) for c in ids])
    # one scale for every channel tile; activations below zero (a tap before its ReLU) keep their place below it
    low, high = min(0.0, float(heats.min())), float(heats.max())
    attended, total_low, total_high = attended_region(maps, ids, tile)
    tiles = [(image, "input as the network saw it", f"{maps.rgb.shape[1]}x{maps.rgb.shape[0]}, "
              f"{maps.settings.get('policy', '?')} resize", f"channel colours {low:.3g} .. {high:.3g}"),
             (attended, f"sum of these {len(ids)} channels", f"colours {total_low:.3g} .. {total_high:.3g}", "")]
    for c, heat in zip(ids, heats):
        tiles.append((overlay(image, _scaled(heat, low, high)), f"channel {c}",
                      f"mean {maps.channel_mean[c]:.3g}", f"max {maps.guidance[c].max():.3g}"))

    size = heatmap_size(len(ids), tile)
    sheet = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(15), _font(13)
    for position, (pixels, title, *details) in enumerate(tiles):
        left, top = tile_origin(position, tile)
        sheet.paste(Image.fromarray(pixels), (left, top))
        draw.text((left, top + tile + 3), title, fill=(0, 0, 0), font=font)
        for line, detail in enumerate(details):
            draw.text((left, top + tile + 22 + 17 * line), detail, fill=(80, 80, 80), font=small)

    meta = {"image": maps.source, **maps.settings, "channels": ids,
            "channel_mean": [float(maps.channel_mean[c]) for c in ids],
            "channel_colour_range": [low, high], "sum_colour_range": [total_low, total_high]}
    info = PngInfo()
    info.add_text(HEATMAP_FORMAT, document_text(HEATMAP_FORMAT, HEATMAP_VERSION, meta))
    with atomic_write(out) as handle:
        sheet.save(handle, format="PNG", pnginfo=info)
    return size


def read_heatmap_settings(path) -> dict:
    """The settings a heatmap sheet was drawn with (image, encoder settings, channels, colour ranges), from its text
    chunk, format, version and checksum checked (HeatmapFormatError otherwise)."""
    from PIL import Image

    try:
        with Image.open(path) as sheet:
            if sheet.format != "PNG":
                raise HeatmapFormatError(f"{path}: not a heatmap sheet (a {sheet.format} image, not a PNG)")
            text = sheet.text.get(HEATMAP_FORMAT)
    except HeatmapFormatError:
        raise
    except FileNotFoundError:
        raise HeatmapFormatError(f"{path}: no heatmap sheet here (file not found)") from None
    except (*_PNG_ERRORS, Image.DecompressionBombError) as exc:
        raise HeatmapFormatError(f"{path}: not a readable PNG ({type(exc).__name__}: {exc})") from None
    if text is None:
        raise HeatmapFormatError(f"{path}: not a heatmap sheet (no {HEATMAP_FORMAT} text chunk)")
    return parse_json(text.encode("utf-8", "surrogatepass"), path, HEATMAP_FORMAT, HEATMAP_VERSION,
                      "heatmap settings chunk", HeatmapFormatError)
