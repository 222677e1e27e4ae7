"""Retrieval metrics, SPoC, channel selection and float cross-layer scoring against hand-made or numpy references."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crosslayer import reference
from crosslayer.retrieval.channels import check_channel_count, parse_channel_list, selection_masks
from crosslayer.retrieval.float_scores import FloatQueryScorer
from crosslayer.retrieval.metrics import (
    average_precision, evaluate_scores, relevance_matrix, relevant_ranks,
)
from crosslayer.retrieval.spoc import SpocWhitening, sum_pool
from crosslayer.search import select_channels


def test_hand_made_rankings():
    # query 0: relevant items ranked 1st and 3rd -> AP = (1/1 + 2/3) / 2; query 1: relevant ranked 4th -> 1/4
    scores = np.array([[0.9, 0.5, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]])
    relevant = np.array([[True, True, False, False], [False, False, False, True]])
    ranks = relevant_ranks(scores, relevant)
    assert [list(r) for r in ranks] == [[1, 3], [4]]
    result = evaluate_scores(scores, relevant, ks=(1, 3, 5))
    assert result["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 4) / 2)
    assert result["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert result["recall@3"] == pytest.approx((1 + 0) / 2)
    assert result["recall@5"] == pytest.approx(1.0)


def test_ties_are_broken_against_the_relevant_item():
    scores = np.array([[3, 3, 3, 1]])
    relevant = np.array([[False, True, False, False]])
    assert list(relevant_ranks(scores, relevant)[0]) == [3]
    assert average_precision([3]) == pytest.approx(1 / 3)


def test_query_without_relevant_items_is_an_error():
    with pytest.raises(ValueError, match="no average precision"):
        evaluate_scores(np.zeros((1, 3)), np.zeros((1, 3), bool))


def test_relevance_matrix_never_matches_distractors():
    matrix = relevance_matrix(["a", "b"], ["b", None, "a", "a"])
    assert matrix.tolist() == [[False, False, True, True], [True, False, False, False]]


def test_spoc_matches_numpy_reference(rng):
    learn = rng.random((40, 24, 3, 4))
    test = rng.random((7, 24, 3, 4))
    whitening = SpocWhitening(dim=10, eps=0.0).fit(sum_pool(learn))  # eps=0: the reference's whitening
    ours = whitening.transform(sum_pool(test))
    expected = reference.spoc(learn, test, dim=10)
    # both in float64 (SVD vs eigh: ~1e-12 / eigengap), then one float32 rounding of |v| <= 1 (<= 6e-8)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)
    # 10 float32 roundings of a unit vector move its norm by at most 10 u = 6e-7
    np.testing.assert_allclose(np.linalg.norm(ours.astype(np.float64), axis=1), 1, rtol=0, atol=6e-7)


def test_spoc_refuses_more_components_than_images(rng):
    with pytest.raises(ValueError, match="dim"):
        SpocWhitening(dim=8).fit(rng.random((5, 20)))


def test_selection_masks_pick_largest_means_ties_to_smaller_index():
    means = np.array([[0.1, 0.5, 0.5, 0.2, 0.0]])
    masks = selection_masks(means, [1, 3, None])
    assert masks[0, 0].tolist() == [False, True, False, False, False]
    assert masks[1, 0].tolist() == [False, True, True, True, False]
    assert masks[2].all()


@given(n=st.integers(0, 4), dk=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_selection_masks_are_the_search_selection_on_tied_means(n, dk, seed):
    means = np.random.default_rng(seed).integers(0, 3, (n, dk)).astype(np.float32)  # many ties
    counts = list(range(1, dk + 1)) + [None]
    masks = selection_masks(means, counts)
    for i, count in enumerate(counts[:-1]):
        chosen = select_channels(means, count)
        np.testing.assert_array_equal(chosen, reference.select_channels_reference(means, count))
        assert all(np.flatnonzero(masks[i, row]).tolist() == chosen[row].tolist() for row in range(n))
    assert masks[-1].all()


def test_channel_count_checks():
    assert check_channel_count("all", 8) is None
    assert parse_channel_list("2, 8,all", 8) == [2, 8, None]
    with pytest.raises(ValueError, match="at most Dk=8"):
        check_channel_count(9, 8)
    with pytest.raises(ValueError, match="integer or 'all'"):
        parse_channel_list("ten", 8)


@given(nq=st.integers(1, 3), n=st.integers(0, 4), dk=st.integers(1, 6), dt=st.integers(1, 5), seed=st.integers(0, 99))
def test_float_scores_match_direct_masked_cosine(nq, n, dk, dt, seed):
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((nq, dk * dt)).astype(np.float32)
    images = rng.standard_normal((n, dk * dt)).astype(np.float32)
    if dk > 1 and n:
        images[0, :dt] = 0  # an all-zero channel
    counts = [1, dk, None]
    masks = selection_masks(rng.random((nq, dk)), counts)
    scores = FloatQueryScorer(queries, dk, masks).score(images)
    assert scores.shape == (nq, n, len(counts))
    for s in range(len(counts)):
        for q in range(nq):
            chosen = np.flatnonzero(masks[s, q])
            a = queries[q].reshape(dk, dt)[chosen].ravel().astype(np.float64)
            for i in range(n):
                b = images[i].reshape(dk, dt)[chosen].ravel().astype(np.float64)
                denominator = np.linalg.norm(a) * np.linalg.norm(b)
                expected = a @ b / denominator if denominator > 0 else 0.0
                assert scores[q, i, s] == pytest.approx(expected, abs=1e-5)


def test_retrieval_set_paths_do_not_depend_on_how_the_folder_is_spelled(tmp_path, monkeypatch):
    """Feature caches are keyed by image paths: `smvs`, `./smvs/` and an absolute path must give the same ones."""
    from crosslayer.retrieval.datasets import read_retrieval_set

    folder = tmp_path / "smvs"
    folder.mkdir()
    (folder / "queries.csv").write_text("path,item\nq/a.jpg,1\n")
    (folder / "database.csv").write_text("path,item\nd/a.jpg,1\n")
    monkeypatch.chdir(tmp_path)
    sets = [read_retrieval_set(spelling) for spelling in ("smvs", "./smvs/", folder)]
    assert {tuple(s.queries.paths) for s in sets} == {(str(folder.resolve() / "q" / "a.jpg"),)}
    assert {s.name for s in sets} == {"smvs"}
