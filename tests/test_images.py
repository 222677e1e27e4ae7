"""Image decoding, orientation, colour modes, limits and resize policies."""

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from crosslayer.images import ImageError, load_image, normalize, prepare, resize  # noqa: E402


def _photo(rng, height=24, width=40):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_rgb_formats_decode_to_uint8_rgb(tmp_path, rng, fmt, suffix):
    photo = _photo(rng)
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(photo).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    if fmt != "JPEG":
        np.testing.assert_array_equal(out, photo)


def test_grey_cmyk_alpha_palette_and_16bit(tmp_path, rng):
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, 2))

    Image.fromarray(_photo(rng)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").shape == (24, 40, 3)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = load_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 0], [255, 255, 255])

    deep = (np.arange(6 * 7).reshape(6, 7) * 1500).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(out[..., 0], np.round(deep / 257).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path, rng):
    photo = _photo(rng, 20, 30)
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").shape == (30, 20, 3)


def test_bad_files_raise_image_error_with_path(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="junk.jpg: not a recognised") as info:
        load_image(tmp_path / "junk.jpg")
    assert info.value.path.endswith("junk.jpg")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(good, max_pixels=2499)
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        prepare(np.zeros((5, 5), np.uint8), 32, "square", (0, 0, 0), (1, 1, 1))


def test_resize_policies(rng):
    photo = _photo(rng, 30, 60)
    for policy in ("square", "center-crop", "pad"):
        assert resize(photo, 32, policy).shape == (32, 32, 3)
    padded = resize(photo, 32, "pad", fill=(1, 2, 3))
    np.testing.assert_array_equal(padded[0, 0], [1, 2, 3])  # 60 wide -> 32x16 band in the middle
    assert not np.array_equal(padded[16, 0], [1, 2, 3])
    flat = np.full((30, 60, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize(flat, 32, "center-crop"), 77)
    with pytest.raises(ValueError, match="policy"):
        resize(photo, 32, "stretchy")


def test_normalize_matches_formula(rng):
    photo = _photo(rng, 5, 6)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (photo.astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(normalize(photo, mean, std), expected.transpose(2, 0, 1), atol=1e-5)


def _png_claiming(width, height):
    """A greyscale PNG whose header claims width x height, with no pixel data after it."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# Pillow still warns on opening an image beyond max_pixels (its limit is raised to ours), which is then refused
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_pixels_decides_not_pillows_own_limit(tmp_path, monkeypatch):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tiny)
    with pytest.raises(ImageError, match="10x10 pixels exceeds the limit of 99 pixels"):
        load_image(tiny, max_pixels=99)
    assert load_image(tiny, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(tiny, max_pixels=0)

    # 144M pixels: above Pillow's default warning limit (~89.5M), below twice it
    claims_144m = tmp_path / "claims.png"
    claims_144m.write_bytes(_png_claiming(12000, 12000))
    with pytest.raises(ImageError, match="12000x12000 pixels exceeds the limit of 100000000 pixels"):
        load_image(claims_144m)
    with pytest.raises(ImageError, match="cannot decode"):  # allowed through: it fails on its missing pixel data
        load_image(claims_144m, max_pixels=200_000_000)

    # Pillow's limit lowered below the image's size (it would refuse a 100-pixel image beyond 2 x 20) is not ours,
    # and stays as it was
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    assert load_image(tiny).shape == (10, 10, 3)
    assert Image.MAX_IMAGE_PIXELS == 20


def test_concurrent_decodes_leave_pillows_limit_as_it_was(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(tiny)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with ThreadPoolExecutor(4) as pool:
        decoded = list(pool.map(lambda limit: load_image(tiny, max_pixels=limit), [100, 1000, 10**9] * 20))
    assert all(d.shape == (10, 10, 3) and d[0, 0, 0] == 7 for d in decoded)
    assert Image.MAX_IMAGE_PIXELS == 20


def _pillow_decode(path):
    from PIL import ImageOps

    from crosslayer.images import _to_rgb_uint8

    with Image.open(path) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb_uint8(image, path)


@pytest.mark.parametrize("kind", ["444", "420", "422", "progressive", "grey", "one-pixel", "odd-size"])
def test_fast_jpeg_decode_gives_pillows_pixels(tmp_path, rng, kind):
    pytest.importorskip("simplejpeg")
    from crosslayer.images import _decode_plain_jpeg

    height, width = {"one-pixel": (1, 1), "odd-size": (37, 53)}.get(kind, (48, 64))
    smooth = np.cumsum(rng.integers(-8, 9, (height, width, 3)), axis=1)  # photo-like, so chroma subsampling matters
    photo = np.clip(smooth + 128, 0, 255).astype(np.uint8)
    image = Image.fromarray(photo).convert("L") if kind == "grey" else Image.fromarray(photo)
    options = {"444": {"subsampling": 0}, "422": {"subsampling": 1}, "420": {"subsampling": 2},
               "progressive": {"progressive": True}}.get(kind, {})
    path = tmp_path / f"{kind}.jpg"
    image.save(path, "JPEG", quality=90, **options)
    fast = _decode_plain_jpeg(path, 10**9)
    assert fast is not None, "this JPEG should take the fast path"
    np.testing.assert_array_equal(fast, _pillow_decode(path))
    np.testing.assert_array_equal(load_image(path), fast)


def test_fast_jpeg_decode_leaves_exif_cmyk_bombs_and_damage_to_pillow(tmp_path, rng):
    pytest.importorskip("simplejpeg")
    from crosslayer.images import _decode_plain_jpeg

    photo = _photo(rng, 20, 30)
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    image.convert("CMYK").save(tmp_path / "cmyk.jpg")
    image.save(tmp_path / "plain.jpg")
    data = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name in ("rot.jpg", "cmyk.jpg", "cut.jpg"):
        assert _decode_plain_jpeg(tmp_path / name, 10**9) is None, name
    assert _decode_plain_jpeg(tmp_path / "plain.jpg", 599) is None  # over max_pixels: Pillow's path refuses it
    with pytest.raises(ImageError, match="exceeds the limit of 599 pixels"):
        load_image(tmp_path / "plain.jpg", max_pixels=599)
    with pytest.raises(ImageError, match="cut.jpg: cannot decode"):
        load_image(tmp_path / "cut.jpg")
    assert load_image(tmp_path / "rot.jpg").shape == (30, 20, 3)
