"""The fused image preparation kernel (crosslayer/prepare_image.h) through crosslayer.images: the resized integers are
exactly Pillow's Image.resize(BILINEAR) ones and the network input is bit for bit numpy's normalisation of them
(crosslayer.reference.pillow_resize / prepared_image), for every policy, size, layout and implementation path."""

import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL
import pytest
from hypothesis import given, settings, strategies as st

import crosslayer
from crosslayer import reference
from crosslayer.errors import UsageError
from crosslayer.images import RESIZE_POLICIES, prepare, resize, resize_normalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

if int(PIL.__version__.split(".")[0]) < 13:
    # the kernel reproduces Pillow 13, which runs the vertical pass first when the height shrinks much more
    pytest.skip(f"the reference is Pillow 13's resize; Pillow {PIL.__version__} orders its passes otherwise",
                allow_module_level=True)


def supported_paths():
    from crosslayer._native import core

    paths = ["scalar"]
    try:
        core.prepare_image(np.zeros((1, 1, 3), np.uint8), 1, 0, (0, 0, 0), (1, 1, 1), (0, 0, 0), None,
                           np.zeros((1, 1, 3), np.uint8), 2)
        paths.append("avx512")
    except ValueError:
        pass  # this CPU has no AVX-512: the scalar path is all there is
    return paths


PATHS = supported_paths()


def image(rng, height, width, kind):
    """Noise (every rounding case), or a smooth gradient (values near the clip limits and long equal runs)."""
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6, 3)
    return (127.5 + 127.5 * np.sin(y[..., None] / 5.3 + x[..., None] / 3.1 + phase)).round().astype(np.uint8)


def view(rgb, layout):
    """The same pixels in another memory layout (the kernel takes any strides)."""
    if layout == "contiguous":
        return rgb
    if layout == "flipped":  # negative row and pixel strides
        return np.ascontiguousarray(rgb[::-1, ::-1])[::-1, ::-1]
    if layout == "padded":  # a crop of a larger array: row stride > 3 * width
        big = np.zeros((rgb.shape[0] + 2, rgb.shape[1] + 3, 3), np.uint8)
        big[1:-1, 2:-1] = rgb
        return big[1:-1, 2:-1]
    if layout == "bgr":  # channel stride -1
        return np.ascontiguousarray(rgb[..., ::-1])[..., ::-1]
    if layout == "transposed":  # pixel stride larger than the row stride
        return np.ascontiguousarray(rgb.transpose(1, 0, 2)).transpose(1, 0, 2)
    if layout == "planar":  # channel stride H*W
        return np.ascontiguousarray(rgb.transpose(2, 0, 1)).transpose(1, 2, 0)
    raise ValueError(layout)


def assert_exact(rgb, side, policy, path, fill=(124, 116, 104)):
    expected = reference.pillow_resize(np.ascontiguousarray(rgb), side, policy, fill)
    got = resize(rgb, side, policy, fill, path=path)
    assert np.array_equal(got, expected), (rgb.shape, side, policy, path, int((got != expected).sum()))
    network_input = resize_normalize(rgb, side, policy, MEAN, STD, fill=fill, path=path)
    expected_input = reference.prepared_image(np.ascontiguousarray(rgb), side, policy, MEAN, STD, fill)
    assert network_input.dtype == np.float32 and network_input.shape == (3, side, side)
    # bit for bit, not merely equal (np.array_equal would call -0.0 and 0.0 the same)
    assert np.array_equal(network_input.view(np.uint32), expected_input.view(np.uint32)), (rgb.shape, side, policy)


sizes = st.one_of(st.integers(1, 4), st.integers(1, 512), st.sampled_from([1, 2, 3, 7, 223, 224, 225, 448]))


@settings(max_examples=60)
@given(height=sizes, width=sizes, side=st.one_of(st.integers(1, 512), st.sampled_from([1, 2, 224, 448])),
       policy=st.sampled_from(RESIZE_POLICIES), path=st.sampled_from(PATHS),
       kind=st.sampled_from(["noise", "gradient"]),
       layout=st.sampled_from(["contiguous", "flipped", "padded", "bgr", "transposed", "planar"]),
       seed=st.integers(0, 2**32 - 1))
def test_equals_pillow_and_numpy_bit_for_bit(height, width, side, policy, path, kind, layout, seed):
    rng = np.random.default_rng(seed)
    assert_exact(view(image(rng, height, width, kind), layout), side, policy, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("height, width, side", [
    (1, 1, 448), (1, 300, 64), (300, 1, 64), (1, 1, 1), (5, 5, 5),  # single pixels and lines; no resize at all
    (227, 227, 448), (375, 500, 448), (500, 375, 448),  # the CUB sizes, upscaled to 448
    (2000, 1500, 64), (1000, 30, 300), (30, 1000, 300),  # far more than 2x down: Pillow's support widens
    (3, 2, 500), (448, 300, 448), (300, 448, 448),  # 100x up; one axis keeps its size (one pass only)
    (448, 1040, 448), (448, 1100, 448),  # ~2.3x down: some blocks of 16 outputs fit the AVX-512 window, some do not
    # Pillow 13 runs the vertical pass first iff h - side > 2 * (w - side): both sides of that boundary
    (648, 548, 448), (649, 548, 448), (650, 548, 448), (900, 300, 100), (160, 100, 50), (161, 100, 50),
])
def test_edge_sizes_every_policy(height, width, side, path):
    rng = np.random.default_rng(height * 7919 + width)
    rgb = image(rng, height, width, "noise")
    for policy in RESIZE_POLICIES:
        assert_exact(rgb, side, policy, path)


def test_pad_fill_colour_and_even_split():
    rgb = np.full((10, 40, 3), 200, np.uint8)
    padded = resize(rgb, 32, "pad", fill=(1, 2, 3))
    np.testing.assert_array_equal(padded[:12], np.broadcast_to(np.array([1, 2, 3], np.uint8), (12, 32, 3)))
    np.testing.assert_array_equal(padded[12:20], 200)
    np.testing.assert_array_equal(padded[20:], np.broadcast_to(np.array([1, 2, 3], np.uint8), (12, 32, 3)))
    assert_exact(rgb, 32, "pad", PATHS[-1], fill=(1, 2, 3))


def test_writes_only_its_slot_of_a_batch(rng):
    batch = np.full((3, 3, 40, 40), 7.0, np.float32)
    rgb = image(rng, 50, 30, "noise")
    returned = resize_normalize(rgb, 40, "center-crop", MEAN, STD, out=batch[1])
    assert returned is batch[1] or np.shares_memory(returned, batch[1])
    np.testing.assert_array_equal(batch[1], reference.prepared_image(rgb, 40, "center-crop", MEAN, STD))
    assert (batch[0] == 7.0).all() and (batch[2] == 7.0).all()


def test_prepare_decodes_files_into_the_slot(tmp_path, rng):
    from PIL import Image

    rgb = image(rng, 61, 47, "noise")
    Image.fromarray(rgb).save(tmp_path / "a.png")
    slot = np.empty((3, 64, 64), np.float32)
    prepare(tmp_path / "a.png", 64, "square", MEAN, STD, out=slot)
    np.testing.assert_array_equal(slot, reference.prepared_image(rgb, 64, "square", MEAN, STD))
    np.testing.assert_array_equal(prepare(rgb, 64, "square", MEAN, STD), slot)


def test_concurrent_calls_agree(rng):
    images = [image(rng, int(h), int(w), "noise") for h, w in rng.integers(20, 300, (12, 2))]
    expected = [reference.prepared_image(rgb, 96, "square", MEAN, STD) for rgb in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda rgb: resize_normalize(rgb, 96, "square", MEAN, STD), images * 3))
    for i, array in enumerate(got):
        np.testing.assert_array_equal(array, expected[i % len(images)])


@pytest.mark.parametrize("call, message", [
    (lambda rgb, out: resize(rgb.astype(np.float32), 8), "rgb: expected an HxWx3 uint8"),
    (lambda rgb, out: resize(rgb[..., :2], 8), "rgb: expected an HxWx3 uint8"),
    (lambda rgb, out: resize(rgb[0], 8), "rgb: expected an HxWx3 uint8"),
    (lambda rgb, out: resize(rgb[:0], 8), "rgb: expected an HxWx3 uint8"),
    (lambda rgb, out: resize(rgb.tolist(), 8), "rgb: expected an HxWx3 uint8"),
    (lambda rgb, out: resize(rgb, 0), "side: expected an integer"),
    (lambda rgb, out: resize(rgb, 8.0), "side: expected an integer"),
    (lambda rgb, out: resize(rgb, True), "side: expected an integer"),
    (lambda rgb, out: resize(rgb, 8, "stretchy"), "policy: expected one of"),
    (lambda rgb, out: resize(rgb, 8, "pad", fill=(1, 2)), "fill: expected 3 integers"),
    (lambda rgb, out: resize(rgb, 8, "pad", fill=(1, 2, 256)), "fill: expected 3 integers"),
    (lambda rgb, out: resize(rgb, 8, path="gpu"), "path: expected one of"),
    (lambda rgb, out: resize_normalize(rgb, 8, "square", MEAN, STD, out=out[:, :4]), "out: expected a writable"),
    (lambda rgb, out: resize_normalize(rgb, 8, "square", MEAN, STD, out=out.astype(np.float64)), "out: expected"),
    (lambda rgb, out: resize_normalize(rgb, 8, "square", MEAN, STD, out=out[:, ::-1]), "out: expected a writable"),
    (lambda rgb, out: resize_normalize(rgb, 8, "square", MEAN, STD, out=np.broadcast_to(out, out.shape)), "out:"),
    (lambda rgb, out: resize_normalize(rgb, 8, "square", MEAN, STD, out=[0.0]), "out: expected a writable"),
])
def test_bad_arguments_raise_usage_error_naming_them(call, message):
    rgb = np.zeros((5, 6, 3), np.uint8)
    out = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(UsageError, match=message):
        call(rgb, out)


def test_c_api_checks_and_runs():
    lib = ctypes.CDLL(crosslayer.library_path())
    lib.crosslayer_last_error.restype = ctypes.c_char_p
    u8p, f32p, i64 = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_float), ctypes.c_int64
    lib.crosslayer_prepare_image.argtypes = [u8p, i64, i64, i64, i64, i64, i64, ctypes.c_int, u8p, f32p, f32p,
                                             f32p, u8p, ctypes.c_int]
    rgb = image(np.random.default_rng(5), 33, 21, "noise")
    fill = np.array([1, 2, 3], np.uint8)
    scale, offset = (np.asarray(v, np.float32) for v in crosslayer.images.normalization(MEAN, STD))
    out = np.empty((3, 16, 16), np.float32)

    def call(pixels=rgb.ctypes.data_as(u8p), height=33, side=16, policy=2, fill_ptr=fill.ctypes.data_as(u8p),
             out_ptr=out.ctypes.data_as(f32p), resized=None, path=0):
        return lib.crosslayer_prepare_image(pixels, height, 21, 63, 3, 1, side, policy, fill_ptr,
                                            scale.ctypes.data_as(f32p), offset.ctypes.data_as(f32p), out_ptr,
                                            resized, path)

    assert call() == 0
    np.testing.assert_array_equal(out, reference.prepared_image(rgb, 16, "pad", MEAN, STD, fill=(1, 2, 3)))
    for arguments, message in [({"pixels": None}, "pixels"), ({"height": 0}, "height"), ({"side": 0}, "side"),
                               ({"policy": 3}, "policy"), ({"fill_ptr": None}, "fill"),
                               ({"out_ptr": None}, "out, out_resized"), ({"path": 7}, "path")]:
        assert call(**arguments) == 1, arguments
        assert lib.crosslayer_last_error().decode().startswith(message), lib.crosslayer_last_error()
