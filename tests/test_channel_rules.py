"""Channel-selection rules for signed guidance layers (retrieval/channels.guidance_channel_means)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslayer import pool
from crosslayer.errors import UsageError
from crosslayer.reference import channel_mean as reference_channel_mean
from crosslayer.retrieval.channels import CHANNEL_RULES, guidance_channel_means, with_channel_rule
from crosslayer.search import search, select_channels


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), dk=st.integers(1, 9), dt=st.integers(1, 70), h=st.integers(1, 5), w=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_rules_match_their_definitions_and_the_kernels_mean(n, dk, dt, h, w, seed):
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, dt, h, w), dtype=np.float32)
    guidance = rng.standard_normal((n, dk, h, w), dtype=np.float32)
    codes = pool(local, guidance, output="codes")
    mean = guidance_channel_means(guidance, "mean")
    np.testing.assert_allclose(mean, codes.channel_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, reference_channel_mean(guidance), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guidance_channel_means(guidance, "positive"),
                               reference_channel_mean(np.maximum(guidance, 0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guidance_channel_means(guidance, "abs"), reference_channel_mean(np.abs(guidance)),
                               rtol=1e-5, atol=1e-6)
    # on a non-negative (ReLU) guidance layer the three rules are one
    relu = np.maximum(guidance, 0)
    for rule in CHANNEL_RULES:
        np.testing.assert_array_equal(guidance_channel_means(relu, rule), guidance_channel_means(relu, "mean"))


def test_a_channel_that_fires_and_is_negative_elsewhere_is_kept_by_positive_and_abs_only():
    guidance = np.zeros((1, 3, 2, 2), np.float32)
    guidance[0, 0] = [[5, -5], [5, -5]]  # fires strongly on half the image, negative on the other: mean 0
    guidance[0, 1] = 1.0  # weak everywhere
    guidance[0, 2] = -2.0  # never fires
    chosen = {rule: select_channels(guidance_channel_means(guidance, rule), 1)[0].tolist() for rule in CHANNEL_RULES}
    assert chosen == {"mean": [1], "positive": [0], "abs": [0]}
    # |a| also ranks a channel that never fires above one that does weakly: that is its difference from "positive"
    assert select_channels(guidance_channel_means(guidance, "abs"), 2)[0].tolist() == [0, 2]
    assert select_channels(guidance_channel_means(guidance, "positive"), 2)[0].tolist() == [0, 1]


def test_with_channel_rule_changes_the_compared_channels_not_the_bits(rng):
    local = rng.standard_normal((2, 8, 3, 3), dtype=np.float32)
    guidance = np.zeros((2, 3, 3, 3), np.float32)
    guidance[:, 0, :, :2], guidance[:, 0, :, 2] = 4.0, -9.0  # mean -0.33, positive part 2.67
    guidance[:, 1] = 0.5
    guidance[:, 2] = rng.random((2, 3, 3), dtype=np.float32)
    codes = pool(local, guidance, output="codes")
    positive = with_channel_rule(codes, guidance, "positive")
    np.testing.assert_array_equal(positive.bits, codes.bits)
    assert positive.Dt == codes.Dt and positive.identity == codes.identity
    assert select_channels(positive.channel_mean, 1)[:, 0].tolist() == [0, 0]
    assert select_channels(codes.channel_mean, 1)[:, 0].tolist() != [0, 0]
    database_local = rng.standard_normal((4, 8, 3, 3), dtype=np.float32)
    database = pool(database_local, guidance[[0, 1, 0, 1]], output="codes")
    # with one channel compared, a score is the ternary dot product of the signs of that channel's pooled vectors
    scores, ids = search(positive, database, k=4, channels=1)
    query_signs = np.sign(pool(local, guidance, output="float").reshape(2, 3, 8)[:, 0])
    database_signs = np.sign(pool(database_local, guidance[[0, 1, 0, 1]], output="float").reshape(4, 3, 8)[:, 0])
    expected = (query_signs @ database_signs.T).astype(np.int64)
    np.testing.assert_array_equal(np.take_along_axis(expected, ids, axis=1), scores)


def test_bad_arguments_are_named():
    maps = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(UsageError, match="rule: expected one of mean, positive, abs"):
        guidance_channel_means(maps, "max")
    with pytest.raises(UsageError, match=r"guidance: expected \(n, Dk, H, W\)"):
        guidance_channel_means(maps[0], "mean")
    with pytest.raises(UsageError, match="NaN"):
        guidance_channel_means(np.full((1, 2, 1, 1), np.nan, np.float32))
    with pytest.raises(UsageError, match="real numbers"):
        guidance_channel_means(np.ones((1, 2, 1, 1), bool))
    codes = pool(np.ones((1, 4, 3, 3), np.float32), maps, output="codes")
    with pytest.raises(UsageError, match="do not match"):
        with_channel_rule(codes, np.ones((1, 5, 3, 3), np.float32), "abs")
    with pytest.raises(TypeError, match="codes"):
        with_channel_rule("codes", maps, "abs")
