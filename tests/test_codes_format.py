import json
import struct
import zlib

import numpy as np
import pytest

import crosslayer
from crosslayer import Codes, CodesFormatError
from crosslayer.reference import pack_ternary, unpack_ternary

# the header's fields and their byte offsets: magic 0, version 8, header size 12, n 16, Dk 24, Dt 28, words 32,
# key block bytes 36, identity 44, then version 3: crc 60; version 4: layout 60, reserved 64, crc 68
HEADER_V3 = struct.Struct("<8sIIQIIIQ16sI")
HEADER = struct.Struct("<8sIIQIIIQ16sIII")


def random_codes(rng, n, dk, dt):
    signs = rng.integers(-1, 2, size=(n, dk, dt)).astype(np.int8)
    return Codes(pack_ternary(signs), rng.random((n, dk), dtype=np.float32), dt), signs


@pytest.mark.parametrize("dt", [1, 63, 64, 65, 130])
def test_pack_unpack_roundtrip_and_zero_padding(rng, dt):
    signs = rng.integers(-1, 2, size=(3, 4, dt)).astype(np.int8)
    bits = pack_ternary(signs)
    assert bits.shape == (3, 4, 2, (dt + 63) // 64)
    assert np.array_equal(unpack_ternary(bits, dt), signs)
    if dt % 64:
        assert not (bits[..., -1] >> np.uint64(dt % 64)).any()
    assert not (bits[..., 1, :] & ~bits[..., 0, :]).any()  # negative only where nonzero


def test_save_load_roundtrip(tmp_path, rng):
    codes, _ = random_codes(rng, 5, 3, 70)
    codes.save(tmp_path / "c.xlc")
    assert Codes.load(tmp_path / "c.xlc") == codes
    empty = Codes.empty(3, 70)
    empty.save(tmp_path / "e.xlc")
    assert len(Codes.load(tmp_path / "e.xlc")) == 0


def code_file(bits, mean, dt, version=4, identity=b"", keys=None):
    """A code file's bytes written independently of `Codes.save`: the crc32 covers the header (but its crc field)
    and the payload (bits, means, key block). Version 4 records the layout (0: 2-plane, 1: compact, from the
    number of axes of `bits`); versions before it have the 64-byte header."""
    n, dk = np.shape(mean)
    words = (dt + 63) // 64
    block = b"" if keys is None else json.dumps(keys).encode()
    payload = bits.astype("<u8").tobytes() + np.asarray(mean, "<f4").tobytes() + block
    header = HEADER if version >= 4 else HEADER_V3
    fields = (b"XLCODES\0", version, header.size, n, dk, dt, words, len(block), identity)
    if version >= 4:
        fields += (int(bits.ndim == 2), 0)
    crc = zlib.crc32(payload, zlib.crc32(header.pack(*fields, 0)[:-4]))
    return header.pack(*fields, crc) + payload


def test_layout_matches_an_independent_writer_and_older_versions_are_refused(tmp_path, rng):
    codes, _ = random_codes(rng, 3, 2, 70)
    codes.save(tmp_path / "v4.xlc")
    assert (tmp_path / "v4.xlc").read_bytes() == code_file(codes.bits, codes.channel_mean, 70)
    (tmp_path / "v3.xlc").write_bytes(code_file(codes.bits, codes.channel_mean, 70, version=3))
    assert Codes.load(tmp_path / "v3.xlc") == codes
    compact = Codes(pack_ternary(np.where(unpack_ternary(codes.bits, 70) == 0, 1, unpack_ternary(codes.bits, 70))),
                    codes.channel_mean, 70).compact()
    compact.save(tmp_path / "compact.xlc")
    assert (tmp_path / "compact.xlc").read_bytes() == code_file(compact.bits, codes.channel_mean, 70)
    stamped = Codes(codes.bits, codes.channel_mean, 70, identity="0123abcd0123abcd")
    stamped.save(tmp_path / "keyed.xlc", keys=["a", "b", None])
    assert (tmp_path / "keyed.xlc").read_bytes() == code_file(codes.bits, codes.channel_mean, 70,
                                                               identity=b"0123abcd0123abcd", keys=["a", "b", None])
    loaded = Codes.load(tmp_path / "keyed.xlc")
    assert loaded == stamped and loaded.identity == "0123abcd0123abcd" and loaded.keys == ["a", "b", None]
    assert loaded[1:].keys == ["b", None] and Codes.concatenate([loaded, loaded]).keys == ["a", "b", None] * 2
    for version in (1, 2):  # dropped at 0.3: an older file is refused by name, never misread
        (tmp_path / "old.xlc").write_bytes(code_file(codes.bits, codes.channel_mean, 70, version=version))
        with pytest.raises(CodesFormatError, match=f"version {version}; this crosslayer reads versions 3 and 4"):
            Codes.load(tmp_path / "old.xlc")


def with_padding_bit(bits, dt):
    bits = bits.copy()
    bits[1, 0, 0, -1] |= np.uint64(1) << np.uint64(dt % 64)  # item 1, nonzero plane, first position past Dt
    return bits


def with_stray_negative_bit(bits):
    bits = bits.copy()
    bits[2, 1, 0, 0] &= ~np.uint64(1)  # item 2: value 0 cleared in the nonzero plane ...
    bits[2, 1, 1, 0] |= np.uint64(1)  # ... but set in the negative one
    return bits


def test_invalid_bits_are_rejected_not_scored(rng):
    codes, signs = random_codes(rng, 3, 2, 70)
    # A set padding bit used to pass and shift every Gram entry it touches away from the reference.
    with pytest.raises(ValueError, match=r"bits: item 1 has padding bits set"):
        Codes(with_padding_bit(codes.bits, 70), codes.channel_mean, 70)
    with pytest.raises(ValueError, match=r"bits: item 2 has a negative bit where its nonzero bit is clear"):
        Codes(with_stray_negative_bit(codes.bits), codes.channel_mean, 70)
    # Dt a multiple of 64 has no padding; the subset rule still holds
    full, _ = random_codes(rng, 3, 2, 128)
    Codes(full.bits, full.channel_mean, 128)
    with pytest.raises(ValueError, match="negative bit"):
        Codes(with_stray_negative_bit(full.bits), full.channel_mean, 128)
    flat = signs.reshape(len(signs), -1).astype(np.int64)
    np.testing.assert_array_equal(crosslayer.gram(codes), flat @ flat.T)


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 2 * 2 * 8 * 2])  # one item per chunk; two items per chunk
def test_invalid_bits_reason_names_the_item_past_the_first_chunk(monkeypatch, rng, chunk_bytes):
    monkeypatch.setattr(crosslayer.codes, "_CHECK_CHUNK_BYTES", chunk_bytes)
    codes, _ = random_codes(rng, 7, 3, 70)
    for item in (2, 5, 6):
        padded = codes.bits.copy()
        padded[item, 2, 1, -1] |= np.uint64(1) << np.uint64(70 % 64)  # also a stray negative bit: padding is named
        assert crosslayer.codes.invalid_bits_reason(padded, 70).startswith(f"item {item} has padding bits set")
        stray = codes.bits.copy()
        stray[item, 1, 0, 0] &= ~np.uint64(1)
        stray[item, 1, 1, 0] |= np.uint64(1)
        stray[item + 1 :, 1, 1, 0] |= np.uint64(1) << np.uint64(3)  # later items may be bad too: the first is named
        stray[item + 1 :, 1, 0, 0] &= ~(np.uint64(1) << np.uint64(3))
        assert crosslayer.codes.invalid_bits_reason(stray, 70).startswith(f"item {item} has a negative bit")
    assert crosslayer.codes.invalid_bits_reason(codes.bits, 70) is None


def test_load_rejects_invalid_bits_behind_a_valid_checksum(tmp_path, rng):
    codes, _ = random_codes(rng, 3, 2, 70)
    for version in (3,):
        for bits in (with_padding_bit(codes.bits, 70), with_stray_negative_bit(codes.bits)):
            (tmp_path / "c.xlc").write_bytes(code_file(bits, codes.channel_mean, 70, version))
            with pytest.raises(CodesFormatError, match="c.xlc: bits: item"):
                Codes.load(tmp_path / "c.xlc")


def test_save_rechecks_bits_changed_in_place(tmp_path, rng):
    codes, _ = random_codes(rng, 3, 2, 70)
    codes.bits[...] = with_padding_bit(codes.bits, 70)
    with pytest.raises(ValueError, match="bits: item 1 has padding bits set"):
        codes.save(tmp_path / "c.xlc")
    assert not list(tmp_path.iterdir())


def test_codes_of_our_kernels_and_their_parts_skip_the_scan(monkeypatch, rng):
    codes, _ = random_codes(rng, 4, 2, 70)
    x, a = rng.standard_normal((2, 5, 3, 3)).astype(np.float32), rng.random((2, 3, 3, 3)).astype(np.float32)

    def fail(*args):
        raise AssertionError("bits scanned on a path that produces valid bits")

    monkeypatch.setattr(crosslayer.codes, "invalid_bits_reason", fail)
    assert len(crosslayer.pool(x, a, output="codes")) == 2
    assert len(codes[1:3]) == 2 and len(codes[0]) == 1 and len(codes[np.array([0, 3])]) == 2
    assert len(Codes.concatenate([codes, codes])) == 8 and len(Codes.empty(2, 70)) == 0


def test_integer_index_out_of_range_raises(rng):
    codes, signs = random_codes(rng, 2, 2, 65)
    for position in (2, 5, -3, np.int64(7)):
        with pytest.raises(IndexError, match="out of range for 2 items"):
            codes[position]
    for position in (0, 1, -1, -2, np.int64(1)):
        assert np.array_equal(codes[position].signs(), signs[[position]])
    assert len(codes[5:]) == 0 and len(codes[-3:]) == 2 and len(codes[::-1]) == 2


def test_slicing_and_concatenation(rng):
    codes, signs = random_codes(rng, 6, 2, 65)
    assert len(codes[1:4]) == 3 and np.array_equal(codes[1:4].signs(), signs[1:4])
    assert np.array_equal(codes[-1].signs(), signs[-1:])
    assert Codes.concatenate([codes[:2], codes[2:]]) == codes
    other, _ = random_codes(rng, 1, 3, 65)
    with pytest.raises(ValueError, match="parts\\[1\\]"):
        Codes.concatenate([codes, other])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"NOTCODES" + b[8:], "bad magic"),
        (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "version 99"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\0", "truncated or extended"),
        (lambda b: b[:70] + bytes([b[70] ^ 1]) + b[71:], "checksum"),
        (lambda b: b[:10], "truncated header"),
        # header fields that keep the file size: Dt within the same word count, n and Dk swapped (4*3 == 3*4)
        (lambda b: b[:28] + bytes([b[28] ^ 1]) + b[29:], "checksum"),
        (lambda b: b[:28] + bytes([b[28] ^ 2]) + b[29:], "checksum"),
        (lambda b: b[:16] + (3).to_bytes(8, "little") + (4).to_bytes(4, "little") + b[28:], "checksum"),
        (lambda b: b[:68] + bytes([b[68] ^ 1]) + b[69:], "checksum"),
        (lambda b: b[:60] + bytes([b[60] ^ 1]) + b[61:], "truncated or extended"),  # the compact layout's size differs
        (lambda b: b[:60] + bytes([b[60] ^ 2]) + b[61:], "inconsistent header"),  # no layout 2
        (lambda b: b[:64] + bytes([b[64] ^ 1]) + b[65:], "inconsistent header"),  # reserved must stay 0
        (lambda b: b[:44] + b"ffffffffffffffff" + b[60:], "checksum"),  # another identity
        (lambda b: b[:44] + b"\xff" * 16 + b[60:], "identity is not ASCII"),
    ],
)
def test_corrupt_files_are_rejected(tmp_path, rng, damage, message):
    codes, _ = random_codes(rng, 4, 3, 70)
    path = tmp_path / "c.xlc"
    codes.save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CodesFormatError, match=message):
        Codes.load(path)


def test_constructor_rejects_inconsistent_shapes(rng):
    with pytest.raises(ValueError, match="Dt=130 needs 3"):
        Codes(np.zeros((1, 2, 2, 2), np.uint64), np.zeros((1, 2), np.float32), 130)
    with pytest.raises(ValueError, match="channel_mean"):
        Codes(np.zeros((1, 2, 2, 1), np.uint64), np.zeros((2, 2), np.float32), 10)
    # no guidance channel: such codes could be saved but never loaded
    with pytest.raises(ValueError, match=r"bits: expected at least one guidance channel \(Dk >= 1\)"):
        Codes(np.zeros((1, 0, 2, 1), np.uint64), np.zeros((1, 0), np.float32), 10)
    with pytest.raises(ValueError, match="Dk >= 1"):
        Codes.empty(0, 10)
    with pytest.raises(ValueError, match="Dt: expected a positive integer"):
        Codes(np.zeros((1, 2, 2, 0), np.uint64), np.zeros((1, 2), np.float32), 0)
    assert len(Codes(np.zeros((0, 2, 2, 1), np.uint64), np.zeros((0, 2), np.float32), 10)) == 0  # an empty batch


def test_saved_files_get_ordinary_permissions(tmp_path, rng):
    import os
    import stat

    codes, _ = random_codes(rng, 2, 2, 10)
    codes.save(tmp_path / "c.xlc")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "c.xlc").st_mode) == 0o666 & ~mask


def test_umask_is_read_without_changing_it(monkeypatch):
    import os

    from crosslayer import _atomic

    mask = os.umask(0o027)
    try:
        expected = _atomic._current_umask()
        assert expected == 0o027
        if os.path.exists("/proc/self/status"):
            # setting the umask, even briefly, races with files other threads create
            monkeypatch.setattr(_atomic.os, "umask", lambda value: pytest.fail("umask changed to read it"))
            assert _atomic._current_umask() == 0o027
            monkeypatch.undo()

        def no_proc(*args, **kwargs):
            raise OSError("no /proc here")

        monkeypatch.setattr(_atomic, "open", no_proc, raising=False)
        assert _atomic._current_umask() == 0o027
    finally:
        os.umask(mask)
