"""The retrieval evaluation's feature cache: bound to one learn set, distractor sets keyed by their folder, resumable,
under $CROSSLAYER_CACHE by default. Tiny generated images, random-weight backbone."""

import json

import numpy as np
import pytest

from _images import write_block_images

pytest.importorskip("torch")

from crosslayer.encoder import CrossLayerEncoder  # noqa: E402
from crosslayer.retrieval import evaluate as evaluate_module  # noqa: E402
from crosslayer.retrieval.evaluate import compute_features, distractor_name  # noqa: E402
from crosslayer.retrieval.feature_cache import FeatureCache, FeatureCacheError, FeatureCacheFormatError  # noqa: E402,E501

OPTIONS = dict(weights="random", side=64, fit_images=6, batch_size=4, threads=1)
CHANNELS = [3, None]


@pytest.fixture
def retrieval_set(tmp_path):
    images = write_block_images(tmp_path / "set", 4)
    rows = "path,item\n" + "".join(f"set/{p.name},{p.stem}\n" for p in images)
    (tmp_path / "queries.csv").write_text(rows)
    (tmp_path / "database.csv").write_text(rows)
    write_block_images(tmp_path / "learn_a", 6, seed=2)
    write_block_images(tmp_path / "learn_b", 6, seed=3)
    return tmp_path


def _features(root, learn, with_float=False, distractors=(), learn_images=6):
    return compute_features(root, list(distractors), learn, root / "cache", CHANNELS, OPTIONS,
                            learn_images=learn_images, with_float=with_float, progress=False)


def test_another_learn_set_is_refused_and_the_same_one_spelled_otherwise_is_not(retrieval_set, backbone_cache):
    root = retrieval_set
    _features(root, [root / "learn_a"])
    for learn, learn_images in (([root / "learn_b"], 6), ([root / "learn_a"], 4)):
        with pytest.raises(FeatureCacheError, match=f"{root / 'cache'}: its PCA was learnt on another learn set.*"
                                                    "new --cache"):
            _features(root, learn, learn_images=learn_images)
    assert len(FeatureCache(root / "cache", CrossLayerEncoder(**OPTIONS)).load("learn")["paths"]) == 6
    cache, _ = _features(root, [root / "set" / ".." / "learn_a"])
    assert len(cache.load("learn")["paths"]) == 6  # nothing encoded twice


def test_spoc_whitening_is_learnt_on_the_requested_learn_set_only(retrieval_set, backbone_cache, monkeypatch):
    root = retrieval_set
    cache, rset = _features(root, [root / "learn_a"])
    # a "learn" set holding more images than the requested ones (as older versions left it after a changed --learn)
    cache.compute("learn", evaluate_module.image_paths(root / "learn_b"), progress=False)
    fitted_on = []

    class RecordingWhitening(evaluate_module.SpocWhitening):
        def fit(self, embeddings):
            fitted_on.append(len(embeddings))
            return super().fit(embeddings)

    monkeypatch.setattr(evaluate_module, "SpocWhitening", RecordingWhitening)
    evaluate_module.evaluate(cache, rset, channel_counts=CHANNELS, with_float=False, spoc_dim=4, latency_queries=1)
    assert fitted_on == [6]


def test_the_cache_is_an_image_index_per_set_and_its_metadata_is_checked(retrieval_set, backbone_cache):
    from crosslayer.errors import FormatError
    from crosslayer.retrieval.image_index import ImageIndex

    root = retrieval_set
    cache, rset = _features(root, [root / "learn_a"])
    # every set is an image index of the cache's encoder: searchable like any other
    with ImageIndex.open(root / "cache" / "queries") as index:
        assert index.encoder.identity_digest == cache.encoder.identity_digest
        assert sorted(index.paths()) == sorted(rset.queries.paths)
        assert index.codes.side_names == ["embedding"]
    meta_path = root / "cache" / "cache.json"
    meta = json.loads(meta_path.read_text())
    assert (meta["format"], meta["version"]) == ("crosslayer-retrieval-features", 2)
    # a cache of the chunk format (version 1), or damaged metadata: a FormatError naming the file, nothing changed
    for text in (json.dumps({"format": "crosslayer-retrieval-features", "version": 1, "learn_set": meta["learn_set"]}),
                 meta_path.read_text().replace(meta["learn_set"], "0" * 16)):
        meta_path.write_text(text)
        with pytest.raises(FeatureCacheFormatError, match=f"{meta_path}: .*(version 1|checksum)") as info:
            _features(root, [root / "learn_a"])
        assert isinstance(info.value, FormatError) and meta_path.read_text() == text


def test_a_cache_of_another_encoder_is_refused(retrieval_set, backbone_cache):
    root = retrieval_set
    _features(root, [root / "learn_a"])
    with pytest.raises(FeatureCacheError, match="made with another encoder: side 64 \\(requested 96\\).*--cache"):
        FeatureCache(root / "cache", CrossLayerEncoder(**dict(OPTIONS, side=96)))


def test_distractor_folders_of_one_name_are_two_sets(retrieval_set, backbone_cache):
    root = retrieval_set
    first = write_block_images(root / "a" / "images", 2, seed=4)
    second = write_block_images(root / "b" / "images", 3, seed=5)
    assert distractor_name(root / "a" / "images") != distractor_name(root / "b" / "images")
    assert distractor_name(root / "a" / "images") == distractor_name(root / "b" / ".." / "a" / "images")
    cache, _ = _features(root, [root / "learn_a"], distractors=[root / "a" / "images", root / "b" / "images"])
    for folder, images in ((root / "a" / "images", first), (root / "b" / "images", second)):
        assert cache.load(distractor_name(folder))["paths"] == [str(p) for p in images]


def test_float_run_on_a_cache_made_without_floats_is_a_clear_error(retrieval_set, backbone_cache):
    root = retrieval_set
    _features(root, [root / "learn_a"], with_float=False)
    with pytest.raises(FeatureCacheError, match="queries: cached without float representations.*--no-float"):
        _features(root, [root / "learn_a"], with_float=True)


def test_a_set_cached_with_float_representations_keeps_them_for_every_image(retrieval_set, backbone_cache):
    root = retrieval_set
    cache, rset = _features(root, [root / "learn_a"], with_float=True)
    more = rset.queries.paths + evaluate_module.image_paths(root / "learn_b")
    assert cache.compute("queries", more, keep_float=False, progress=False) == 6
    assert cache.load("queries", more)["float_reps"].shape == (10, cache.encoder.Dk * cache.encoder.Dt)


def test_float_scores_of_other_queries_or_channels_are_not_reused(retrieval_set, backbone_cache):
    root = retrieval_set
    _features(root, [root / "learn_a"], with_float=True)
    with pytest.raises(FeatureCacheError, match="database: cached with float scores"):
        compute_features(root, [], [root / "learn_a"], root / "cache", [2, None], OPTIONS, learn_images=6,
                         progress=False)

    cache, rset = _features(root, [root / "learn_a"], with_float=True)
    with pytest.raises(ValueError, match="channel_counts: the cached float scores were computed against other"):
        evaluate_module.evaluate(cache, rset, channel_counts=[2, None], spoc_dim=4,
                                 latency_queries=1)


def test_an_interrupted_compute_resumes_to_the_uninterrupted_result(retrieval_set, backbone_cache, monkeypatch):
    root = retrieval_set
    cache, rset = _features(root, [root / "learn_a"], with_float=True)
    scorer_inputs = cache.load("queries", rset.queries.paths)
    from crosslayer.retrieval.channels import selection_masks
    from crosslayer.retrieval.float_scores import FloatQueryScorer

    scorer = FloatQueryScorer(scorer_inputs["float_reps"], cache.encoder.Dk,
                              selection_masks(scorer_inputs["codes"].channel_mean, CHANNELS))
    paths = evaluate_module.image_paths(root / "learn_b") + evaluate_module.image_paths(root / "set")
    full = cache.compute("whole", paths, scorer, "k", commit_images=3, progress=False)
    assert full == 10

    batches = CrossLayerEncoder.activations

    def interrupted(self, images, on_error="raise", **kwargs):
        for number, batch in enumerate(batches(self, images, on_error, **kwargs)):
            if number == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(CrossLayerEncoder, "activations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.compute("resumed", paths, scorer, "k", commit_images=3, progress=False)
    assert len(cache.load("resumed")["paths"]) == 4  # the first batch was committed
    monkeypatch.setattr(CrossLayerEncoder, "activations", batches)
    assert cache.compute("resumed", paths, scorer, "k", commit_images=3, progress=False) == 6
    whole, resumed = cache.load("whole", paths), cache.load("resumed", paths)
    assert resumed["paths"] == whole["paths"] == paths
    np.testing.assert_array_equal(resumed["codes"].bits, whole["codes"].bits)
    np.testing.assert_array_equal(resumed["embedding"], whole["embedding"])
    assert resumed["float_scores"].shape == (len(rset.queries.paths), 10, len(CHANNELS))
    np.testing.assert_array_equal(resumed["float_scores"], whole["float_scores"])
    # rows come back in the order asked for, by the store's own keys
    backwards = cache.load("whole", paths[::-1])
    assert backwards["paths"] == paths[::-1]
    np.testing.assert_array_equal(backwards["float_scores"], whole["float_scores"][:, ::-1])


def test_eval_retrieve_caches_under_crosslayer_cache_by_default(retrieval_set, backbone_cache, monkeypatch):
    from crosslayer.commands import main

    root = retrieval_set
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *args, **kwargs: [])
    assert main(["eval", "retrieve", "--data", str(root), "--learn", str(root / "learn_a"), "--learn-images", "6",
                 "--no-float", "--weights", "random", "--side", "64", "--fit-images", "6", "--threads", "1"]) == 0
    assert json.loads((backbone_cache / "retrieval-eval" / "cache.json").read_text())["learn_set"]
    assert (backbone_cache / "retrieval-eval" / "queries" / "image-index.json").is_file()
