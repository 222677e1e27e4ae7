"""SPoC as Babenko & Lempitsky: the Gaussian centre prior, and the in-domain whitening cross-fitted over items."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crosslayer import reference
from crosslayer.errors import UsageError
from crosslayer.retrieval.spoc import SpocWhitening, centre_prior, cross_fitted_scores, item_folds, sum_pool


def test_centre_prior_of_a_worked_example():
    weights = centre_prior(3, 3)  # sigma = 3 / 6 = 0.5; cell centres 1 apart
    assert weights[1, 1] == 1.0
    assert weights[0, 1] == pytest.approx(np.exp(-1 / 0.5)) and weights[0, 0] == pytest.approx(np.exp(-2 / 0.5))
    wide = centre_prior(4, 10)  # sigma from the closer (top/bottom) border: 4 / 6
    np.testing.assert_allclose(wide, wide[::-1, ::-1])  # symmetric about the centre
    assert wide[1, 4] == pytest.approx(np.exp(-(0.5**2 + 0.5**2) / (2 * (4 / 6) ** 2)))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UsageError, match="height"):
            centre_prior(bad, 3)


@given(height=st.integers(1, 7), width=st.integers(1, 7), prior=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_spoc_with_and_without_the_prior_matches_the_reference(height, width, prior, seed):
    rng = np.random.default_rng(seed)
    learn = rng.random((30, 12, height, width))
    test = rng.random((4, 12, height, width))
    whitening = SpocWhitening(dim=6, eps=0.0).fit(sum_pool(learn, prior=prior))
    ours = whitening.transform(sum_pool(test, prior=prior))
    # both float64 (SVD vs eigh: ~1e-12 / eigengap), then one float32 rounding of |v| <= 1
    np.testing.assert_allclose(ours, reference.spoc(learn, test, dim=6, prior=prior), rtol=0, atol=2e-7)


def test_the_prior_changes_the_pooling_unless_the_map_is_one_cell(rng):
    maps = rng.random((2, 5, 6, 6))
    assert not np.allclose(sum_pool(maps, prior=True) / sum_pool(maps, prior=True).sum(1, keepdims=True),
                           sum_pool(maps) / sum_pool(maps).sum(1, keepdims=True))
    one = rng.random((2, 5, 1, 1))
    np.testing.assert_allclose(sum_pool(one, prior=True), sum_pool(one))
    with pytest.raises(UsageError, match="activations"):
        sum_pool(rng.random((2, 5, 6)))


def _items(rng, n_items):
    database_items = [f"item{i}" for i in range(n_items)]
    query_items = list(database_items)
    base = rng.random((n_items, 16))
    return base, query_items, database_items


def test_cross_fitted_whitening_never_sees_the_queries_items(rng):
    """A query of fold f is scored with a whitening learnt on the other folds' database images: its rows equal such a
    whitening's scores, and changing fold f's database images leaves its scores against the other images as they are."""
    base, query_items, database_items = _items(rng, 24)
    queries = base + 0.1 * rng.random(base.shape)
    database = base + 0.1 * rng.random(base.shape)
    scores = cross_fitted_scores(queries, query_items, database, database_items, dim=5, folds=2, seed=3)
    fold_of = item_folds(query_items + database_items, 2, 3)
    folds = np.array([fold_of[item] for item in database_items])
    for fold in (0, 1):
        asked = np.flatnonzero(folds == fold)
        whitening = SpocWhitening(5).fit(database[folds != fold])
        np.testing.assert_allclose(scores[asked], whitening.transform(queries[asked]) @ whitening.transform(database).T,
                                   rtol=0, atol=1e-6)
    changed = database.copy()
    changed[folds == 0] = rng.random(changed[folds == 0].shape)
    again = cross_fitted_scores(queries, query_items, changed, database_items, dim=5, folds=2, seed=3)
    asked, others = np.flatnonzero(folds == 0), np.flatnonzero(folds == 1)
    np.testing.assert_array_equal(again[np.ix_(asked, others)], scores[np.ix_(asked, others)])
    assert not np.allclose(again[np.ix_(others, others)], scores[np.ix_(others, others)])


def test_item_folds_and_cross_fitting_refuse_bad_arguments(rng):
    assert sorted(item_folds(["a", "b", "c", "a"], 2).values()) == [0, 0, 1]
    with pytest.raises(UsageError, match="folds"):
        item_folds(["a", "b"], 1)
    with pytest.raises(UsageError, match="3 distinct items"):
        item_folds(["a", "b", "c"], 4)
    base, query_items, database_items = _items(rng, 8)
    with pytest.raises(UsageError, match="one item per pooled row"):
        cross_fitted_scores(base, query_items[:-1], base, database_items, dim=2)


def test_the_benchmark_runs_end_to_end_on_a_tiny_set(tmp_path, backbone_cache):
    """benchmarks/spoc_protocol.py's command line (run in process) on 8 items (a query is its reference,
    brightened), random weights: the table holds every pooling x whitening row, and the results document reads back."""
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    from PIL import Image

    from _images import write_block_images
    from crosslayer.formats import read_json

    data = tmp_path / "data"
    references = write_block_images(data / "smvs" / "database", 8, seed=1, side=64)
    queries = []
    for path in references:
        image = np.asarray(Image.open(path), np.int16)
        query = data / "smvs" / "queries" / path.name
        query.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image + 30, 0, 255).astype(np.uint8)).save(query)
        queries.append(query)
    for name, paths in (("database", references), ("queries", queries)):
        rows = "".join(f"{name}/{p.name},item{i}\n" for i, p in enumerate(paths))
        (data / "smvs" / f"{name}.csv").write_text("path,item\n" + rows)
    write_block_images(data / "learn", 10, seed=2, side=64)
    out = tmp_path / "spoc.md"
    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import spoc_protocol
    finally:
        sys.path.remove(benchmarks)
    assert spoc_protocol.main(["--data", str(data), "--learn", "learn", "--side", "64", "--weights", "random",
                               "--dims", "4", "--in-domain", "2:2", "--quiet", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("| sum |") == 3 and text.count("| centre prior |") == 3 and "cosine within" in text
    body = read_json(out.with_suffix(".json"), "crosslayer-spoc-protocol", 1)
    assert len(body["rows"]) == 6 and all(0.0 <= row["map"] <= 1.0 for row in body["rows"])
