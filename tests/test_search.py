import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crosslayer
from crosslayer import reference
from crosslayer.search import search_segments, select_channels

from _codes import for_each_popcount_path, random_codes


@pytest.fixture
def restore_popcount_path():
    before = crosslayer.popcount_path()
    yield
    crosslayer.set_popcount_path(before)


def test_popcount_paths_are_reported_and_switchable(restore_popcount_path):
    paths = crosslayer.popcount_paths()
    assert paths[-1] == "portable" and crosslayer.build_info()["popcount"] == paths[0]
    for path in paths:
        crosslayer.set_popcount_path(path)
        assert crosslayer.build_info()["popcount"] == path
    with pytest.raises(ValueError, match="unknown popcount path"):
        crosslayer.set_popcount_path("sse9")


shapes = st.tuples(st.integers(0, 7), st.integers(0, 9), st.integers(1, 5), st.integers(1, 200))


@given(shapes, st.integers(0, 2**32 - 1))
def test_gram_matches_reference(shape, seed):
    n_a, n_b, dk, dt = shape
    rng = np.random.default_rng(seed)
    a, b = random_codes(rng, n_a, dk, dt), random_codes(rng, n_b, dk, dt)
    expected_ab = reference.gram_reference(a.bits, b.bits, dt)
    expected_aa = reference.gram_reference(a.bits, a.bits, dt)
    expected_cosine = reference.cosine_gram_reference(a.bits, b.bits, dt)

    def check(path):
        got = crosslayer.gram(a, b)
        assert got.dtype == np.int32 and got.shape == (n_a, n_b)
        np.testing.assert_array_equal(got, expected_ab, err_msg=path)
        np.testing.assert_array_equal(crosslayer.gram(a), expected_aa, err_msg=path)
        # empty code sets included (n_a or n_b = 0)
        got_cosine = crosslayer.gram(a, b, normalize=True)
        np.testing.assert_allclose(got_cosine, expected_cosine, rtol=1e-12, atol=0, err_msg=path)

    for_each_popcount_path(check)


def test_gram_across_blocks_and_slabs(rng):
    # > 64 images (row/column blocks, mirrored lower triangle) and > 64 channels (channel slabs).
    a = random_codes(rng, 150, 3, 70)
    np.testing.assert_array_equal(crosslayer.gram(a), reference.gram_reference(a.bits, a.bits, 70))
    wide = random_codes(rng, 6, 130, 9)
    other = random_codes(rng, 5, 130, 9)
    np.testing.assert_array_equal(crosslayer.gram(wide, other), reference.gram_reference(wide.bits, other.bits, 9))


# The Gram kernel packs channels into chunks of about 256 words per plane (padded to whole vectors) and scores
# 128 x 128 output tiles in 4 x 4 row groups; these shapes cross every one of those boundaries.
gram_packing_shapes = st.tuples(
    st.sampled_from([0, 1, 3, 5, 130]),  # n_a: empty, one image, partial row groups, more than one tile
    st.sampled_from([0, 1, 6, 131]),  # n_b
    st.sampled_from([1, 2, 60, 300]),  # Dk: one channel, one partial chunk, several chunks
    st.sampled_from([1, 63, 64, 65, 300, 600]),  # Dt: words per plane 1, 1, 1, 2, 5, 10 (chunks not filling a vector)
)


@settings(max_examples=25, deadline=None)
@given(gram_packing_shapes, st.integers(0, 2**32 - 1))
def test_gram_packed_tiles_match_reference_on_every_path(shape, seed):
    n_a, n_b, dk, dt = shape
    if max(n_a, n_b) > 100 and dk * dt > 20000:
        dk = 2  # keep the example small: large n with few channels still crosses the tile boundaries
    rng = np.random.default_rng(seed)
    a, b = random_codes(rng, n_a, dk, dt), random_codes(rng, n_b, dk, dt)
    expected_ab = reference.gram_reference(a.bits, b.bits, dt)
    expected_aa = reference.gram_reference(a.bits, a.bits, dt)

    def check(path):
        np.testing.assert_array_equal(crosslayer.gram(a, b), expected_ab, err_msg=path)
        np.testing.assert_array_equal(crosslayer.gram(a), expected_aa, err_msg=path)
        np.testing.assert_array_equal(crosslayer.gram(a, num_threads=1), expected_aa, err_msg=path)

    for_each_popcount_path(check)


def test_gram_normalized_is_cosine_and_feeds_an_svm(rng):
    codes = random_codes(rng, 20, 4, 50)
    codes.bits[3] = 0  # an all-zero code: its row and column are 0, not NaN
    dense = codes.signs().reshape(20, -1).astype(np.float64)
    norms = np.linalg.norm(dense, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.nan_to_num(dense @ dense.T / np.outer(norms, norms))
    got = crosslayer.gram(codes, normalize=True)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    cosine = reference.cosine_gram_reference(codes.bits, codes.bits, 50)
    np.testing.assert_allclose(cosine, expected, rtol=1e-12, atol=1e-15)

    from sklearn.svm import SVC

    labels = np.arange(20) % 2
    model = SVC(kernel="precomputed", C=100.0).fit(crosslayer.gram(codes).astype(np.float64), labels)
    assert (model.predict(crosslayer.gram(codes).astype(np.float64)) == labels).mean() > 0.9


def test_gram_rejects_bad_input(rng):
    a = random_codes(rng, 2, 3, 10)
    with pytest.raises(TypeError, match="codes_a"):
        crosslayer.gram(a.bits)
    with pytest.raises(ValueError, match="codes_b"):
        crosslayer.gram(a, random_codes(rng, 2, 4, 10))


@given(st.integers(0, 6), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_select_channels_matches_reference_with_ties(dk_extra, n, seed):
    rng = np.random.default_rng(seed)
    dk = 1 + dk_extra
    means = rng.integers(0, 3, (n, dk)).astype(np.float32)
    for channels in range(1, dk + 1):
        np.testing.assert_array_equal(select_channels(means, channels), reference.select_channels_reference(means, channels))


search_shapes = st.tuples(st.integers(0, 4), st.integers(0, 13), st.integers(1, 6), st.integers(1, 150))


@given(search_shapes, st.integers(1, 16), st.data())
def test_search_matches_reference_exactly(shape, k, data):
    nq, n, dk, dt = shape
    channels = data.draw(st.one_of(st.none(), st.integers(1, dk)), label="channels")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    queries, database = random_codes(rng, nq, dk, dt, 0.7), random_codes(rng, n, dk, dt, 0.7)
    expected_scores, expected_ids = reference.search_reference(
        queries.bits, queries.channel_mean, database.bits, dt, k, channels
    )

    def check(path):
        scores, ids = crosslayer.search(queries, database, k=k, channels=channels)
        assert scores.dtype == np.int32 and ids.dtype == np.int64 and scores.shape == (nq, min(k, n))
        np.testing.assert_array_equal(scores, expected_scores, err_msg=path)
        np.testing.assert_array_equal(ids, expected_ids, err_msg=path)  # the tie rule is deterministic

    for_each_popcount_path(check)


def test_search_many_queries_and_items_with_ties(rng):
    # > 64 queries (several query batches), items split over threads and 4-item blocks, heavy ties.
    queries, database = random_codes(rng, 70, 5, 20, 0.9), random_codes(rng, 57, 5, 20, 0.9)
    scores, ids = crosslayer.search(queries, database, k=9, channels=2)
    expected = reference.search_reference(queries.bits, queries.channel_mean, database.bits, 20, 9, 2)
    np.testing.assert_array_equal(scores, expected[0])
    np.testing.assert_array_equal(ids, expected[1])


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([1, 65, 257, 300, 330, 520]), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_search_rows_with_vector_and_word_tails_on_every_path(dt, n_items, seed):
    # Rows of 1..9 words per plane: whole 256-bit vectors, scalar tail words, or both; item counts that leave a
    # partial 8-item block; queries sharing channels (one row scored for several queries).
    rng = np.random.default_rng(seed)
    queries, database = random_codes(rng, 6, 7, dt, 0.6), random_codes(rng, n_items, 7, dt, 0.6)
    expected = reference.search_reference(queries.bits, queries.channel_mean, database.bits, dt, 5, 3)

    def check(path):
        scores, ids = crosslayer.search(queries, database, k=5, channels=3)
        np.testing.assert_array_equal(scores, expected[0], err_msg=path)
        np.testing.assert_array_equal(ids, expected[1], err_msg=path)

    for_each_popcount_path(check)


def test_search_spans_several_item_ranges_and_threads(rng):
    # > 256 items: several ranges handed out to threads; the per-thread top-k lists merge.
    queries, database = random_codes(rng, 3, 3, 70, 0.8), random_codes(rng, 600, 3, 70, 0.8)
    expected = reference.search_reference(queries.bits, queries.channel_mean, database.bits, 70, 12, 2)
    for threads in (1, 2, 3):
        scores, ids = crosslayer.search(queries, database, k=12, channels=2, num_threads=threads)
        np.testing.assert_array_equal(scores, expected[0])
        np.testing.assert_array_equal(ids, expected[1])


def test_search_over_segments_equals_search_over_their_concatenation(rng):
    queries, database = random_codes(rng, 5, 4, 33, 0.8), random_codes(rng, 23, 4, 33, 0.8)
    cuts = [0, 2, 2, 11, 23]  # includes an empty segment and segments smaller than k
    segments = [(database.bits[lo:hi], lo) for lo, hi in zip(cuts, cuts[1:])]
    merged = search_segments(queries, segments, k=7, channels=3)
    whole = crosslayer.search(queries, database, k=7, channels=3)
    np.testing.assert_array_equal(merged[0], whole[0])
    np.testing.assert_array_equal(merged[1], whole[1])


def test_search_rejects_bad_arguments(rng):
    queries, database = random_codes(rng, 2, 4, 10), random_codes(rng, 3, 4, 10)
    with pytest.raises(ValueError, match="channels: expected at most Dk=4"):
        crosslayer.search(queries, database, channels=5)
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        crosslayer.search(queries, database, k=0, channels=2)
    with pytest.raises(TypeError, match="k: expected an integer"):
        crosslayer.search(queries, database, k=2.5, channels=2)
    with pytest.raises(ValueError, match="channels"):
        crosslayer.search(queries, database, channels=0)
    with pytest.raises(ValueError, match="database"):
        crosslayer.search(queries, random_codes(rng, 3, 5, 10), channels=2)
    with pytest.raises(TypeError, match="queries"):
        crosslayer.search(queries.bits, database)


def test_num_threads_is_validated_and_capped(rng):
    from crosslayer._validate import MAX_THREADS

    codes = random_codes(rng, 5, 3, 70)
    gram, found = crosslayer.gram(codes), crosslayer.search(codes, codes, k=3, channels=2)
    for call in (lambda t: crosslayer.gram(codes, num_threads=t),
                 lambda t: crosslayer.search(codes, codes, k=3, channels=2, num_threads=t)):
        for bad in ("4", 2.0, True, None):
            with pytest.raises(TypeError, match=r"num_threads: expected an integer >= 0 \(0 = the OpenMP default\)"):
                call(bad)
        with pytest.raises(ValueError, match="num_threads: expected an integer >= 0"):
            call(-1)
    # beyond a C int and far beyond the cores: capped, not handed to pybind11 or OpenMP
    for threads in (np.int64(2), MAX_THREADS, 10**10):
        np.testing.assert_array_equal(crosslayer.gram(codes, num_threads=threads), gram)
        for got, want in zip(crosslayer.search(codes, codes, k=3, channels=2, num_threads=threads), found):
            np.testing.assert_array_equal(got, want)
    assert crosslayer._validate.check_num_threads(10**10) == MAX_THREADS


def test_search_survives_openmp_starting_fewer_threads_than_asked(tmp_path):
    """OMP_THREAD_LIMIT (or OMP_DYNAMIC, or a call from a parallel region) gives the search fewer threads than it
    sized its per-thread results for; the unused slots must be skipped, not read (it used to crash)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, crosslayer
        from crosslayer import reference
        from _codes import random_codes
        codes = random_codes(np.random.default_rng(5), 1100, 4, 70)
        got = crosslayer.search(codes[:3], codes, k=5, channels=2, num_threads=4)
        expected = reference.search_reference(codes[:3].bits, codes[:3].channel_mean, codes.bits, 70, 5, 2)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
        print("ok")
    """)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(crosslayer.__file__)))  # the one under test
    env = dict(os.environ, OMP_NUM_THREADS="4", OMP_THREAD_LIMIT="2",
               PYTHONPATH=os.pathsep.join([package_parent, tests_dir, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_raw_kernels_refuse_output_arrays_they_would_copy(rng):
    """The bindings write results in place: an output pybind11 would have to convert (Fortran order, strided,
    another dtype) must be refused, not filled as a temporary copy while the caller's array stays untouched."""
    from crosslayer._native import core

    codes = random_codes(rng, 5, 3, 70)
    for bad in (np.zeros((5, 5), np.int32, order="F"), np.zeros((5, 10), np.int32)[:, ::2], np.zeros((5, 5), np.int16)):
        with pytest.raises(ValueError, match="out must be a C-contiguous int32 array"):
            core.gram_cpu(codes.bits, None, 70, bad)
    channels = np.zeros((2, 1), np.int32)
    with pytest.raises(ValueError, match="out_scores must be a C-contiguous int32 array"):
        core.search_cpu(codes.bits[:2], codes.bits, 70, channels, 3, 0, False, np.zeros((2, 3), np.int32, order="F")[:, :],
                        np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="out_ids must be a C-contiguous int64 array"):
        core.search_cpu(codes.bits[:2], codes.bits, 70, channels, 3, 0, False, np.zeros((2, 3), np.int32),
                        np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="dt must be in"):
        core.gram_cpu(codes.bits, None, 2**62, np.zeros((5, 5), np.int32))
