import numpy as np
import pytest

from crosslayer import Codes, CodesFormatError
from crosslayer.reference import pack_ternary, unpack_ternary


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
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "checksum"),
        (lambda b: b[:10], "truncated header"),
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


def test_saved_files_get_ordinary_permissions(tmp_path, rng):
    import os
    import stat

    codes, _ = random_codes(rng, 2, 2, 10)
    codes.save(tmp_path / "c.xlc")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "c.xlc").st_mode) == 0o666 & ~mask
