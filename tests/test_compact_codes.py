"""The compact sign-code layout (csrc/include/crosslayer/compact_codes.h): packing from pooled values, conversions
to and from the 2-plane layout, the validity rules, the numpy references, and the code file v4."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crosslayer import Codes, reference
from crosslayer.compact import (bytes_per_image, compact_to_two_plane, compact_words_per_image, live_mask,
                                two_plane_to_compact)
from crosslayer.errors import UsageError

from _codes import random_compactable_signs

# Dt not a multiple of 64 (1, 63, 65, 130), Dk not a multiple of 64 (1, 3, 65, 70)
shapes = st.tuples(st.integers(0, 5), st.sampled_from([1, 2, 3, 64, 65, 70]), st.sampled_from([1, 2, 63, 64, 65, 130]))


def test_words_per_image_match_the_contract():
    assert compact_words_per_image(1280, 320) == 20 + 1280 * 5
    assert bytes_per_image("compact", 1280, 320) == 8 * 20 + 8 * 1280 * 5
    assert bytes_per_image("two_plane", 1280, 320) == 8 * 1280 * 2 * 5
    assert compact_words_per_image(65, 1) == 2 + 65


@given(shapes, st.integers(0, 2**32 - 1))
def test_pack_from_pooled_values_and_both_conversions_agree(shape, seed):
    rng = np.random.default_rng(seed)
    n, dk, dt = shape
    signs = random_compactable_signs(rng, n, dk, dt)
    pooled = signs * rng.random(signs.shape).astype(np.float32)  # same signs, arbitrary magnitudes
    compact = reference.pack_compact(pooled)
    assert compact.shape == (n, compact_words_per_image(dk, dt)) and compact.dtype == np.uint64
    assert np.array_equal(reference.unpack_compact(compact, dk, dt), signs)
    two_plane = reference.pack_ternary(signs)
    assert np.array_equal(two_plane_to_compact(two_plane, dt), compact)
    assert np.array_equal(compact_to_two_plane(compact, dk, dt), two_plane)
    codes = Codes(two_plane, rng.random((n, dk), dtype=np.float32), dt)
    assert codes.compact().layout == "compact" and np.array_equal(codes.compact().bits, compact)
    assert codes.compact().expanded() == codes
    assert np.array_equal(codes.compact().signs(), codes.signs())
    assert np.array_equal(live_mask(compact, dk), (signs != 0).any(axis=2))


def test_an_exact_zero_in_a_live_channel_is_coded_as_plus_one():
    pooled = np.array([[[0.5, 0.0, -0.25]]], np.float32)
    assert reference.unpack_compact(reference.pack_compact(pooled), 1, 3).tolist() == [[[1, 1, -1]]]


def test_partial_channels_are_refused_unless_lossy():
    signs = np.array([[[1, -1, 1], [0, 0, 0]], [[1, 1, -1], [-1, 0, 1]]], np.int8)  # item 1 channel 1 partial
    codes = Codes(reference.pack_ternary(signs), np.zeros((2, 2), np.float32), 3)
    with pytest.raises(UsageError, match="item 1 channel 1 is partly zero.*lossy=True"):
        codes.compact()
    lossy = codes.compact(lossy=True)
    assert lossy.signs()[1, 1].tolist() == [-1, 1, 1]
    assert np.array_equal(lossy.signs()[0], signs[0])


def test_all_dead_and_empty_batches():
    dead = Codes(reference.compact_from_ternary(np.zeros((2, 3, 5), np.int8)), np.zeros((2, 3), np.float32), 5)
    assert not dead.bits.any() and dead.Dk == 3 and dead.expanded().signs().sum() == 0
    empty = Codes.empty(70, 65, layout="compact")
    assert empty.bits.shape == (0, compact_words_per_image(70, 65)) and empty.expanded().bits.shape == (0, 70, 2, 2)
    assert Codes.empty(70, 65).compact() == empty


@pytest.mark.parametrize("damage, message", [
    (lambda bits: bits.__setitem__((0, 0), bits[0, 0] | np.uint64(1 << 6)), "live bits set at channels >= Dk=6"),
    (lambda bits: bits.__setitem__((0, 1), bits[0, 1] | np.uint64(1 << 10)), "padding bits set"),
    (lambda bits: bits.__setitem__((0, 1 + 5), np.uint64(1)), "sign bits in a dead channel"),
])
def test_compact_bits_breaking_the_rules_are_refused(damage, message):
    signs = np.ones((1, 6, 10), np.int8)
    signs[0, 5] = 0  # channel 5 dead
    bits = reference.compact_from_ternary(signs)
    damage(bits)
    with pytest.raises(UsageError, match=message):
        Codes(bits, np.zeros((1, 6), np.float32), 10)


def test_compact_shape_errors_name_the_argument():
    with pytest.raises(UsageError, match="bits: compact codes of Dk=6, Dt=10 have 7 words"):
        Codes(np.zeros((1, 8), np.uint64), np.zeros((1, 6), np.float32), 10)
    with pytest.raises(UsageError, match="channel_mean: expected shape"):
        Codes(np.zeros((1, 7), np.uint64), np.zeros((6,), np.float32), 10)
    with pytest.raises(UsageError, match="layout"):
        Codes(np.zeros((1, 6, 2, 1), np.uint64), np.zeros((1, 6), np.float32), 10, layout="compact")
    with pytest.raises(UsageError, match="layout: expected one of"):
        Codes.empty(3, 4, layout="ternary")


@given(shapes, st.integers(0, 2**32 - 1))
def test_compact_references_equal_the_2_plane_references(shape, seed):
    rng = np.random.default_rng(seed)
    n, dk, dt = shape
    a, b = random_compactable_signs(rng, n, dk, dt), random_compactable_signs(rng, 3, dk, dt)
    ca, cb = reference.compact_from_ternary(a), reference.compact_from_ternary(b)
    ta, tb = reference.pack_ternary(a), reference.pack_ternary(b)
    assert np.array_equal(reference.compact_gram_reference(ca, cb, dk, dt), reference.gram_reference(ta, tb, dt))
    means = rng.integers(0, 3, (n, dk)).astype(np.float32)
    for channels in (None, max(dk // 2, 1)):
        got = reference.compact_search_reference(ca, means, cb, dk, dt, 2, channels)
        want = reference.search_reference(ta, means, tb, dt, 2, channels)
        assert all(np.array_equal(x, y) for x, y in zip(got, want))


def test_concatenate_converts_to_the_first_parts_layout(rng):
    signs = random_compactable_signs(rng, 4, 5, 7)
    codes = Codes(reference.pack_ternary(signs), np.zeros((4, 5), np.float32), 7)
    joined = Codes.concatenate([codes[:2].compact(), codes[2:]])
    assert joined.layout == "compact" and joined.expanded() == codes
    assert Codes.concatenate([codes[:2], codes[2:].compact()]) == codes


def test_code_file_v4_round_trips_both_layouts_and_v3_still_loads(tmp_path, rng):
    from crosslayer.formats import CodeFile

    signs = random_compactable_signs(rng, 3, 70, 65)
    codes = Codes(reference.pack_ternary(signs), rng.random((3, 70), dtype=np.float32), 65, keys=["a", None, "c"])
    for layout in ("two_plane", "compact"):
        path = tmp_path / f"{layout}.xlc"
        codes.to_layout(layout).save(path)
        header, _ = CodeFile.read_header(path)
        assert (header.version, header.layout) == (4, layout)
        loaded = Codes.load(path)
        assert loaded == codes.to_layout(layout) and loaded.keys == ["a", None, "c"]
    compact_size = (tmp_path / "compact.xlc").stat().st_size
    assert compact_size == 72 + 3 * bytes_per_image("compact", 70, 65) + 3 * 70 * 4 + len(CodeFile.key_block(codes.keys))
    # a version 3 file, as crosslayer 0.3 wrote it (64-byte header, 2-plane bits)
    v3 = tmp_path / "v3.xlc"
    block = CodeFile.key_block(codes.keys)
    header = CodeFile(3, 70, 65, len(block), None, version=3)
    payload = codes.bits.tobytes() + codes.channel_mean.tobytes() + block
    import zlib
    v3.write_bytes(header.pack(zlib.crc32(payload, header.checksum_seed())) + payload)
    assert len(header.pack(0)) == 64 and Codes.load(v3) == codes
