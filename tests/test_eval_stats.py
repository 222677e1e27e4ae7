"""Paired statistics (McNemar's exact test against scipy's binomial test, the paired bootstrap, re-splits), the SPM
level slices against direct pooling, the one-vs-rest SVM and AConv's normalisation variants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslayer.errors import UsageError
from crosslayer.eval import spm, stats, svm, variants


@given(only_a=st.integers(0, 60), only_b=st.integers(0, 60), agree=st.integers(1, 40))
def test_mcnemar_exact_p_is_scipys_two_sided_binomial_test(only_a, only_b, agree):
    scipy_stats = pytest.importorskip("scipy.stats")
    a = np.array([1] * only_a + [0] * only_b + [1] * agree, bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * agree, bool)
    result = stats.mcnemar_exact(a, b)
    assert (result["only_a"], result["only_b"]) == (only_a, only_b)
    expected = 1.0 if only_a + only_b == 0 else scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result["p"] == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_rejects_scores_that_are_not_correctness():
    with pytest.raises(UsageError, match="correct_a"):
        stats.mcnemar_exact([0.5, 1.0], [1, 0])
    with pytest.raises(UsageError, match="correct_b"):
        stats.mcnemar_exact([1, 0, 1], [1, 0])


def test_paired_bootstrap_brackets_the_difference_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.8
    b = a.copy()
    b[rng.choice(400, 30, replace=False)] ^= True
    first = stats.paired_bootstrap(a, b, seed=3)
    assert first == stats.paired_bootstrap(a, b, seed=3)
    assert first["low"] <= first["difference"] <= first["high"]
    assert first["difference"] == pytest.approx(a.mean() - b.mean())
    # the pairing: 30 discordant items of 400 give a much narrower interval than two independent 80% samples would
    assert first["high"] - first["low"] < 0.06
    same = stats.paired_bootstrap(a, a)
    assert same["low"] == same["high"] == same["difference"] == 0.0


def test_paired_bootstrap_coverage_on_a_known_difference():
    """Over 200 seeded data sets with a true accuracy difference of 0.1, the 95% interval holds it ~95% of the time."""
    hits = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        a = rng.random(300) < 0.8
        b = rng.random(300) < 0.7
        result = stats.paired_bootstrap(a, b, resamples=1000, seed=seed)
        hits += result["low"] <= 0.1 <= result["high"]
    assert 0.88 <= hits / 200 <= 0.99


def test_compare_predictions_says_within_the_noise_only_when_it_is():
    truth = np.repeat(np.arange(4), 100)
    a = truth.copy()
    b = truth.copy()
    b[:2] = (b[:2] + 1) % 4  # two images apart: noise
    close = stats.compare_predictions(truth, a, b)
    assert close["within_noise"] and close["p"] == pytest.approx(0.5)
    b[:80] = (b[:80] + 1) % 4  # 80 images apart: not noise
    far = stats.compare_predictions(truth, a, b)
    assert not far["within_noise"] and far["p"] < 1e-20 and far["low"] > 0.15
    with pytest.raises(UsageError, match="predicted_a"):
        stats.compare_predictions(truth, a[:-1], b)


def test_resplit_keeps_class_sizes_and_val_and_changes_the_split():
    labels = np.repeat(np.arange(3), [10, 12, 8])
    splits = np.array((["train"] * 4 + ["test"] * 5 + ["val"]) * 3, object)[: len(labels)]
    new = stats.resplit(labels, splits, seed=1)
    for label in range(3):
        for name in ("train", "test", "val"):
            assert np.sum((labels == label) & (new == name)) == np.sum((labels == label) & (splits == name))
    assert np.array_equal(new == "val", splits == "val")
    assert not np.array_equal(new, splits)
    assert np.array_equal(new, stats.resplit(labels, splits, seed=1))


def test_mean_sd():
    assert stats.mean_sd([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02))
    assert np.isnan(stats.mean_sd([0.5])[1])
    with pytest.raises(UsageError, match="values"):
        stats.mean_sd([])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), channels=st.lists(st.integers(1, 5), min_size=1, max_size=2), h=st.integers(1, 9),
       w=st.integers(1, 9), pooling=st.sampled_from(spm.POOLINGS),
       wanted=st.sampled_from([(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]), seed=st.integers(0, 2**32 - 1))
def test_spm_level_slice_equals_pooling_at_those_levels(n, channels, h, w, pooling, wanted, seed):
    rng = np.random.default_rng(seed)
    maps = [rng.standard_normal((n, c, h, w)).astype(np.float32) for c in channels]
    scale = np.float32(np.sqrt(len(maps)))
    stored = np.concatenate([spm.spm_pool(m, (0, 1, 2), pooling) for m in maps], axis=1) / scale
    direct = np.concatenate([spm.spm_pool(m, wanted, pooling) for m in maps], axis=1) / scale
    np.testing.assert_allclose(spm.spm_level_slice(stored, channels, (0, 1, 2), wanted), direct, rtol=1e-5, atol=1e-6)


def test_spm_level_slice_rejects_levels_not_stored_and_bad_widths():
    rows = np.ones((2, 3 * 21), np.float32)
    with pytest.raises(UsageError, match="wanted_levels"):
        spm.spm_level_slice(rows, [3], (0, 1, 2), (3,))
    with pytest.raises(UsageError, match="rows"):
        spm.spm_level_slice(rows, [4], (0, 1, 2), (0,))


def test_one_vs_rest_svm_is_a_binary_svm_per_class():
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 6)) * 2
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.standard_normal((60, 6))
    test_y = np.repeat(np.arange(3), 10)
    test_x = centres[test_y] + rng.standard_normal((30, 6)) * 1.5
    result = svm.train_and_test(x @ x.T, y, test_x @ x.T, test_y, c_grid=(1.0,), folds=2, multiclass="ovr")
    scale = svm.kernel_scale(x @ x.T)
    scores = np.stack([SVC(kernel="precomputed", C=1.0).fit(x @ x.T / scale, y == k).decision_function(test_x @ x.T / scale)
                       for k in range(3)], axis=1)
    assert result["multiclass"] == "ovr"
    assert result["predictions"] == scores.argmax(axis=1).tolist()
    with pytest.raises(UsageError, match="multiclass"):
        svm.select_c(x @ x.T, y, multiclass="crammer")


@given(n=st.integers(1, 3), positions=st.integers(1, 6), dim=st.integers(1, 7), filters=st.integers(1, 4),
       l2=st.booleans(), power=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_guided_regions_pool_the_regions_by_their_guidance(n, positions, dim, filters, l2, power, seed):
    rng = np.random.default_rng(seed)
    regions = rng.standard_normal((n, positions, dim)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, positions, filters)), 0).astype(np.float32)
    pooled = np.einsum("npk,npd->nkd", guidance.astype(np.float64), regions.astype(np.float64))
    if l2:
        norms = np.linalg.norm(pooled, axis=2, keepdims=True)
        pooled = np.divide(pooled, norms, out=np.zeros_like(pooled), where=norms > 0)
    if power:
        pooled = np.sign(pooled) * np.sqrt(np.abs(pooled))
    np.testing.assert_allclose(variants.guided_regions(regions, guidance, l2, power), pooled.reshape(n, -1),
                               rtol=1e-4, atol=1e-5)
