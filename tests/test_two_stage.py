"""Two-stage search: the coarse stage (FAISS HNSW on L2-normalised channel means) proposes a shortlist, the fine stage
(`CodeIndex.rerank`) scores it exactly. Synthetic codes for the stages and their cache (built, extended, checked,
rebuilt; deletions respected), random-weight images for `ImageIndex.search(candidates=)` and `search --candidates`."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("faiss")

from crosslayer import CodeIndex, reference  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402
from crosslayer.retrieval import coarse as coarse_module  # noqa: E402
from crosslayer.retrieval.coarse import CoarseIndex  # noqa: E402
from _codes import random_codes  # noqa: E402

DK, DT = 24, 64


def _exact_cosines(means_q, means_x, excluded=()):
    q = means_q / np.linalg.norm(means_q, axis=1, keepdims=True)
    x = means_x / np.linalg.norm(means_x, axis=1, keepdims=True)
    scores = q @ x.T
    scores[:, list(excluded)] = -np.inf
    return scores


# The graph stores unit vectors in float16 (relative rounding 2^-11 a component), so a stored cosine is within
# |dq| + |dx| <= 2 * 2^-11 of the exact one: items whose exact cosines are that close may swap at the cut.
FP16_COSINE_SLACK = 2 * 2.0 ** -11


def _assert_is_the_cosine_top(got, means_q, means_x, n, excluded=()):
    """Tie-aware: every shortlisted id is within the float16 slack of the exact n-th cosine, and all n are distinct."""
    cosines = _exact_cosines(means_q, means_x, excluded)
    nth = np.sort(cosines, axis=1)[:, ::-1][:, n - 1]
    assert got.shape == (len(means_q), n) and all(len(set(row)) == n for row in got.tolist())
    chosen = np.take_along_axis(cosines, got, 1)
    assert (chosen >= nth[:, None] - FP16_COSINE_SLACK).all(), (chosen.min(1), nth)


def _index(tmp_path, rng, sizes=(40, 30)):
    codes = CodeIndex.create(tmp_path / "codes", DK, DT)
    parts = []
    for size in sizes:
        part = random_codes(rng, size, DK, DT)
        # continuous means: no cosine ties, so the exact top-N is one set
        part.channel_mean[:] = rng.random(part.channel_mean.shape, dtype=np.float32) + 0.01
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


def test_coarse_shortlist_is_the_cosine_top_of_the_channel_means_without_deleted_items(tmp_path, rng):
    codes, parts = _index(tmp_path, rng)
    means = np.concatenate([p.channel_mean for p in parts])
    queries = random_codes(rng, 6, DK, DT)
    coarse = CoarseIndex.open(tmp_path, codes)
    assert len(coarse) == 70
    got = coarse.shortlist(queries.channel_mean, 10, np.zeros(0, np.int64))
    _assert_is_the_cosine_top(got, queries.channel_mean, means, 10)
    deleted = np.unique(got[:, :3])
    got = coarse.shortlist(queries.channel_mean, 10, deleted)
    assert not np.isin(got, deleted).any()
    _assert_is_the_cosine_top(got, queries.channel_mean, means, 10, deleted)


def test_coarse_cache_is_extended_after_an_append_and_rebuilt_when_damaged_or_compacted(tmp_path, rng, monkeypatch):
    codes, parts = _index(tmp_path, rng, sizes=(30,))
    CoarseIndex.open(tmp_path, codes)
    record = json.loads((tmp_path / coarse_module.RECORD_FILE).read_text())
    assert [c["file"] for c in record["covers"]] == ["seg-00000000.xlc"]
    codes.append(random_codes(rng, 20, DK, DT))
    added = []
    original_add = CoarseIndex.extend

    def counting_extend(self, segments):
        added.append(len(segments) - len(self.covers))
        return original_add(self, segments)

    monkeypatch.setattr(CoarseIndex, "extend", counting_extend)
    resumed = CoarseIndex.open(tmp_path, codes)
    assert added == [1] and len(resumed) == 50  # the cached graph was loaded and only the new segment added
    graph = tmp_path / coarse_module.GRAPH_FILE
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    added.clear()
    rebuilt = CoarseIndex.open(tmp_path, codes)
    assert added == [2] and len(rebuilt) == 50  # a damaged graph is never trusted: both segments again
    codes.delete([0, 31])
    codes.compact()
    added.clear()
    compacted = CoarseIndex.open(tmp_path, codes)
    assert added == [len(codes.segment_means())] and len(compacted) == 48


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
        assert [c["file"] for c in record["covers"]] == [e["file"] for e, _ in index.codes.segment_means()]
        assert sum(c["count"] for c in record["covers"]) == 10
        exhaustive, _ = index.search_keys(images[:3], top=5)
        for candidates in (10, 50):
            covered, _ = index.search_keys(images[:3], top=5, candidates=candidates)
            assert [[(h.id, h.score) for h in q] for q in covered] == [[(h.id, h.score) for h in q] for q in exhaustive]
        partial, _ = index.search_keys(images[:3], top=5, candidates=4)
        assert all(len(q) == 4 for q in partial)
        assert (directory / coarse_module.GRAPH_FILE).is_file()
        assert index.verify() == []
        graph = directory / coarse_module.GRAPH_FILE
        intact = graph.read_bytes()
        graph.write_bytes(intact[:-7])
        assert any("coarse" in problem for problem in index.verify())
        graph.write_bytes(intact)
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
