"""Gram and masked search on compact codes (csrc/cpu kernels, every popcount path): exact integers equal to the
numpy reference and to the 2-plane kernels on the same codes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crosslayer
from crosslayer import Codes, reference
from crosslayer.errors import UsageError
from crosslayer.search import search_segments

from _codes import for_each_popcount_path, random_compact_codes, random_compactable_signs


# Dt: 1 word with tails, whole vectors, vectors plus scalar words; Dk not a multiple of 64; packed-tile boundaries
gram_shapes = st.tuples(st.sampled_from([0, 1, 3, 5, 130]), st.sampled_from([0, 1, 6, 131]),
                        st.sampled_from([1, 2, 65, 300]), st.sampled_from([1, 63, 65, 300, 330]))


@settings(max_examples=25, deadline=None)
@given(gram_shapes, st.sampled_from([0.0, 0.05, 0.5, 1.0]), st.integers(0, 2**32 - 1))
def test_compact_gram_equals_reference_and_2_plane_on_every_path(shape, dead_fraction, seed):
    n_a, n_b, dk, dt = shape
    if max(n_a, n_b) > 100 and dk * dt > 20000:
        dk = 2
    rng = np.random.default_rng(seed)
    a, b = random_compact_codes(rng, n_a, dk, dt, dead_fraction), random_compact_codes(rng, n_b, dk, dt, dead_fraction)
    expected_ab = reference.compact_gram_reference(a.bits, b.bits, dk, dt)
    expected_aa = reference.compact_gram_reference(a.bits, a.bits, dk, dt)

    def check(path):
        got = crosslayer.gram(a, b)
        assert got.dtype == np.int32 and got.shape == (n_a, n_b)
        np.testing.assert_array_equal(got, expected_ab, err_msg=path)
        np.testing.assert_array_equal(got, crosslayer.gram(a.expanded(), b.expanded()), err_msg=path)
        np.testing.assert_array_equal(crosslayer.gram(a), expected_aa, err_msg=path)
        np.testing.assert_array_equal(crosslayer.gram(a, num_threads=1), expected_aa, err_msg=path)

    for_each_popcount_path(check)


def test_compact_gram_normalized_and_mixed_layouts(rng):
    a, b = random_compact_codes(rng, 9, 7, 70), random_compact_codes(rng, 4, 7, 70)
    np.testing.assert_allclose(crosslayer.gram(a, b, normalize=True),
                               reference.cosine_gram_reference(a.expanded().bits, b.expanded().bits, 70), rtol=1e-12)
    # operands of two layouts are compared in the first one's
    np.testing.assert_array_equal(crosslayer.gram(a, b.expanded()), crosslayer.gram(a.expanded(), b))


search_shapes = st.tuples(st.integers(0, 4), st.integers(0, 13), st.sampled_from([1, 3, 6, 65, 70]),
                          st.sampled_from([1, 2, 63, 65, 150, 320]))


@given(search_shapes, st.integers(1, 16), st.sampled_from([0.0, 0.3, 1.0]), st.data())
def test_compact_search_equals_reference_on_every_path(shape, k, dead_fraction, data):
    nq, n, dk, dt = shape
    channels = data.draw(st.one_of(st.none(), st.integers(1, dk)), label="channels")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    queries = random_compact_codes(rng, nq, dk, dt, dead_fraction)
    database = random_compact_codes(rng, n, dk, dt, dead_fraction)
    expected = reference.compact_search_reference(queries.bits, queries.channel_mean, database.bits, dk, dt, k,
                                                  channels)

    def check(path):
        scores, ids = crosslayer.search(queries, database, k=k, channels=channels)
        assert scores.shape == (nq, min(k, n))
        np.testing.assert_array_equal(scores, expected[0], err_msg=path)
        np.testing.assert_array_equal(ids, expected[1], err_msg=path)

    for_each_popcount_path(check)


def test_compact_search_many_queries_segments_and_all_dead_queries(rng):
    # > 64 queries (two batches), blocks over threads, segments merged; queries whose every channel is dead
    queries, database = random_compact_codes(rng, 70, 9, 130, 0.3), random_compact_codes(rng, 57, 9, 130, 0.3)
    signs = queries.signs()
    signs[5:9] = 0
    queries = Codes(reference.compact_from_ternary(signs), queries.channel_mean, 130)
    expected = reference.compact_search_reference(queries.bits, queries.channel_mean, database.bits, 9, 130, 9, 3)
    got = crosslayer.search(queries, database, k=9, channels=3)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert (got[0][5:9] == 0).all()
    split = search_segments(queries, [(database.bits[:20], 0), (database.bits[20:], 20)], 9, 3)
    np.testing.assert_array_equal(split[0], expected[0])
    np.testing.assert_array_equal(split[1], expected[1])
    # 2-plane queries against a compact database are converted to it
    mixed = crosslayer.search(queries.expanded(), database, k=9, channels=3)
    np.testing.assert_array_equal(mixed[1], expected[1])


def test_partly_zero_queries_cannot_search_a_compact_database(rng):
    database = random_compact_codes(rng, 5, 3, 10)
    signs = random_compactable_signs(rng, 1, 3, 10, 0.0)
    signs[0, 1, 4] = 0
    query = Codes(reference.pack_ternary(signs), np.zeros((1, 3), np.float32), 10)
    with pytest.raises(UsageError, match="partly zero"):
        crosslayer.search(query, database, k=2)
