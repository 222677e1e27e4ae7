"""Two-stage search: the coarse stage (the masked score on the first 63 components of every channel, scanned over a
channel-major table) proposes a shortlist, the fine stage (`CodeIndex.rerank`) scores it exactly. Synthetic codes for
the stages, their kernels against `reference.prefix_scores_reference` and their cache (built, extended, checked,
rebuilt; deletions respected), random-weight images for `ImageIndex.search(candidates=)` and `search --candidates`."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslayer import CodeIndex, reference  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402
from crosslayer.retrieval import coarse as coarse_module  # noqa: E402
from crosslayer.retrieval import prefix_scan  # noqa: E402
from crosslayer.retrieval.coarse import CoarseIndex  # noqa: E402
from _codes import for_each_popcount_path, random_codes  # noqa: E402

DK, DT = 24, 64


def _prefix_top(queries, database_bits, dt, n, channels, excluded=()):
    """Per query, the set of ids a shortlist of n must be: by (decreasing reference prefix score, id)."""
    b = prefix_scan.prefix_bits(coarse_module.WORD_BITS, dt)
    scores = reference.prefix_scores_reference(queries.bits, queries.channel_mean, database_bits, dt, b, channels)
    keep = [i for i in range(len(database_bits)) if i not in set(excluded)]
    return [sorted(sorted(keep, key=lambda i: (-row[i], i))[:n]) for row in scores]


def _index(tmp_path, rng, sizes=(40, 30)):
    codes = CodeIndex.create(tmp_path / "codes", DK, DT)
    parts = []
    for size in sizes:
        part = random_codes(rng, size, DK, DT)
        codes.append(part)
        parts.append(part)
    return codes, parts


def test_rerank_over_every_live_item_equals_exhaustive_search(tmp_path, rng):
    codes, parts = _index(tmp_path, rng)
    queries = random_codes(rng, 5, DK, DT)
    codes.delete([3, 41])
    everything = np.broadcast_to(codes.live_ids(), (5, codes.live_count))
    for channels, normalize in ((8, False), (None, False), (8, True)):
        expected = codes.search(queries, 7, channels, normalize=normalize)
        got = codes.rerank(queries, everything[:, ::-1], 7, channels, normalize=normalize)  # order given is irrelevant
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])


def test_rerank_scores_only_the_candidates_exactly(tmp_path, rng):
    codes, parts = _index(tmp_path, rng)
    queries = random_codes(rng, 3, DK, DT)
    shortlist = np.array([[5, 50, 12, -1, 5], [0, 1, 2, 3, 4], [69, -1, -1, -1, -1]])
    codes.delete([1])
    scores, ids = codes.rerank(queries, shortlist, 4, None)
    database = np.concatenate([p.bits for p in parts])
    for row, wanted in enumerate(([5, 12, 50], [0, 2, 3, 4], [69])):
        dots = [reference.ternary_dot(queries.bits[row], database[i], DT) for i in wanted]
        order = sorted(range(len(wanted)), key=lambda j: (-dots[j], wanted[j]))
        assert list(ids[row][:len(wanted)]) == [wanted[j] for j in order]
        assert list(scores[row][:len(wanted)]) == [dots[j] for j in order]
        assert (ids[row][len(wanted):] == -1).all()
    with pytest.raises(UsageError, match="candidates"):
        codes.rerank(queries, shortlist[:2], 4, None)


def test_coarse_shortlist_is_the_prefix_score_top_without_deleted_items(tmp_path, rng):
    codes, parts = _index(tmp_path, rng)
    database = np.concatenate([p.bits for p in parts])
    queries = random_codes(rng, 6, DK, DT)
    coarse = CoarseIndex.open(tmp_path, codes)
    assert len(coarse) == 70
    for channels in (5, None):
        got = coarse.shortlist(queries, 10, channels, np.zeros(0, np.int64))
        assert [sorted(row) for row in got.tolist()] == _prefix_top(queries, database, DT, 10, channels)
    deleted = np.unique(got[:, :3])
    got = coarse.shortlist(queries, 10, 5, deleted, num_threads=1)
    assert not np.isin(got, deleted).any()
    assert [sorted(row) for row in got.tolist()] == _prefix_top(queries, database, DT, 10, 5, deleted.tolist())
    padded = coarse.shortlist(queries, 80, 5, deleted)  # more than the live items: all of them, then -1
    assert (np.sort(padded, axis=1)[:, :80 - 70 + len(deleted)] == -1).all()
    assert all(set(row[row >= 0]) == set(range(70)) - set(deleted.tolist()) for row in padded)


@given(st.integers(1, 60), st.integers(1, 3), st.integers(1, 9), st.integers(0, 2**32 - 1))
@settings(deadline=None, max_examples=30)
def test_prefix_scan_matches_the_reference(n, nq, dk, seed):
    rng = np.random.default_rng(seed)
    dt = int(rng.choice([1, 7, 15, 16, 64, 70]))
    database, queries = random_codes(rng, n, dk, dt), random_codes(rng, nq, dk, dt)
    channels = int(rng.integers(1, dk + 1))
    b = prefix_scan.prefix_bits(coarse_module.WORD_BITS, dt)
    want = reference.prefix_scores_reference(queries.bits, queries.channel_mean, database.bits, dt, b, channels)
    table = prefix_scan.prefix_table(database.bits, coarse_module.WORD_BITS, dk, dt)
    words = prefix_scan.prefix_table(queries.bits, coarse_module.WORD_BITS, dk, dt).T
    from crosslayer.search import select_channels
    selection = select_channels(queries.channel_mean, channels)
    split = int(rng.integers(0, n + 1))  # two segments: the scan continues across tables
    deleted = rng.choice(n, int(rng.integers(0, n + 1)), replace=False)
    wanted_n = int(rng.integers(1, n + 2))
    for row in range(nq):
        chosen = selection[row]
        got = prefix_scan.shortlist_one([(table[:, :split], 0), (table[:, split:], split)],
                                        np.ascontiguousarray(words[row, chosen]), chosen, b, wanted_n, deleted, n)
        live = [i for i in range(n) if i not in set(deleted.tolist())]
        expected = sorted(sorted(live, key=lambda i: (-want[row][i], i))[:wanted_n])
        assert sorted(got[got >= 0].tolist()) == expected
        assert (got[len(expected):] == -1).all()


def test_prefix_score_is_the_masked_score_of_codes_cut_to_b_components(rng):
    """For codes whose channels are all-nonzero or all-zero (what encoders make) the coarse score is exact."""
    from crosslayer import Codes
    from crosslayer.search import search

    dt, b = 40, prefix_scan.prefix_bits(coarse_module.WORD_BITS, 40)
    signs = rng.choice(np.array([-1, 1], np.int8), size=(30, DK, dt))
    signs[rng.random((30, DK)) < 0.1] = 0  # whole channels dead
    codes = Codes(reference.pack_ternary(signs), rng.random((30, DK)).astype(np.float32), dt)
    cut = Codes(reference.pack_ternary(signs[..., :b]), codes.channel_mean, b)
    scores = reference.prefix_scores_reference(codes.bits, codes.channel_mean, codes.bits, dt, b, 7)
    exact, ids = search(cut, cut, 30, 7)
    np.testing.assert_array_equal(np.take_along_axis(scores, ids, 1), exact)


def test_compact_index_two_stage_equals_exhaustive_and_its_table_equals_the_2_plane_one(tmp_path, rng):
    from _codes import random_compact_codes

    database, queries = random_compact_codes(rng, 60, DK, 70), random_compact_codes(rng, 4, DK, 70)
    assert database.is_compact
    for width in (16, 64):
        np.testing.assert_array_equal(prefix_scan.prefix_table(database.bits, width, DK, 70),
                                      prefix_scan.prefix_table(database.expanded().bits, width, DK, 70))
    codes = CodeIndex.create(tmp_path / "codes", DK, 70, layout="compact")
    codes.append(database[:25]), codes.append(database[25:])
    codes.delete([4, 30])
    coarse = CoarseIndex.open(tmp_path, codes)
    b = prefix_scan.prefix_bits(coarse_module.WORD_BITS, 70)
    scores = reference.prefix_scores_reference(queries.expanded().bits, queries.channel_mean,
                                               database.expanded().bits, 70, b, 6)
    got = coarse.shortlist(queries, 8, 6, codes._deleted_array())
    live = [i for i in range(60) if i not in (4, 30)]
    assert [sorted(r) for r in got.tolist()] == [sorted(sorted(live, key=lambda i: (-row[i], i))[:8]) for row in scores]
    everything = coarse.shortlist(queries, 58, 6, codes._deleted_array())
    np.testing.assert_array_equal(codes.rerank(queries, everything, 10, 6)[1], codes.search(queries, 10, 6)[1])


def test_coarse_word_width_is_a_choice_of_the_cache(tmp_path, rng):
    codes, parts = _index(tmp_path, rng, sizes=(30,))
    database = np.concatenate([p.bits for p in parts])
    queries = random_codes(rng, 3, DK, DT)
    other = 32 if coarse_module.WORD_BITS == 64 else 64
    wide = CoarseIndex.open(tmp_path, codes, word_bits=other)
    assert wide.b == min(other - 1, DT) and wide.tables[0].dtype == prefix_scan.WORD_TYPES[other]
    b = prefix_scan.prefix_bits(other, DT)
    scores = reference.prefix_scores_reference(queries.bits, queries.channel_mean, database, DT, b, 6)
    got = wide.shortlist(queries, 5, 6, np.zeros(0, np.int64))
    assert [sorted(r) for r in got.tolist()] == [sorted(sorted(range(30), key=lambda i: (-row[i], i))[:5])
                                                 for row in scores]
    default = CoarseIndex.open(tmp_path, codes)  # another width: rebuilt at the default
    assert default.tables[0].dtype == prefix_scan.WORD_TYPES[coarse_module.WORD_BITS]
    with pytest.raises(UsageError, match="word_bits"):
        CoarseIndex.open(tmp_path, codes, word_bits=8)


def test_coarse_cache_is_extended_after_an_append_and_rebuilt_when_damaged_or_compacted(tmp_path, rng, monkeypatch):
    codes, parts = _index(tmp_path, rng, sizes=(30,))
    CoarseIndex.open(tmp_path, codes)
    record = json.loads((tmp_path / coarse_module.RECORD_FILE).read_text())
    assert [c["segment"]["file"] for c in record["covers"]] == ["seg-00000000.xlc"]
    codes.append(random_codes(rng, 20, DK, DT))
    added = []
    original_add = CoarseIndex.extend

    def counting_extend(self, segments):
        added.append(len(segments) - len(self.covers))
        return original_add(self, segments)

    monkeypatch.setattr(CoarseIndex, "extend", counting_extend)
    resumed = CoarseIndex.open(tmp_path, codes)
    assert added == [1] and len(resumed) == 50  # the cached table was loaded and only the new segment added
    table = tmp_path / coarse_module.TABLE_FOLDER / record["covers"][0]["table"]
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    added.clear()
    rebuilt = CoarseIndex.open(tmp_path, codes)
    assert added == [2] and len(rebuilt) == 50  # a damaged table is never trusted: both segments again
    codes.delete([0, 31])
    codes.compact()
    added.clear()
    compacted = CoarseIndex.open(tmp_path, codes)
    assert added == [len(codes.segment_codes())] and len(compacted) == 48
    named = {c["table"] for c in json.loads((tmp_path / coarse_module.RECORD_FILE).read_text())["covers"]}
    assert {f.name for f in (tmp_path / coarse_module.TABLE_FOLDER).iterdir()} == named  # replaced tables removed


@pytest.fixture(scope="module")
def image_db(backbone_cache, tmp_path_factory):
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.image_index import ImageIndex
    from _images import write_block_images

    folder = tmp_path_factory.mktemp("two_stage")
    images = write_block_images(folder / "imgs", 10, seed=3, side=64)
    encoder = CrossLayerEncoder(side=64, weights="random", batch_size=4, threads=1, pca_dim=8)
    with pytest.warns(UserWarning, match="fit"):
        index = ImageIndex.create(folder / "db", encoder, fit_sources=images)
    with index:
        index.add(images[:6], progress=False)
    return folder / "db", images


def test_image_index_two_stage_search_equals_exhaustive_when_candidates_cover_it_and_respects_deletion(image_db):
    from crosslayer.retrieval.image_index import ImageIndex

    directory, images = image_db
    with ImageIndex.open(directory, "a") as index:
        index.search_keys(images[:1], top=5, candidates=2)  # builds the coarse stage
        index.add(images[6:], progress=False)  # and an add extends it at once
        record = json.loads((directory / coarse_module.RECORD_FILE).read_text())
        assert [c["segment"]["file"] for c in record["covers"]] == [e["file"] for e, _ in index.codes.segment_codes()]
        assert sum(c["segment"]["count"] for c in record["covers"]) == 10
        exhaustive, _ = index.search_keys(images[:3], top=5)
        for candidates in (10, 50):
            covered, _ = index.search_keys(images[:3], top=5, candidates=candidates)
            assert [[(h.id, h.score) for h in q] for q in covered] == [[(h.id, h.score) for h in q] for q in exhaustive]
        partial, _ = index.search_keys(images[:3], top=5, candidates=4)
        assert all(len(q) == 4 for q in partial)
        assert index.verify() == []
        table = directory / coarse_module.TABLE_FOLDER / record["covers"][0]["table"]
        intact = table.read_bytes()
        table.write_bytes(intact[:-7])
        assert any("coarse" in problem for problem in index.verify())
        table.write_bytes(intact)
        index.remove([images[9]])
        after, _ = index.search_keys(images[:3], top=10, candidates=5)
        assert all(images[9] not in [h.path for h in q] for q in after)
        with pytest.raises(UsageError, match="candidates"):
            index.search_keys(images[:1], candidates=0)


def test_search_candidates_on_the_command_line(image_db):
    from _cli import run_cli

    directory, images = image_db
    exhaustive = run_cli("search", str(directory), "--key", images[0], images[1], "--top", "3", "--json",
                         "--weights", "random")
    assert exhaustive.returncode == 0, exhaustive.stderr
    two_stage = run_cli("search", str(directory), "--key", images[0], images[1], "--top", "3", "--json",
                        "--weights", "random", "--candidates", "100")
    assert two_stage.returncode == 0, two_stage.stderr
    hits = lambda done: [[h["path"] for h in q["hits"]] for q in json.loads(done.stdout)["queries"]]  # noqa: E731
    assert hits(two_stage) == hits(exhaustive)
    small = run_cli("search", str(directory), "--key", images[0], "--top", "3", "--json", "--weights", "random",
                    "--candidates", "2")
    assert small.returncode == 0, small.stderr
    assert len(hits(small)[0]) == 2
    refused = run_cli("search", str(directory), "--key", images[0], "--candidates", "0")
    assert refused.returncode == 2 and "--candidates" in refused.stderr


@given(st.integers(1, 40), st.integers(1, 4), st.integers(1, 12), st.integers(0, 2**32 - 1))
@settings(deadline=None, max_examples=25)
def test_rerank_matches_the_reference_search_over_the_candidates(n, nq, k, seed):
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(seed)
    dt = int(rng.choice([5, 64, 70]))
    database, queries = random_codes(rng, n, 6, dt), random_codes(rng, nq, 6, dt)
    channels = int(rng.integers(1, 7)) if rng.random() < 0.7 else None
    candidates = rng.integers(-1, n, size=(nq, int(rng.integers(1, 2 * n + 1))))
    with tempfile.TemporaryDirectory() as folder:
        codes = CodeIndex.create(Path(folder) / "codes", 6, dt)
        half = n // 2
        codes.append(database[:half]), codes.append(database[half:])
        deleted = rng.choice(n, int(rng.integers(0, n)), replace=False)
        if deleted.size:
            codes.delete(deleted)
        scores, ids = codes.rerank(queries, candidates, k, channels)
        for row in range(nq):
            shortlist = np.unique(candidates[row][candidates[row] >= 0])
            shortlist = shortlist[~np.isin(shortlist, deleted)]
            if shortlist.size == 0:
                assert (ids[row] == -1).all()
                continue
            want_scores, want = reference.search_reference(queries.bits[row:row + 1], queries.channel_mean[row:row + 1],
                                                           database.bits[shortlist], dt, k, channels)
            found = ids[row] >= 0
            np.testing.assert_array_equal(ids[row][found], shortlist[want[0]])
            np.testing.assert_array_equal(scores[row][found], want_scores[0])
        codes.close()


@given(st.sampled_from([16, 32, 64]), st.integers(0, 70), st.integers(1, 9), st.integers(0, 2**32 - 1))
@settings(deadline=None, max_examples=25)
def test_core_prefix_scan_matches_the_reference_at_every_word_width_and_popcount_path(word_bits, n, dk, seed):
    """The native scan (crosslayer_prefix_scores) on each table word and each popcount path equals the reference."""
    from crosslayer import _core
    from crosslayer.search import select_channels

    rng = np.random.default_rng(seed)
    dt = int(rng.choice([1, 7, 15, 16, 40, 64, 70]))
    database, queries = random_codes(rng, n, dk, dt), random_codes(rng, 2, dk, dt)
    channels = int(rng.integers(1, dk + 1))
    b = prefix_scan.prefix_bits(word_bits, dt)
    want = reference.prefix_scores_reference(queries.bits, queries.channel_mean, database.bits, dt, b, channels)
    table = prefix_scan.prefix_table(database.bits, word_bits, dk, dt)
    words = prefix_scan.prefix_table(queries.bits, word_bits, dk, dt).T
    selection = select_channels(queries.channel_mean, channels)
    def check(path):
        for row in range(2):
            chosen = selection[row]
            scores = np.zeros(n, prefix_scan.SCORE_TYPES[word_bits])
            _core.prefix_scores(table, np.ascontiguousarray(words[row, chosen], np.uint64), chosen.astype(np.int32),
                                b, scores, 2)
            np.testing.assert_array_equal(scores, want[row], err_msg=path)
            k = int(rng.integers(0, n + 2))
            top = _core.top_scores(scores, k, -len(chosen) * b, -len(chosen) * b - 1)
            assert top.tolist() == sorted(range(n), key=lambda i: (-int(want[row][i]), i))[:k]

    for_each_popcount_path(check)


def test_core_prefix_scan_refuses_bad_arguments():
    from crosslayer import _core

    table = np.zeros((4, 10), np.uint16)
    words, scores = np.zeros(2, np.uint64), np.zeros(10, np.int16)
    with pytest.raises(ValueError, match="channels"):
        _core.prefix_scores(table, words, np.array([0, 4], np.int32), 15, scores)
    with pytest.raises(ValueError, match="prefix_bits"):
        _core.prefix_scores(table, words, np.array([0, 1], np.int32), 16, scores)
    with pytest.raises(ValueError, match="int16"):
        _core.prefix_scores(table, words, np.array([0, 1], np.int32), 15, np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="outside"):
        _core.top_scores(np.array([0, 5, 40], np.int32), 2, -30, -31)
