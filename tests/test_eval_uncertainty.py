"""End to end on a tiny synthetic set (untrained seeded backbone): records keep each test image's key, label and
prediction; one-vs-rest SVMs and re-splits through the CLI; SPM level rows are slices of the stored pyramid (no store
of their own); AConv's normalisation variants; the reproduce script's paired comparisons and the retrieval script's
mAP intervals."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from PIL import Image  # noqa: E402

from crosslayer.commands import main  # noqa: E402
from crosslayer.eval import classify, read_record  # noqa: E402
from crosslayer.eval.stats import resplit  # noqa: E402
from _images import write_two_colour_set  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
COMMON = dict(side=64, weights="random", progress=False, folds=2, fit_images=4, seed=0)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return write_two_colour_set(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_ovr_and_resplits_keep_every_test_prediction_with_its_key(tiny_set, cache, tmp_path, capsys):
    out = tmp_path / "record.json"
    argv = ["eval", "classify", "--data", str(tiny_set), "--method", "global", "--side", "64", "--weights", "random",
            "--cache", str(cache), "--json", str(out), "--quiet", "--folds", "2", "--fit-images", "4",
            "--multiclass", "ovr", "--resplits", "2"]
    assert main(argv) == 0
    record = read_record(out)
    assert record["multiclass"] == "ovr"
    assert record["test_keys"] == ["c0_4.png", "c0_5.png", "c1_4.png", "c1_5.png"]
    assert record["test_labels"] == [0, 0, 1, 1] and len(record["test_predictions"]) == 4
    assert [split["split_seed"] for split in record["resplits"]] == [1, 2]
    assert all(0.0 <= split["accuracy"] <= 1.0 for split in record["resplits"])
    assert len(json.loads(capsys.readouterr().out)["resplit_accuracies"]) == 2
    # the all-images kernel was cached: a rerun computes nothing
    assert main(argv) == 0 and read_record(out)["seconds"]["gram_cached"] is True
    with pytest.raises(SystemExit):
        main(argv[:-4] + ["--multiclass", "crammer-singer"])


def test_resplits_are_the_splits_evaluated_one_by_one(tiny_set, cache):
    """Split 1 of `resplits` equals a classifier trained on that split's images (from the all-images kernel)."""
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.svm import train_and_test

    record = classify(tiny_set, "global", cache_dir=cache, resplits=1, **COMMON)
    dataset = load_manifest(tiny_set)
    from crosslayer.eval.extract import extract
    from crosslayer.eval.methods import MethodConfig

    config = MethodConfig("global", fit_images=4)
    rows = extract(dataset, [config], "mobilenet_v2", 64, cache, "random", progress=False, fit_images=4)[config].read()
    splits = resplit(dataset.labels, dataset.splits, 1)
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    kernel = rows.astype(np.float64) @ rows.astype(np.float64).T
    direct = train_and_test(kernel[np.ix_(train, train)], dataset.labels[train], kernel[np.ix_(test, train)],
                            dataset.labels[test], folds=2)
    assert record["resplits"][0]["accuracy"] == direct["accuracy"]
    assert record["resplits"][0]["C"] == direct["C"]


def test_spm_level_rows_are_slices_of_the_stored_pyramid(tiny_set, cache):
    from crosslayer.eval.classify import source_config
    from crosslayer.eval.extract import pass_directory
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.methods import MethodConfig

    full = classify(tiny_set, "max-spm", spm_layer="both", cache_dir=cache, **COMMON)
    level0 = classify(tiny_set, "max-spm", spm_layer="both", spm_levels=(0,), cache_dir=cache, **COMMON)
    assert level0["dims"] == 320 + 1280 and full["dims"] == 21 * (320 + 1280)
    assert level0["label"] == "max-spm L0-both" and level0["test_keys"] == full["test_keys"]
    config = MethodConfig("max-spm", spm_layer="both", spm_levels=(0,))
    assert source_config(config) == MethodConfig("max-spm", spm_layer="both")
    directory = pass_directory(cache, load_manifest(tiny_set), "mobilenet_v2", 64, "random")
    assert not (directory / config.key()).exists()  # no store of its own
    assert source_config(MethodConfig("max-spm", spm_levels=(0, 3))) == MethodConfig("max-spm", spm_levels=(0, 3))


def test_aconv_normalisation_variants_are_stored_apart(tiny_set, cache):
    common = dict(COMMON, aconv_side=128, aconv_region=64, aconv_stride=32, aconv_pca_dim=8, aconv_filters=4,
                  aconv_epochs=2)
    default = classify(tiny_set, "aconv-fast", cache_dir=cache, **common)
    ablated = classify(tiny_set, "aconv-fast", l2=False, power=False, cache_dir=cache, **common)
    assert ablated["label"] == "aconv-fast pca8 no-l2 no-power" and default["label"] == "aconv-fast pca8"
    assert default["dims"] == ablated["dims"] == 4 * 8
    # the region pass is shared; the guided rows are stored apart (their values: test_eval_stats' guided_regions test)
    from crosslayer.eval.extract import pass_directory
    from crosslayer.eval.manifest import load_manifest

    directory = pass_directory(cache, load_manifest(tiny_set), "mobilenet_v2", 64, "random")
    assert len(list(directory.glob("aconv-fast-*"))) == 1 and len(list(directory.glob("aconv-guided-*"))) == 2


def _record(label, predictions, truth, accuracy=None):
    return {"label": label, "method": label.split()[0], "dims": 1, "bytes_per_image": 4, "C": 1.0,
            "accuracy": float(np.mean(np.asarray(predictions) == truth)) if accuracy is None else accuracy,
            "mean_per_class_accuracy": 0.5, "test_keys": [f"{i}.jpg" for i in range(len(truth))],
            "test_labels": list(map(int, truth)), "test_predictions": list(map(int, predictions)),
            "seconds": {"gram": 0.0, "select_c": 0.0, "train_test": 0.0}}


def test_reproduce_classification_reports_paired_differences_and_noise(tmp_path, monkeypatch):
    script = _script("reproduce_classification")
    truth = np.repeat(np.arange(4), 100)
    crosslayer = truth.copy()
    crosslayer[:20] = (crosslayer[:20] + 1) % 4
    close = crosslayer.copy()
    close[20:22] = (close[20:22] + 1) % 4  # two more errors: within the noise
    far = truth.copy()
    far[:120] = (far[:120] + 1) % 4  # 100 more errors: clearly lower
    records = [("main", _record("global", far, truth)), ("main", _record("crosslayer", crosslayer, truth)),
               ("Table 8", _record("max-spm L012-both", close, truth)), ("SVM protocol", _record("crosslayer [ovr]", close, truth))]
    records[0][1]["resplits"] = [{"accuracy": 0.7}, {"accuracy": 0.72}]
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    script.write_results(records, "title", ["- a note"], "table", {})
    text = (tmp_path / "table.md").read_text()
    assert "| crosslayer | global | +25.00 [" in text and "higher: holds" in text
    assert "| crosslayer | max-spm L012-both | +0.50 [" in text and "within the noise" in text
    assert "| crosslayer [ovr] | crosslayer |" in text
    assert "71.00 ± 1.41% (n=2)" in text
    body = script.read_results(tmp_path / "table.json")
    assert body["records"][1]["test_predictions"] == crosslayer.tolist()
    assert {(c["a"], c["b"]) for c in body["comparisons"]} >= {("crosslayer", "global"), ("crosslayer [ovr]", "crosslayer")}
    other = dict(_record("global", far, truth), test_keys=["x.jpg"] * 400)
    with pytest.raises(SystemExit, match="different images"):
        script.write_results([("main", other), records[1]], "title", [], "table", {})


def test_reproduce_retrieval_map_intervals_are_paired_over_queries():
    script = _script("reproduce_retrieval")
    rng = np.random.default_rng(0)
    ap = rng.random(50)
    records = [{"method": "spoc", "channels": "all", "distractors": 0, "query_ap": ap.tolist()},
               {"method": "crosslayer-codes", "channels": "all", "distractors": 0, "query_ap": (ap + 0.1).tolist()},
               {"method": "crosslayer-float", "channels": "all", "distractors": 0, "query_ap": (ap + 0.1).tolist()}]
    differences = script.map_differences(records)
    first = differences[0]
    assert first["a"] == ("crosslayer-codes", "all") and first["difference"] == pytest.approx(0.1)
    assert first["low"] == pytest.approx(0.1) and first["high"] == pytest.approx(0.1) and not first["within_noise"]
    codes_vs_float = [d for d in differences if d["b"] == ("crosslayer-float", "all")][0]
    assert codes_vs_float["within_noise"]
    assert "+0.100 [+0.100, +0.100] | A higher" in script.map_difference_table(differences)


def test_shared_index_rows_evaluate_a_kernel_and_name_missing_images(tiny_set):
    from crosslayer.errors import UsageError
    from crosslayer.eval.manifest import load_manifest

    script = _script("classify_shared_index")
    dataset = load_manifest(tiny_set)

    class Index:
        def __init__(self, known):
            self.known = known

        def find(self, paths):
            return np.array([self.known.index(p) if p in self.known else -1 for p in paths])

    assert script.index_rows(Index(list(reversed(dataset.paths))), dataset).tolist() == list(range(13, -1, -1))
    with pytest.raises(UsageError, match="--index: 1 manifest images"):
        script.index_rows(Index(list(dataset.paths[1:])), dataset)
    features = np.eye(2)[dataset.labels] + 0.01 * np.arange(14)[:, None]
    record = script.evaluate("global", "global", features @ features.T, dataset, 2, 2, 8, 0.0, 1)
    assert record["accuracy"] == 1.0 and [s["accuracy"] for s in record["resplits"]] == [1.0, 1.0]
    assert record["test_keys"] == ["c0_4.png", "c0_5.png", "c1_4.png", "c1_5.png"]


def test_reproduce_retrieval_from_image_indexes(backbone_cache, tmp_path):
    """`reproduce_retrieval.py --indexes ROOT --encoder ENC.xle` as a user types it: queries and database re-encoded
    (checked against the database's index), distractors and the whitening's learn embeddings read from indexes; the
    centre-prior SPoC and the channel-rule rows, each setting with paired mAP intervals."""
    from _images import write_block_images
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.evaluate import read_results
    from crosslayer.retrieval.image_index import ImageIndex

    script = _script("reproduce_retrieval")
    data, indexes = tmp_path / "data", tmp_path / "indexes"
    database = write_block_images(data / "set" / "db", 6, seed=1, side=64)
    rng = np.random.default_rng(2)
    (data / "set" / "q").mkdir()
    for i, path in enumerate(database):  # each query a noisy copy of its reference
        pixels = np.asarray(Image.open(path), np.float64) + rng.normal(0, 40, (64, 64, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(data / "set" / "q" / f"q{i}.png")
    (data / "set" / "database.csv").write_text("path,item\n" + "".join(f"db/img{i:02d}.png,{i}\n" for i in range(6)))
    (data / "set" / "queries.csv").write_text("path,item\n" + "".join(f"q/q{i}.png,{i}\n" for i in range(6)))
    distractors = write_block_images(data / "other", 9, seed=3, side=64)
    encoder = CrossLayerEncoder("mobilenet_v2", side=64, weights="random", batch_size=4, threads=1, fit_images=6)
    encoder.fit(distractors)
    encoder.save(tmp_path / "enc.xle")
    for name, paths in (("set-database", database), ("other", distractors)):
        with ImageIndex.create(indexes / name, encoder, root=paths[0].parent, embeddings=True) as index:
            index.add(paths, progress=False)
    argv = ["--data", str(data), "--set", "set", "--distractors", "other", "--learn", "other", "--learn-images", "8",
            "--spoc-dim", "4", "--indexes", str(indexes), "--encoder", str(tmp_path / "enc.xle"), "--threads", "1",
            "--tag", "_tiny", "--out", str(tmp_path / "out")]
    assert script.main(argv) == 0
    records = read_results(tmp_path / "out" / "retrieval_tiny.json")["records"]
    by_setting = {}
    for r in records:
        by_setting.setdefault(r["distractors"], {})[r["method"], r["channels"]] = r
    assert sorted(by_setting) == [0, 9]
    assert ("spoc-prior", "all") in by_setting[0] and ("spoc-prior", "all") not in by_setting[9]
    assert ("crosslayer-float", "50") in by_setting[0] and ("crosslayer-float", "50") not in by_setting[9]
    for setting in by_setting.values():
        # every channel compared: the selection rule cannot matter
        rules = [setting[method, "all"]["query_ap"] for method in script.RULE_METHODS.values()]
        assert rules[0] == rules[1] == rules[2] and len(rules[0]) == 6
        assert {("spoc", "all"), ("embedding", "all"), ("crosslayer-codes-abs", "10")} <= set(setting)
    text = (tmp_path / "out" / "retrieval_tiny.md").read_text()
    assert "| crosslayer-codes (all) | spoc-prior (all) | 0 |" in text and "run time" in text
    with pytest.raises(SystemExit):
        script.main([a for a in argv if a not in ("--encoder", str(tmp_path / "enc.xle"))])  # --indexes alone
