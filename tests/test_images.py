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
