"""Images in: decode (libjpeg-turbo for plain JPEGs, Pillow for the rest), orientation, colour handling, resize
policy and ImageNet normalisation.

Any decoded image becomes HxWx3 uint8 RGB: EXIF orientation applied; grey, palette and CMYK converted; alpha composited
on white; 16-bit scaled to 8 bits. A file that cannot be used raises `ImageError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import functools
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
    # an RGB image is read as it is (convert("RGB") would copy it first)
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
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


# JPEG markers that start a frame (SOF0..SOF15 less DHT, JPG and DAC): the EXIF segment, if any, comes before them
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _has_exif_segment(data: bytes) -> bool | None:
    """Whether a JPEG's header holds an EXIF (APP1 "Exif") segment before its frame; None when the markers cannot
    be followed (then the caller lets Pillow decide)."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_FRAME_MARKERS or marker == 0xDA:
            return False
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
            return True
        position += 2 + length
    return None


def _decode_plain_jpeg(path: Path, max_pixels: int) -> np.ndarray | None:
    """A colour or grey JPEG without EXIF decoded by libjpeg-turbo through simplejpeg, or None for everything else
    (no simplejpeg, another format, EXIF orientation to apply, CMYK, any decoding complaint: Pillow then decodes it
    and reports what is wrong). Pillow decodes JPEGs with the same library and the same settings (accurate integer
    DCT, fancy upsampling, grey replicated to RGB), so the pixels are the same; it costs ~0.25 ms a 227 px CUB image
    against ~0.6 ms through Pillow, and decoding is the largest preparation stage left (benchmarks/results/extract.md).
    tests/test_images.py compares both decoders on every kind of JPEG this takes."""
    decoder = _simplejpeg()
    if decoder is None:
        return None
    try:
        with open(path, "rb") as file:
            if file.read(2) != b"\xff\xd8":
                return None
            file.seek(0)
            data = file.read()
    except OSError:
        return None  # Pillow's path names the problem
    if _has_exif_segment(data) is not False:
        return None
    try:
        height, width, colorspace, _ = decoder.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or height < 1 or width < 1 or height * width > max_pixels:
            return None
        if colorspace == "Gray":
            grey = decoder.decode_jpeg(data, colorspace="GRAY")
            return np.repeat(grey.reshape(height, width, 1), 3, axis=2)
        return decoder.decode_jpeg(data, colorspace="RGB")
    except (ValueError, OSError):
        return None


@functools.cache
def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


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
    if draft_side is None:
        pixels = _decode_plain_jpeg(path, max_pixels)
        if pixels is not None:
            return pixels
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
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the pixels when there is nothing to do
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


# The ImageNet mean colour, the "pad" policy's canvas: it normalises to (nearly) zero.
DEFAULT_FILL = (124, 116, 104)
_POLICY_CODES = {policy: code for code, policy in enumerate(RESIZE_POLICIES)}  # crosslayer_resize_policy
_PATH_CODES = {"auto": 0, "scalar": 1, "avx512": 2}  # crosslayer_prepare_path
_KERNEL_MAX_SIDE = 1 << 20  # crosslayer_prepare_image's limit (network sides are checked by `check_side`)


def _check_pixels(rgb, name: str = "rgb") -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 \
            or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise UsageError(f"{name}: expected an HxWx3 uint8 numpy array (any strides), got {got}")
    return rgb


def _check_resize(side, policy, fill) -> tuple:
    if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not 1 <= side <= _KERNEL_MAX_SIDE:
        raise UsageError(f"side: expected an integer in 1..{_KERNEL_MAX_SIDE}, got {side!r}")
    if policy not in RESIZE_POLICIES:
        raise UsageError(f"policy: expected one of {RESIZE_POLICIES}, got {policy!r}")
    try:
        colour = tuple(int(value) for value in fill)
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or not all(0 <= value <= 255 for value in colour):
        raise UsageError(f"fill: expected 3 integers in 0..255, got {fill!r}")
    return colour


def _check_slot(out, side: int) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (3, side, side) \
            or not out.flags.c_contiguous or not out.flags.writeable:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise UsageError(f"out: expected a writable C-contiguous float32 array of shape (3, {side}, {side}) (e.g. "
                         f"batch[i] of a C-contiguous batch), got {got}")
    return out


def _run_kernel(rgb, side, policy, fill, scale, offset, out, out_resized, path="auto") -> None:
    from crosslayer._native import core

    if path not in _PATH_CODES:
        raise UsageError(f"path: expected one of {tuple(_PATH_CODES)}, got {path!r}")
    try:
        core.prepare_image(rgb, int(side), _POLICY_CODES[policy], fill, tuple(float(v) for v in scale),
                           tuple(float(v) for v in offset), out, out_resized, _PATH_CODES[path])
    except ValueError as error:  # the arguments were checked above: an unsupported path is what is left
        raise UsageError(str(error)) from None


def resize(rgb: np.ndarray, side: int, policy: str = "square", fill=DEFAULT_FILL, path: str = "auto") -> np.ndarray:
    """side x side x 3 uint8. "square" stretches (the paper's fixed square), "center-crop" scales the shorter side to
    `side` and crops the middle, "pad" scales the longer side to `side` and pads with `fill` (the ImageNet mean colour,
    which normalises to zero). The integers are exactly Pillow's Image.resize(BILINEAR) ones
    (`crosslayer.reference.pillow_resize`), computed by the core's kernel (crosslayer/prepare_image.h); `rgb` may be
    any HxWx3 uint8 view. path: "auto", or "scalar"/"avx512" to force one implementation (tests)."""
    colour = _check_resize(side, policy, fill)
    resized = np.empty((int(side), int(side), 3), np.uint8)
    _run_kernel(_check_pixels(rgb), side, policy, colour, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), None, resized, path)
    return resized


def resize_normalize(rgb: np.ndarray, side: int, policy: str, mean, std, out: np.ndarray | None = None,
                     fill=DEFAULT_FILL, path: str = "auto") -> np.ndarray:
    """`normalize(resize(rgb, side, policy, fill), mean, std)` bit for bit, in one pass of the core's kernel, written
    into `out` (a writable C-contiguous float32 (3, side, side) array, e.g. one slot of a batch; a new array when
    None). Returns the array written. Releases the GIL while it runs."""
    colour = _check_resize(side, policy, fill)
    out = np.empty((3, int(side), int(side)), np.float32) if out is None else _check_slot(out, int(side))
    scale, offset = _normalization_of(tuple(mean), tuple(std))
    _run_kernel(_check_pixels(rgb), side, policy, colour, scale, offset, out, None, path)
    return out


def normalization(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float32 per channel: `normalize` computes x * scale - offset in float32, and so does the
    exported encoder graph (crosslayer.onnx_encoder), so both give the same network input bit for bit."""
    scale = np.asarray([1.0 / (255.0 * s) for s in std], np.float32)
    offset = np.asarray([m / s for m, s in zip(mean, std)], np.float32)
    return scale, offset


@functools.lru_cache(maxsize=16)
def _normalization_of(mean: tuple, std: tuple) -> tuple:
    scale, offset = normalization(mean, std)
    return tuple(float(v) for v in scale), tuple(float(v) for v in offset)


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


def _decode(source, side: int, max_pixels: int, draft: bool) -> np.ndarray:
    if isinstance(source, (str, Path)):
        return load_image(source, max_pixels, draft_side=side if draft else None)
    return as_rgb_array(source)


def load_resized(source, side: int, policy: str, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = DRAFT_DEFAULT,
                 stage_times=None) -> np.ndarray:
    """A file path or an HxWx3 uint8 array -> side x side x 3 uint8 RGB, decoded and resized as `prepare` does before
    normalising (the exported encoder graph's input). Raises ImageError.

    draft: decode large JPEGs at a reduced scale no smaller than `side` (`load_image`'s draft_side). stage_times: a
    `crosslayer.stage_times.StageTimes` that gets the seconds of decode and resize."""
    clock = time.perf_counter
    begin = clock()
    rgb = _decode(source, side, max_pixels, draft)
    decoded = clock()
    resized = resize(rgb, side, policy)
    if stage_times is not None:
        stage_times.add("decode", decoded - begin)
        stage_times.add("resize", clock() - decoded)
    return resized


def prepare(source, side: int, policy: str, mean, std, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = DRAFT_DEFAULT,
            stage_times=None, out: np.ndarray | None = None) -> np.ndarray:
    """A file path or an HxWx3 uint8 array -> the network input 3 x side x side float32: decoded, then resized and
    normalised in one pass (`resize_normalize`: bit for bit `normalize(load_resized(...))`). Raises ImageError.

    out: a writable C-contiguous float32 (3, side, side) array to write into (one slot of a batch: no per-image
    array, no stacking); a new array when None. Returns the array written. draft: decode large JPEGs at a reduced
    scale no smaller than `side` (`load_image`'s draft_side). stage_times: a `crosslayer.stage_times.StageTimes`
    that gets the seconds of decode and of the fused resize + normalise (under "resize")."""
    clock = time.perf_counter
    begin = clock()
    rgb = _decode(source, side, max_pixels, draft)
    decoded = clock()
    network_input = resize_normalize(rgb, side, policy, mean, std, out)
    if stage_times is not None:
        stage_times.add("decode", decoded - begin)
        stage_times.add("resize", clock() - decoded)
    return network_input
