"""libcrosslayer's C API (crosslayer/crosslayer.h): the installed CMake package builds examples/c/encode_codes, whose
codes equal crosslayer.pool's; code files cross between C and Python; errors come back as status + message."""

import ctypes
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import crosslayer
from crosslayer import Codes, CodesFormatError

ROOT = Path(__file__).resolve().parent.parent
OK, INVALID_ARGUMENT, NOT_FINITE, IO_ERROR, FORMAT_ERROR = 0, 1, 2, 3, 4

u64p = ctypes.POINTER(ctypes.c_uint64)
f32p = ctypes.POINTER(ctypes.c_float)
i32p = ctypes.POINTER(ctypes.c_int32)
i64p = ctypes.POINTER(ctypes.c_int64)
i64 = ctypes.c_int64


@pytest.fixture(scope="module")
def lib():
    lib = ctypes.CDLL(crosslayer.library_path())
    lib.crosslayer_version.restype = ctypes.c_char_p
    lib.crosslayer_build_info.restype = ctypes.c_char_p
    lib.crosslayer_last_error.restype = ctypes.c_char_p
    lib.crosslayer_status_name.restype = ctypes.c_char_p
    lib.crosslayer_popcount_path.restype = ctypes.c_char_p
    lib.crosslayer_popcount_path_name.restype = ctypes.c_char_p
    pool_args = [f32p, f32p, i64, i64, i64, i64, f32p, f32p, i64]
    lib.crosslayer_pool_codes.argtypes = pool_args + [u64p, f32p, ctypes.c_int]
    lib.crosslayer_pool_float.argtypes = pool_args + [f32p, f32p, ctypes.c_int]
    lib.crosslayer_finish_pooled_codes.argtypes = [f32p, i64, i64, i64, u64p, ctypes.c_int]
    lib.crosslayer_finish_pooled_float.argtypes = [f32p, i64, i64, i64, f32p, ctypes.c_int]
    lib.crosslayer_pool_compact.argtypes = pool_args + [u64p, f32p, ctypes.c_int]
    lib.crosslayer_finish_pooled_compact.argtypes = [f32p, i64, i64, i64, u64p, ctypes.c_int]
    lib.crosslayer_sign_pack_path.restype = ctypes.c_char_p
    lib.crosslayer_sign_pack_path_name.restype = ctypes.c_char_p
    lib.crosslayer_set_sign_pack_path.argtypes = [ctypes.c_char_p]
    lib.crosslayer_gram.argtypes = [u64p, i64, u64p, i64, i64, i64, i32p, ctypes.c_int]
    lib.crosslayer_search.argtypes = [u64p, i64, u64p, i64, i64, i64, i32p, i64, i64, i64, ctypes.c_int, i32p, i64p,
                                      ctypes.c_int]
    lib.crosslayer_codes_write.argtypes = [ctypes.c_char_p, u64p, f32p, i64, i64, i64, ctypes.c_char_p,
                                           ctypes.POINTER(ctypes.c_char_p), i64p]
    lib.crosslayer_codes_read.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.crosslayer_codes_check.argtypes = [u64p, i64, i64, i64]
    lib.crosslayer_gram_layout.argtypes = [ctypes.c_int] + lib.crosslayer_gram.argtypes
    lib.crosslayer_search_layout.argtypes = [ctypes.c_int] + lib.crosslayer_search.argtypes
    lib.crosslayer_codes_check_layout.argtypes = [ctypes.c_int, u64p, i64, i64, i64]
    lib.crosslayer_codes_write_layout.argtypes = [ctypes.c_char_p, ctypes.c_int] + lib.crosslayer_codes_write.argtypes[1:]
    lib.crosslayer_codes_layout.argtypes = [ctypes.c_void_p]
    for name in ("n", "dk", "dt"):
        getattr(lib, f"crosslayer_codes_{name}").restype = i64
        getattr(lib, f"crosslayer_codes_{name}").argtypes = [ctypes.c_void_p]
    lib.crosslayer_codes_bits.restype = u64p
    lib.crosslayer_codes_bits.argtypes = [ctypes.c_void_p]
    lib.crosslayer_codes_channel_mean.restype = f32p
    lib.crosslayer_codes_channel_mean.argtypes = [ctypes.c_void_p]
    lib.crosslayer_codes_free.argtypes = [ctypes.c_void_p]
    lib.crosslayer_codes_identity.restype = ctypes.c_char_p
    lib.crosslayer_codes_identity.argtypes = [ctypes.c_void_p]
    lib.crosslayer_codes_has_keys.argtypes = [ctypes.c_void_p]
    lib.crosslayer_codes_key.restype = ctypes.c_void_p  # not c_char_p: a key may hold NUL bytes
    lib.crosslayer_codes_key.argtypes = [ctypes.c_void_p, i64, i64p]
    return lib


def ptr(array, kind):
    return array.ctypes.data_as(kind) if array is not None else None


def last_error(lib) -> str:
    return lib.crosslayer_last_error().decode()


def random_codes(rng, n, dk, dt):
    local = rng.standard_normal((n, 5, 3, 2)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, 3, 2)), 0).astype(np.float32)
    projection = rng.standard_normal((5, dt)).astype(np.float32)
    return crosslayer.pool(local, guidance, pca=(np.zeros(5, np.float32), projection), output="codes")


# ---- the library itself ---------------------------------------------------------------------------------------------
def test_version_and_build_info_describe_this_build(lib):
    assert lib.crosslayer_version().decode() == crosslayer.__version__
    assert lib.crosslayer_api_version() == 5
    info = dict(pair.split("=", 1) for pair in lib.crosslayer_build_info().decode().split(";"))
    assert info["version"] == crosslayer.__version__
    assert info["blas"] == crosslayer.build_info()["blas_choice"]
    assert info["popcount"] == crosslayer.popcount_path()
    assert info["sign_pack"] == lib.crosslayer_sign_pack_path().decode()
    assert lib.crosslayer_status_name(FORMAT_ERROR) == b"CROSSLAYER_FORMAT_ERROR"


def test_headers_the_installed_header_names_are_installed():
    """The installed crosslayer.h's opening comment may name only headers a user of the installed package has."""
    import re

    installed = Path(crosslayer.include_dir()) / "crosslayer"
    opening = (installed / "crosslayer.h").read_text().split("*/", 1)[0]
    named = set(re.findall(r"\b([a-z_]+\.h)\b", opening))
    assert "crosslayer.h" in named
    assert named <= {path.name for path in installed.iterdir()}, named


def test_only_c_symbols_are_exported_and_python_links_the_same_library():
    if shutil.which("nm") is None:
        pytest.skip("nm is not installed")
    library = crosslayer.library_path()
    exported = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in exported.stdout.splitlines() if line.strip()]
    assert names and all(name.startswith("crosslayer_") for name in names), names
    soname = subprocess.run(["readelf", "-d", library], capture_output=True, text=True, check=True).stdout
    assert f"[{Path(library).name}]" in soname  # SONAME libcrosslayer.so.MAJOR.MINOR, the installed file's name
    core = next(Path(crosslayer.__file__).parent.glob("_core*.so"))
    imports = subprocess.run(["nm", "-D", "--undefined-only", str(core)], capture_output=True, text=True, check=True)
    assert "crosslayer_pool_codes" in imports.stdout and "crosslayer_search" in imports.stdout
    assert "crosslayer_pool_compact" in imports.stdout and "crosslayer_finish_pooled_compact" in imports.stdout
    needed = subprocess.run(["readelf", "-d", str(core)], capture_output=True, text=True, check=True).stdout
    assert f"[{Path(library).name}]" in needed


def test_pool_with_pca_equals_python(lib, rng):
    local = rng.standard_normal((3, 6, 4, 3)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((3, 7, 4, 3)), 0).astype(np.float32)
    mean, projection = rng.standard_normal(6).astype(np.float32), rng.standard_normal((6, 70)).astype(np.float32)
    codes = crosslayer.pool(local, guidance, pca=(mean, projection), output="codes")
    floats = crosslayer.pool(local, guidance, pca=(mean, projection), output="float")
    bits = np.empty_like(codes.bits)
    channel_mean = np.empty_like(codes.channel_mean)
    representation = np.empty_like(floats)
    args = (ptr(local, f32p), ptr(guidance, f32p), 3, 6, 7, 12, ptr(mean, f32p), ptr(projection, f32p), 70)
    assert lib.crosslayer_pool_codes(*args, ptr(bits, u64p), ptr(channel_mean, f32p), 0) == OK
    assert lib.crosslayer_pool_float(*args, ptr(representation, f32p), None, 1) == OK
    np.testing.assert_array_equal(bits, codes.bits)
    np.testing.assert_array_equal(channel_mean, codes.channel_mean)
    np.testing.assert_array_equal(representation, floats)



def test_finish_pooled_equals_python_in_place_too_and_reports_errors(lib, rng):
    from crosslayer.pooling import finish_pooled

    pooled = rng.standard_normal((2, 5, 70)).astype(np.float32)
    codes = finish_pooled(pooled, np.ones((2, 5), np.float32), output="codes")
    bits = np.empty_like(codes.bits)
    assert lib.crosslayer_finish_pooled_codes(ptr(pooled, f32p), 2, 5, 70, ptr(bits, u64p), 1) == OK
    np.testing.assert_array_equal(bits, codes.bits)
    in_place = pooled.copy()
    assert lib.crosslayer_finish_pooled_float(ptr(in_place, f32p), 2, 5, 70, ptr(in_place, f32p), 0) == OK
    np.testing.assert_array_equal(in_place.reshape(2, -1), finish_pooled(pooled))
    assert lib.crosslayer_finish_pooled_codes(None, 2, 5, 70, ptr(bits, u64p), 1) == INVALID_ARGUMENT
    assert b"pooled" in lib.crosslayer_last_error()
    assert lib.crosslayer_finish_pooled_float(ptr(pooled, f32p), 2, 0, 70, ptr(in_place, f32p), 1) == INVALID_ARGUMENT
    assert b"dk" in lib.crosslayer_last_error()
    pooled[1, 4, 69] = np.nan
    assert lib.crosslayer_finish_pooled_codes(ptr(pooled, f32p), 2, 5, 70, ptr(bits, u64p), 1) == NOT_FINITE


def test_compact_pooling_equals_python_and_reports_errors(lib, rng):
    from crosslayer.pooling import finish_pooled

    local = rng.standard_normal((3, 6, 4, 3)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((3, 70, 4, 3)), 0).astype(np.float32)
    guidance[:, 5] = 0
    mean, projection = rng.standard_normal(6).astype(np.float32), rng.standard_normal((6, 70)).astype(np.float32)
    codes = crosslayer.pool(local, guidance, pca=(mean, projection), output="codes", num_threads=3, layout="compact")
    bits = np.empty_like(codes.bits)
    channel_mean = np.empty_like(codes.channel_mean)
    args = (ptr(local, f32p), ptr(guidance, f32p), 3, 6, 70, 12, ptr(mean, f32p), ptr(projection, f32p), 70)
    assert lib.crosslayer_pool_compact(*args, ptr(bits, u64p), ptr(channel_mean, f32p), 3) == OK
    np.testing.assert_array_equal(bits, codes.bits)
    np.testing.assert_array_equal(channel_mean, codes.channel_mean)
    assert lib.crosslayer_pool_compact(*args, None, None, 1) == INVALID_ARGUMENT
    assert "bits: expected uint64 [n][ceil(dk/64) + dk*ceil(dt/64)], got NULL" in last_error(lib)

    pooled = rng.standard_normal((2, 70, 70)).astype(np.float32)
    pooled[1, 3] = 0
    codes = finish_pooled(pooled, np.ones((2, 70), np.float32), output="codes", layout="compact")
    bits = np.empty_like(codes.bits)
    assert bits.shape == (2, 2 + 70 * 2)
    assert lib.crosslayer_finish_pooled_compact(ptr(pooled, f32p), 2, 70, 70, ptr(bits, u64p), 2) == OK
    np.testing.assert_array_equal(bits, codes.bits)
    assert lib.crosslayer_finish_pooled_compact(ptr(pooled, f32p), 2, 70, 70, None, 2) == INVALID_ARGUMENT
    assert lib.crosslayer_finish_pooled_compact(ptr(pooled, f32p), 0, 70, 70, None, 2) == OK  # nothing to write
    pooled[0, 69, 0] = np.inf
    assert lib.crosslayer_finish_pooled_compact(ptr(pooled, f32p), 2, 70, 70, ptr(bits, u64p), 2) == NOT_FINITE


def test_sign_pack_path_can_be_forced_and_is_checked(lib):
    names = [lib.crosslayer_sign_pack_path_name(i).decode() for i in range(lib.crosslayer_sign_pack_path_count())]
    assert names[-1] == "portable" and lib.crosslayer_sign_pack_path_name(len(names)) is None
    before = lib.crosslayer_sign_pack_path()
    try:
        for name in names:
            assert lib.crosslayer_set_sign_pack_path(name.encode()) == OK
            assert lib.crosslayer_sign_pack_path().decode() == name
    finally:
        assert lib.crosslayer_set_sign_pack_path(before) == OK
    assert lib.crosslayer_set_sign_pack_path(b"avx9") == INVALID_ARGUMENT
    assert "name: sign packing path 'avx9': unknown" in last_error(lib)
    assert lib.crosslayer_set_sign_pack_path(None) == INVALID_ARGUMENT


LAYOUT_TWO_PLANE, LAYOUT_COMPACT = 0, 1


def test_compact_gram_search_check_and_version_3_files(lib, rng, tmp_path):
    from _codes import random_compact_codes
    from crosslayer.formats import CodeFile
    from crosslayer.search import select_channels

    database, queries = random_compact_codes(rng, 9, 70, 65), random_compact_codes(rng, 3, 70, 65)
    gram = np.empty((3, 9), np.int32)
    assert lib.crosslayer_gram_layout(LAYOUT_COMPACT, ptr(queries.bits, u64p), 3, ptr(database.bits, u64p), 9, 70,
                                      65, ptr(gram, i32p), 0) == OK, last_error(lib)
    np.testing.assert_array_equal(gram, crosslayer.gram(queries, database))
    np.testing.assert_array_equal(gram, crosslayer.gram(queries.expanded(), database.expanded()))
    selection = select_channels(queries.channel_mean, 5)
    scores, ids = np.empty((3, 4), np.int32), np.empty((3, 4), np.int64)
    assert lib.crosslayer_search_layout(LAYOUT_COMPACT, ptr(queries.bits, u64p), 3, ptr(database.bits, u64p), 9, 70,
                                        65, ptr(selection, i32p), 5, 4, 0, 0, ptr(scores, i32p), ptr(ids, i64p),
                                        0) == OK
    expected = crosslayer.search(queries, database, k=4, channels=5)
    np.testing.assert_array_equal(scores, expected[0])
    np.testing.assert_array_equal(ids, expected[1])
    assert lib.crosslayer_gram_layout(7, ptr(queries.bits, u64p), 3, None, 3, 70, 65, ptr(gram, i32p), 0) == INVALID_ARGUMENT
    assert last_error(lib).startswith("layout: expected CROSSLAYER_LAYOUT_TWO_PLANE (0) or CROSSLAYER_LAYOUT_COMPACT (1)")
    assert lib.crosslayer_codes_check_layout(LAYOUT_COMPACT, ptr(database.bits, u64p), 9, 70, 65) == OK
    broken = database.bits.copy()
    dead = np.flatnonzero(~crosslayer.compact.live_mask(broken, 70)[4])[0]
    broken[4, 2 + dead * 2] = 1  # a sign bit in a dead channel of item 4
    assert lib.crosslayer_codes_check_layout(LAYOUT_COMPACT, ptr(broken, u64p), 9, 70, 65) == INVALID_ARGUMENT
    assert last_error(lib) == "bits: item 4 has sign bits in a dead channel (a channel whose live bit is clear must have an all-zero sign row)"
    # a version 3 file (crosslayer 0.3) reads in C as in Python
    two_plane = database.expanded()
    block = CodeFile.key_block(None)
    header = CodeFile(9, 70, 65, 0, None, version=3)
    payload = two_plane.bits.tobytes() + two_plane.channel_mean.tobytes() + block
    import zlib
    (tmp_path / "v3.xlc").write_bytes(header.pack(zlib.crc32(payload, header.checksum_seed())) + payload)
    status, back = read_with_c(lib, tmp_path / "v3.xlc")
    assert status == OK and back == two_plane == Codes.load(tmp_path / "v3.xlc")


def test_gram_and_search_equal_python(lib, rng):
    database = random_codes(rng, 9, 4, 70)
    queries = random_codes(rng, 3, 4, 70)
    gram = np.empty((3, 9), np.int32)
    assert lib.crosslayer_gram(ptr(queries.bits, u64p), 3, ptr(database.bits, u64p), 9, 4, 70, ptr(gram, i32p), 0) == OK
    np.testing.assert_array_equal(gram, crosslayer.gram(queries, database))
    channels = np.array([[0, 2], [1, 3], [3, 0]], np.int32)
    scores, ids = np.empty((3, 4), np.int32), np.empty((3, 4), np.int64)
    status = lib.crosslayer_search(ptr(queries.bits, u64p), 3, ptr(database.bits, u64p), 9, 4, 70, ptr(channels, i32p),
                                   2, 4, 0, 0, ptr(scores, i32p), ptr(ids, i64p), 0)
    assert status == OK
    # the definition: ternary dot over each query's channels, best first, ties to the smaller id
    signs_q, signs_d = queries.signs().astype(np.int64), database.signs().astype(np.int64)
    for q in range(3):
        dots = np.einsum("kd,nkd->n", signs_q[q, channels[q]], signs_d[:, channels[q]])
        order = sorted(range(9), key=lambda j: (-dots[j], j))[:4]
        assert list(ids[q]) == order and list(scores[q]) == [dots[j] for j in order]


def test_bad_arguments_return_a_status_and_a_message_naming_them(lib, rng):
    local = np.ones((1, 2, 1, 1), np.float32)
    bits = np.empty((1, 1, 2, 1), np.uint64)
    assert lib.crosslayer_pool_codes(None, ptr(local, f32p), 1, 2, 1, 1, None, None, 2, ptr(bits, u64p), None, 0) == INVALID_ARGUMENT
    assert last_error(lib).startswith("local: expected float32")
    assert lib.crosslayer_pool_codes(ptr(local, f32p), ptr(local, f32p), 1, 2, 1, 1, None, None, 3, ptr(bits, u64p), None, 0) == INVALID_ARGUMENT
    assert last_error(lib).startswith("dt: without PCA it must equal dt_in (2), got 3")
    assert lib.crosslayer_pool_codes(ptr(local, f32p), ptr(local, f32p), 1, 2, 1, -4, None, None, 2, ptr(bits, u64p), None, 0) == INVALID_ARGUMENT
    assert last_error(lib).startswith("positions: expected an integer in [1, 2^40), got -4")
    codes = random_codes(rng, 2, 3, 10)
    channels = np.array([[0, 5]], np.int32)
    scores, ids = np.empty((1, 1), np.int32), np.empty((1, 1), np.int64)
    status = lib.crosslayer_search(ptr(codes.bits, u64p), 1, ptr(codes.bits, u64p), 2, 3, 10, ptr(channels, i32p), 2, 1,
                                   0, 0, ptr(scores, i32p), ptr(ids, i64p), 0)
    assert status == INVALID_ARGUMENT and "channels: entry 1 is 5" in last_error(lib)
    assert lib.crosslayer_set_popcount_path(b"no-such-path") == INVALID_ARGUMENT
    assert "unknown popcount path" in last_error(lib)


def test_non_finite_pooled_values_are_reported(lib):
    local = np.full((1, 1, 1, 1), np.inf, np.float32)
    guidance = np.ones((1, 1, 1, 1), np.float32)
    bits = np.empty((1, 1, 2, 1), np.uint64)
    assert lib.crosslayer_pool_codes(ptr(local, f32p), ptr(guidance, f32p), 1, 1, 1, 1, None, None, 1, ptr(bits, u64p), None, 0) == NOT_FINITE
    assert "not finite" in last_error(lib)


def test_last_error_is_per_thread(lib):
    assert lib.crosslayer_set_popcount_path(b"bogus-main") == INVALID_ARGUMENT
    seen = []

    def other():
        seen.append(last_error(lib))
        lib.crosslayer_set_popcount_path(b"bogus-other")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [""]
    assert "bogus-main" in last_error(lib)


# ---- code files across the languages ------------------------------------------------------------------------------
def write_with_c(lib, path, bits, channel_mean, n, dk, dt, identity=None, keys=None):
    """crosslayer_codes_write (compact, 2-D bits: crosslayer_codes_write_layout); keys are passed with their byte
    lengths (so keys holding NUL work)."""
    key_array = length_array = None
    if keys is not None:
        encoded = [None if key is None else key.encode() for key in keys]
        key_array = (ctypes.c_char_p * max(n, 1))(*encoded)
        length_array = np.array([0 if key is None else len(key) for key in encoded] or [0], np.int64)
    args = (ptr(bits, u64p), ptr(channel_mean, f32p), n, dk, dt, None if identity is None else identity.encode(),
            key_array, ptr(length_array, i64p))
    if bits.ndim == 2:
        return lib.crosslayer_codes_write_layout(str(path).encode(), LAYOUT_COMPACT, *args)
    return lib.crosslayer_codes_write(str(path).encode(), *args)


def read_with_c(lib, path):
    handle = ctypes.c_void_p()
    status = lib.crosslayer_codes_read(str(path).encode(), ctypes.byref(handle))
    if status != OK:
        assert not handle.value
        return status, last_error(lib)
    n, dk, dt = (getattr(lib, f"crosslayer_codes_{name}")(handle) for name in ("n", "dk", "dt"))
    words = (dt + 63) // 64
    if lib.crosslayer_codes_layout(handle) == LAYOUT_COMPACT:
        shape = (n, (dk + 63) // 64 + dk * words)
    else:
        shape = (n, dk, 2, words)
    size = int(np.prod(shape))
    bits = np.ctypeslib.as_array(lib.crosslayer_codes_bits(handle), (size,)).reshape(shape).copy() if n else np.zeros(shape, np.uint64)
    mean = np.ctypeslib.as_array(lib.crosslayer_codes_channel_mean(handle), (n * dk,)).reshape(n, dk).copy() if n else np.zeros((0, dk), np.float32)
    identity = lib.crosslayer_codes_identity(handle)
    keys = None
    if lib.crosslayer_codes_has_keys(handle):
        keys = []
        for i in range(n):
            length = ctypes.c_int64(-1)
            address = lib.crosslayer_codes_key(handle, i, ctypes.byref(length))
            keys.append(None if address is None else ctypes.string_at(address, length.value).decode())
            assert address is None or ctypes.string_at(address + length.value, 1) == b"\0"  # NUL-terminated too
    outside = ctypes.c_int64(-1)
    assert lib.crosslayer_codes_key(handle, n, ctypes.byref(outside)) is None and outside.value == 0
    lib.crosslayer_codes_free(handle)
    return status, Codes(bits, mean, dt, None if identity is None else identity.decode(), keys)


# every kind of character JSON escapes differently: quotes, backslash, short escapes, other controls, DEL, Latin-1,
# the BMP, beyond it (a surrogate pair in JSON), NUL inside a key, an empty key, a null key
AWKWARD_KEYS = ['a "quoted" \\ path/x.jpg', "tab\there\nnewline\r\b\f", "\x01\x1f\x7f", "café", "日本語", "😀 emoji",
                "nul\x00inside", "", None]


@pytest.mark.parametrize("n, dk, dt, identity, keys", [
    (4, 3, 70, "0123456789abcdef", ["img-0.jpg", None, "ü", "x"]),
    (len(AWKWARD_KEYS), 2, 9, "abc", AWKWARD_KEYS),
    (1, 1, 1, None, None),
    (0, 2, 64, "e" * 16, []),  # an empty key list is a 2-byte block "[]", not no block
    (0, 2, 64, None, None),
])
@pytest.mark.parametrize("layout", ["two_plane", "compact"])
def test_code_files_written_by_c_load_in_python_and_back(lib, rng, tmp_path, n, dk, dt, identity, keys, layout):
    codes = random_codes(rng, n, dk, dt) if n else Codes.empty(dk, dt)
    if layout == "compact":
        codes = codes.compact(lossy=True)
    codes = Codes(codes.bits, codes.channel_mean, dt, identity, keys)
    path = tmp_path / "from_c.xlc"
    assert write_with_c(lib, path, codes.bits, codes.channel_mean, n, dk, dt, identity, keys) == OK, last_error(lib)
    loaded = Codes.load(path)
    assert loaded == codes and loaded.identity == identity and loaded.keys == keys
    python_file = tmp_path / "from_python.xlc"
    codes.save(python_file)
    assert path.read_bytes() == python_file.read_bytes()
    assert path.stat().st_mode == python_file.stat().st_mode  # both follow the umask, as open() would
    status, back = read_with_c(lib, python_file)
    assert status == OK and back == codes and back.identity == identity and back.keys == keys


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=6), identity=st.one_of(
    st.none(), st.text(st.characters(max_codepoint=127, blacklist_characters="\x00"), min_size=1, max_size=16)))
def test_any_keys_and_identity_cross_byte_identical(lib, tmp_path_factory, keys, identity):
    folder = tmp_path_factory.mktemp("keys")
    codes = random_codes(np.random.default_rng(len(keys)), len(keys), 2, 5) if keys else Codes.empty(2, 5)
    codes = Codes(codes.bits, codes.channel_mean, 5, identity, keys)
    codes.save(folder / "python.xlc")
    assert write_with_c(lib, folder / "c.xlc", codes.bits, codes.channel_mean, len(keys), 2, 5, identity, keys) == OK
    assert (folder / "c.xlc").read_bytes() == (folder / "python.xlc").read_bytes()
    status, back = read_with_c(lib, folder / "python.xlc")
    assert status == OK and back.identity == identity and back.keys == keys


def old_format_file(path, version):
    """A version 1/2 code file of 2 items as crosslayer 0.2 wrote it (40-byte header, then bits and means)."""
    import struct
    import zlib

    header = struct.pack("<8sIIQIII", b"XLCODES\0", version, 40, 2, 2, 5, 1)
    payload = bytes(2 * 2 * 2 * 8) + np.ones((2, 2), "<f4").tobytes()
    path.write_bytes(header + struct.pack("<I", zlib.crc32(payload, zlib.crc32(header) if version == 2 else 0)) + payload)


@pytest.mark.parametrize("version", [1, 2])
def test_older_code_file_versions_are_refused_with_the_version(lib, tmp_path, version):
    old_format_file(tmp_path / "old.xlc", version)
    status, message = read_with_c(lib, tmp_path / "old.xlc")
    assert status == FORMAT_ERROR
    assert message == f"{tmp_path / 'old.xlc'}: code file version {version}; this crosslayer reads versions 3 and 4"
    with pytest.raises(CodesFormatError, match=f"code file version {version}; this crosslayer reads versions 3 and 4"):
        Codes.load(tmp_path / "old.xlc")


def rewrite_keys(path, block: bytes):
    """Replaces the key block of the code file at `path` with `block`, with a correct size and crc32: damage the
    checksum cannot see."""
    import zlib

    from crosslayer.formats import CodeFile

    header, bits, means, _ = CodeFile.read(path)
    header = CodeFile(header.n, header.Dk, header.Dt, len(block), header.identity)
    payload = bits.tobytes() + means.tobytes() + block
    path.write_bytes(header.pack(zlib.crc32(payload, header.checksum_seed())) + payload)


@pytest.mark.parametrize("block, message", [
    (b'["a", "b"]', "expected 3 strings, found 2"),
    (b'["a", "b", 3]', "expected a string or null at byte 11"),
    (b'["a", "b", "c"', "expected ',' or ']' at byte 14"),
    (b'["a", "\xff", "c"]', "invalid UTF-8 at byte 7"),
    (b'["a", "\\ud800", "c"]', "unpaired surrogate escape"),
    (b'["a", "b", "c"] x', "extra data after the list"),
    (b'{"a": 1}', "expected a JSON list"),
])
def test_damaged_key_blocks_are_refused(lib, rng, tmp_path, block, message):
    path = tmp_path / "keys.xlc"
    codes = random_codes(rng, 3, 2, 5)
    Codes(codes.bits, codes.channel_mean, 5, None, ["x", "y", "z"]).save(path)
    rewrite_keys(path, block)
    status, error = read_with_c(lib, path)
    assert status == FORMAT_ERROR and error.startswith(f"{path}: damaged key block (") and message in error, error
    if b"ud800" not in block:  # Python reads a lone surrogate escape (the one documented divergence for keys)
        with pytest.raises(CodesFormatError, match="damaged key block"):
            Codes.load(path)


def test_key_blocks_python_would_read_in_any_json_layout_are_read(lib, rng, tmp_path):
    path = tmp_path / "keys.xlc"
    codes = random_codes(rng, 3, 2, 5)
    Codes(codes.bits, codes.channel_mean, 5, None, ["x", "y", "z"]).save(path)
    rewrite_keys(path, b' [ "\\u00e9\\/" ,\n\tnull,"\\ud83d\\ude00\xc3\xa9"\r] ')
    status, back = read_with_c(lib, path)
    assert status == OK and back.keys == ["é/", None, "😀é"] == Codes.load(path).keys


def test_identity_fields_c_cannot_return_are_refused(lib, rng, tmp_path):
    codes = random_codes(rng, 2, 2, 5)
    Codes(codes.bits, codes.channel_mean, 5, "ab\x00cd").save(tmp_path / "nul.xlc")
    status, message = read_with_c(lib, tmp_path / "nul.xlc")
    assert status == FORMAT_ERROR and message.endswith("inconsistent header (identity holds a NUL byte)")
    data = bytearray((tmp_path / "nul.xlc").read_bytes())
    data[44] = 0xE9  # a non-ASCII identity byte: the crc covers the header, so both readers refuse the file
    (tmp_path / "latin.xlc").write_bytes(bytes(data))
    status, message = read_with_c(lib, tmp_path / "latin.xlc")
    assert status == FORMAT_ERROR and message.endswith("inconsistent header (identity is not ASCII)")
    with pytest.raises(CodesFormatError, match="identity is not ASCII"):
        Codes.load(tmp_path / "latin.xlc")


@pytest.mark.parametrize("identity, keys, message", [
    ("0123456789abcdefX", None, "identity: expected NULL, \"\" or at most 16 ASCII characters"),
    ("caf\xe9", None, "identity: expected NULL, \"\" or at most 16 ASCII characters (an encoder identity digest), got \"caf\\xe9\""),
    (None, ["ok", b"\xc3(", None], "keys[1]: not valid UTF-8 at byte 0"),
    (None, ["ok", b"\xed\xa0\x80"], "keys[1]: not valid UTF-8"),  # a UTF-8 encoded surrogate
])
def test_c_writes_nothing_for_a_bad_identity_or_key(lib, rng, tmp_path, identity, keys, message):
    codes = random_codes(rng, 3, 2, 5)
    key_array = None
    if keys is not None:
        key_array = (ctypes.c_char_p * 3)(*[k.encode() if isinstance(k, str) else k for k in keys] + [None] * (3 - len(keys)))
    path = tmp_path / "bad.xlc"
    status = lib.crosslayer_codes_write(str(path).encode(), ptr(codes.bits, u64p), ptr(codes.channel_mean, f32p), 3, 2,
                                        5, None if identity is None else identity.encode("latin-1"), key_array, None)
    assert status == INVALID_ARGUMENT and last_error(lib).startswith(message), last_error(lib)
    assert not list(tmp_path.iterdir())


def test_c_refuses_damaged_files_as_python_does(lib, rng, tmp_path):
    path = tmp_path / "codes.xlc"
    random_codes(rng, 3, 2, 20).save(path)
    data = bytearray(path.read_bytes())
    cases = {
        "flipped_payload": data[:-1] + bytes([data[-1] ^ 1]),
        "flipped_dk_header": data[:24] + bytes([data[24] ^ 1]) + data[25:],
        "truncated": data[:-3],
        "other_magic": b"NOTCODES" + data[8:],
        "future_version": data[:8] + (9).to_bytes(4, "little") + data[12:],
    }
    for name, damaged in cases.items():
        bad = tmp_path / f"{name}.xlc"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(CodesFormatError):
            Codes.load(bad)
        status, message = read_with_c(lib, bad)
        assert status == FORMAT_ERROR and message.startswith(str(bad)), (name, message)
    status, message = read_with_c(lib, tmp_path / "missing.xlc")
    assert status == IO_ERROR and "cannot open" in message


def test_c_writes_nothing_for_bits_that_break_the_layout(lib, rng, tmp_path):
    codes = random_codes(rng, 2, 2, 10)
    bits = codes.bits.copy()
    bits[1, 0, 0, 0] |= np.uint64(1) << np.uint64(12)  # a padding bit (Dt=10)
    path = tmp_path / "bad.xlc"
    status = lib.crosslayer_codes_write(str(path).encode(), ptr(bits, u64p), ptr(codes.channel_mean, f32p), 2, 2, 10,
                                        None, None, None)
    assert status == INVALID_ARGUMENT and "item 1 has padding bits set" in last_error(lib)
    assert not path.exists() and not list(tmp_path.iterdir())
    assert lib.crosslayer_codes_check(ptr(bits, u64p), 2, 2, 10) == INVALID_ARGUMENT
    assert lib.crosslayer_codes_check(ptr(codes.bits, u64p), 2, 2, 10) == OK


# ---- examples/c/encode_codes built against the installed CMake package --------------------------------------------
@pytest.fixture(scope="module")
def encode_codes(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("encode_codes")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    # only the installed package: the example's own folder and crosslayer_DIR, nothing from the source tree
    configure = ["cmake", "-S", str(ROOT / "examples" / "c"), "-B", str(build), *generator,
                 f"-Dcrosslayer_DIR={crosslayer.cmake_dir()}"]
    for command in (configure, ["cmake", "--build", str(build)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    return build / "encode_codes"


def run_example(program, *args):
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("n, dt, dk, h, w", [(3, 5, 7, 4, 3), (1, 130, 2, 2, 5), (5, 64, 9, 1, 1)])
def test_encode_codes_example_gives_the_bits_of_crosslayer_pool(encode_codes, tmp_path, n, dt, dk, h, w):
    rng = np.random.default_rng(n * 1000 + dt)
    local = np.maximum(rng.standard_normal((n, dt, h, w)), 0).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, h, w)), 0).astype(np.float32)
    local.tofile(tmp_path / "local.f32")
    guidance.tofile(tmp_path / "guidance.f32")
    result = run_example(encode_codes, tmp_path / "local.f32", tmp_path / "guidance.f32", n, dt, dk, h, w,
                         tmp_path / "out.bits")
    assert result.returncode == 0, result.stderr
    expected = crosslayer.pool(local, guidance, output="codes").bits
    bits = np.fromfile(tmp_path / "out.bits", dtype="<u8").reshape(expected.shape)
    np.testing.assert_array_equal(bits, expected)


@pytest.mark.parametrize(
    "args, message",
    [
        (["local.f32", "guidance.f32", 2, 3, 4, 2, 2], "usage: encode_codes"),
        (["local.f32", "guidance.f32", "two", 3, 4, 2, 2, "out.bits"], "N: expected a positive integer, got 'two'"),
        (["local.f32", "guidance.f32", 2, 3, 0, 2, 2, "out.bits"], "DK: expected a positive integer, got '0'"),
        (["local.f32", "guidance.f32", 2, 4, 4, 2, 2, "out.bits"], "LOCAL: "),  # 2*4*4 floats wanted, file has 2*3*4
        (["local.f32", "guidance.f32", 2, 3, 5, 2, 2, "out.bits"], "GUIDANCE: "),
        (["missing.f32", "guidance.f32", 2, 3, 4, 2, 2, "out.bits"], "LOCAL: cannot open"),
        (["local.f32", "guidance.f32", 2, 3, 4, 2, 2, "no/such/dir/out.bits"], "cannot create OUT.bits"),
        (["nan.f32", "guidance.f32", 2, 3, 4, 2, 2, "out.bits"], "pooling failed: x_t, a_t1: the pooled values are not finite"),
    ],
)
def test_encode_codes_example_refuses_bad_input(encode_codes, tmp_path, args, message):
    np.ones((2, 3, 2, 2), np.float32).tofile(tmp_path / "local.f32")
    np.full((2, 3, 2, 2), np.nan, np.float32).tofile(tmp_path / "nan.f32")
    np.ones((2, 4, 2, 2), np.float32).tofile(tmp_path / "guidance.f32")
    result = subprocess.run([str(encode_codes), *map(str, args)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "out.bits").exists()
