"""Images in: decode (Pillow), orientation, colour handling, resize policy and ImageNet normalisation.

Any decoded image becomes HxWx3 uint8 RGB: EXIF orientation applied; grey, palette and CMYK converted; alpha composited
on white; 16-bit scaled to 8 bits. A file that cannot be used raises `ImageError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np

from crosslayer.config import MAX_SIDE, MIN_SIDE  # noqa: F401 (MAX_SIDE re-exported: tests and callers read it here)
from crosslayer.errors import CrossLayerError, UsageError

RESIZE_POLICIES = ("square", "center-crop", "pad")
DEFAULT_MAX_PIXELS = 100_000_000  # the decompression-bomb limit: larger images are refused before decoding


class ImageError(CrossLayerError, ValueError):
    """One image could not be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BadImagesError(CrossLayerError, ValueError):
    """Images of a set that cannot be used, all of them: ``failures`` lists (path, reason)."""

    def __init__(self, failures, advice: str = "remove or replace them"):
        self.failures = [(str(path), reason) for path, reason in failures]
        listed = "; ".join(f"{path}: {reason}" for path, reason in self.failures)
        super().__init__(f"images: {len(self.failures)} cannot be used ({advice}): {listed}")


def find_bad_images(sources, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 2) -> list:
    """(path, reason) of every source that does not decode, in input order (decoding only, no network)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(source):
        try:
            if isinstance(source, (str, Path)):
                load_image(source, max_pixels)
            else:
                as_rgb_array(source)
        except ImageError as error:
            return error.path, error.reason
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="crosslayer-check") as pool:
        return [found for found in pool.map(check, sources) if found is not None]


def _to_rgb_uint8(image, path) -> np.ndarray:
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data arrives as I;16 or widened to I (int32) by Pillow; both span 0..65535
        grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(path, f"unsupported image mode {mode!r}")
    return rgb


_pillow_limit_lock = threading.Lock()
_pillow_limit_users = 0  # decodes in progress in this process
_pillow_limit_saved = None  # Pillow's limit before the first of them


@contextlib.contextmanager
def _pillow_limit_at_least(pixels: int):
    """Raises Pillow's own decompression-bomb limit (the process-wide Image.MAX_IMAGE_PIXELS, above which it warns,
    and above twice which it refuses, on opening) to `pixels` while this decode runs, so that `max_pixels` decides.

    Decoding threads overlap: the first of them saves Pillow's value and the last restores it, under a lock, so no
    thread restores a value another one still relies on. (Warning filters are no way around Pillow's limit:
    `warnings.catch_warnings` is process-wide state too, and is not thread-safe at all.)"""
    from PIL import Image

    global _pillow_limit_users, _pillow_limit_saved
    with _pillow_limit_lock:
        if _pillow_limit_users == 0:
            _pillow_limit_saved = Image.MAX_IMAGE_PIXELS
        _pillow_limit_users += 1
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < pixels:
            Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        with _pillow_limit_lock:
            _pillow_limit_users -= 1
            if _pillow_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit_saved


def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None) -> np.ndarray:
    """Decodes an image file to HxWx3 uint8 RGB (EXIF orientation applied). Raises ImageError.

    Images of more than `max_pixels` pixels (by their header) are refused before decoding; Pillow's own limit
    (Image.MAX_IMAGE_PIXELS) does not apply, higher or lower. draft_side: a JPEG at least twice that on both sides
    is decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode: the DCT scaled, far less work), never below
    draft_side on either side; other formats and smaller JPEGs decode as without it. The pixels differ from a full
    decode resized (see `DRAFT_DEFAULT`)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise UsageError(f"max_pixels: expected a positive integer, got {max_pixels!r}")
    if draft_side is not None and (isinstance(draft_side, bool) or not isinstance(draft_side, (int, np.integer))
                                   or draft_side < 1):
        raise UsageError(f"draft_side: expected None or a positive integer, got {draft_side!r}")
    path = Path(path)
    too_large = f"exceeds the limit of {max_pixels} pixels (decompression bomb?)"
    try:
        with _pillow_limit_at_least(int(max_pixels)), Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(path, f"{width}x{height} pixels {too_large}")
            if width < 1 or height < 1:
                raise ImageError(path, f"empty image ({width}x{height})")
            if draft_side is not None and image.format == "JPEG" and min(width, height) >= 2 * draft_side:
                # both sides stay >= draft_side, whatever the EXIF orientation, so resizing still only shrinks
                image.draft(None, (int(draft_side), int(draft_side)))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb_uint8(image, path)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refused (or, with warnings turned into errors, warned about) a size beyond its limit, which is at
        # least max_pixels here: beyond ours too
        raise ImageError(path, f"image size {too_large}") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/ValueError
        raise ImageError(path, f"cannot decode: {error}") from None


def as_rgb_array(image, name: str = "image") -> np.ndarray:
    """Accepts HxWx3 uint8 arrays as given (the in-memory counterpart of `load_image`)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(name, f"expected an HxWx3 uint8 array, got {array.dtype} {array.shape}")
    return array


def resize(rgb: np.ndarray, side: int, policy: str = "square", fill=(124, 116, 104)) -> np.ndarray:
    """side x side x 3 uint8. "square" stretches (the paper's fixed square), "center-crop" scales the shorter side to
    `side` and crops the middle, "pad" scales the longer side to `side` and pads with `fill` (the ImageNet mean colour,
    which normalises to zero)."""
    from PIL import Image

    if policy not in RESIZE_POLICIES:
        raise UsageError(f"policy: expected one of {RESIZE_POLICIES}, got {policy!r}")
    height, width = rgb.shape[:2]
    image = Image.fromarray(rgb)
    if policy == "square":
        return np.asarray(image.resize((side, side), Image.BILINEAR))
    scale = side / min(height, width) if policy == "center-crop" else side / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    scaled = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    if policy == "center-crop":
        top, left = (new_h - side) // 2, (new_w - side) // 2
        return np.ascontiguousarray(scaled[top : top + side, left : left + side])
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = np.asarray(fill, np.uint8)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


def normalization(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float32 per channel: `normalize` computes x * scale - offset in float32, and so does the
    exported encoder graph (crosslayer.onnx_encoder), so both give the same network input bit for bit."""
    scale = np.asarray([1.0 / (255.0 * s) for s in std], np.float32)
    offset = np.asarray([m / s for m, s in zip(mean, std)], np.float32)
    return scale, offset


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, (x/255 - mean) / std per channel."""
    scale, offset = normalization(mean, std)
    # planar uint8 first: the float arithmetic then runs on contiguous memory (~10x faster than on the transposed
    # float view, the same values bit for bit)
    out = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    out *= scale[:, None, None]
    out -= offset[:, None, None]
    return out


def check_side(side, multiple: int = 1) -> int:
    """`side` as an int when it is in MIN_SIDE..MAX_SIDE (`crosslayer.config`) and a multiple of `multiple`."""
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not MIN_SIDE <= side <= MAX_SIDE:
        raise UsageError(f"side: expected an integer >= {MIN_SIDE} and <= {MAX_SIDE}, got {side!r}")
    if side % multiple:
        raise UsageError(f"side: this backbone needs a multiple of {multiple}, got {side}")
    return int(side)


# JPEG draft decoding is off unless asked for: it changes the network input (see benchmarks/results/extract.md for
# the sign agreement it keeps with the full decode).
DRAFT_DEFAULT = False


def load_resized(source, side: int, policy: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = DRAFT_DEFAULT,
                 stage_times=None) -> np.ndarray:
    """A file path or an HxWx3 uint8 array -> side x side x 3 uint8 RGB, decoded and resized as `prepare` does before
    normalising (the exported encoder graph's input). Raises ImageError.

    draft: decode large JPEGs at a reduced scale no smaller than `side` (`load_image`'s draft_side). stage_times: a
    `crosslayer.stage_times.StageTimes` that gets the seconds of decode and resize."""
    clock = time.perf_counter
    begin = clock()
    if isinstance(source, (str, Path)):
        rgb = load_image(source, max_pixels, draft_side=side if draft else None)
    else:
        rgb = as_rgb_array(source)
    decoded = clock()
    resized = resize(rgb, side, policy)
    if stage_times is not None:
        stage_times.add("decode", decoded - begin)
        stage_times.add("resize", clock() - decoded)
    return resized


def prepare(source, side: int, policy: str, mean, std, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = DRAFT_DEFAULT,
            stage_times=None) -> np.ndarray:
    """A file path or an HxWx3 uint8 array -> the network input 3 x side x side float32 (`load_resized`, then
    `normalize`). Raises ImageError.

    draft: decode large JPEGs at a reduced scale no smaller than `side` (`load_image`'s draft_side). stage_times: a
    `crosslayer.stage_times.StageTimes` that gets the seconds of decode, resize and normalise."""
    resized = load_resized(source, side, policy, max_pixels, draft, stage_times)
    scaled = time.perf_counter()
    network_input = normalize(resized, mean, std)
    if stage_times is not None:
        stage_times.add("normalise", time.perf_counter() - scaled)
    return network_input
