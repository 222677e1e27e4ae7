"""Multi-label manifests (labels separated by ';'), VOC interpolated AP, per-class binary SVMs, and
`crosslayer eval classify` reporting VOC 2007 mean AP for such a manifest."""

import json

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crosslayer.errors import UsageError
from crosslayer.eval.manifest import ManifestError, load_manifest
from crosslayer.retrieval.metrics import average_precision, relevant_ranks, voc_average_precision


def _write(root, lines):
    (root / "manifest.csv").write_text("path,label,split\n" + "\n".join(lines) + "\n")
    return root


def test_a_label_cell_with_several_labels_makes_a_multilabel_manifest(tmp_path):
    lines = ["a.png,dog;person,train", "b.png,cat,train", "c.png, person ; cat ,test"]
    dataset = load_manifest(_write(tmp_path, lines))
    assert dataset.multilabel and dataset.classes == ("cat", "dog", "person")
    np.testing.assert_array_equal(dataset.targets, [[False, True, True], [True, False, False], [True, False, True]])
    np.testing.assert_array_equal(dataset.labels, [1, 0, 2])  # the first listed label
    subset = dataset.subset_per_class(1)
    assert subset.targets.shape == (len(subset), 3)
    single = load_manifest(_write(tmp_path, ["a.png,dog,train", "b.png,cat,test"]))
    assert not single.multilabel and single.targets is None


@pytest.mark.parametrize("cell", ["dog;", ";dog", "dog;;cat", "dog;dog"])
def test_a_bad_label_list_is_refused_naming_the_line(tmp_path, cell):
    with pytest.raises(ManifestError, match=r"manifest.csv:3: label .*separated by ';'"):
        load_manifest(_write(tmp_path, ["a.png,cat,train", f"b.png,{cell},test"]))


def _devkit_ap(scores, positives, kind):
    """The PASCAL VOC devkit's computation, written as it is there: precision and recall at every rank (stable sort
    with negatives first among ties, as the metrics module breaks them), then VOC07's 11 points or VOC10's area."""
    order = np.lexsort((positives.astype(np.int8), -scores))
    hits = positives[order].astype(np.float64)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    recall, precision = tp / hits.sum(), tp / (tp + fp)
    if kind == "11point":
        return np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                        for t in np.arange(0.0, 1.1, 0.1)])
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def test_voc_ap_of_a_worked_example():
    ranks = np.array([1, 3])  # precision 1 at recall 0.5, 2/3 at recall 1
    assert voc_average_precision(ranks, "11point") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert voc_average_precision(ranks, "area") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # precision falling at every positive: nothing to interpolate, the area is the plain AP; rising: it is more
    assert voc_average_precision(np.array([1, 2, 4]), "area") == pytest.approx(average_precision(np.array([1, 2, 4])))
    assert voc_average_precision(np.array([2, 3]), "area") == pytest.approx(2 / 3)
    assert average_precision(np.array([2, 3])) == pytest.approx(7 / 12)
    with pytest.raises(UsageError, match="kind"):
        voc_average_precision(ranks, "12point")
    with pytest.raises(UsageError, match="no average precision"):
        voc_average_precision(np.array([]), "area")


@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=1, max_size=30).filter(
    lambda items: any(positive for _, positive in items)))
# recall exactly 3/5: the devkit's 0.6000000000000001 threshold is not reached there
@example([(0, False), (0, True), (0, True), (1, True), (1, True), (1, True)])
def test_voc_ap_is_the_devkit_computation(items):
    scores = np.array([score for score, _ in items], np.float64)  # few values: ties are common
    positives = np.array([positive for _, positive in items])
    ranks = relevant_ranks(scores[None], positives[None])[0]
    for kind in ("11point", "area"):
        assert voc_average_precision(ranks, kind) == pytest.approx(_devkit_ap(scores, positives, kind), abs=1e-12)
    assert voc_average_precision(ranks, "area") >= average_precision(ranks) - 1e-12


def test_per_class_svms_rank_the_positives_of_separable_classes_first():
    from crosslayer.eval.multilabel import train_and_test

    rng = np.random.default_rng(0)
    targets = rng.random((60, 3)) < 0.4
    targets[:3] = [[True, False, False], [False, True, False], [False, False, True]]
    targets[3:6] = ~targets[:3]
    features = np.where(targets, 1.0, -1.0) + 0.1 * rng.standard_normal((60, 3))  # one axis per class
    kernel = features @ features[:40].T
    result = train_and_test(kernel[:40], targets[:40], kernel[40:], targets[40:], ("a", "b", "c"), folds=2)
    assert result["mean_ap"] == pytest.approx(1.0) and result["mean_ap_area"] == pytest.approx(1.0)
    assert set(result["ap_per_class"]) == {"a", "b", "c"} and result["scores"].shape == (20, 3)
    shuffled = train_and_test(kernel[:40], targets[:40], kernel[40:], targets[40:][rng.permutation(20)],
                              ("a", "b", "c"), folds=2)
    assert shuffled["mean_ap"] < 0.95  # the same scores against other truths: the metric can fail
    lacking = targets[:40].copy()
    lacking[:, 2] = False
    lacking[0, 2] = True
    with pytest.raises(UsageError, match="class 'c' has 1 positive"):
        train_and_test(kernel[:40], lacking, kernel[40:], targets[40:], ("a", "b", "c"), folds=2)
    with pytest.raises(UsageError, match="y_train"):
        train_and_test(kernel[:40], targets[:40].astype(int), kernel[40:], targets[40:], ("a", "b", "c"))


@pytest.fixture
def multilabel_set(tmp_path):
    """Red, blue and half-red-half-blue images: labels red, blue and red;blue."""
    from PIL import Image

    rng = np.random.default_rng(0)
    red, blue = np.array([220, 40, 40]), np.array([40, 40, 220])
    lines = []
    for kind, label in enumerate(("red", "blue", "red;blue")):
        for i in range(6):
            image = np.empty((40, 40, 3))
            image[:] = red if kind == 0 else blue
            if kind == 2:
                image[:, :20] = red
            image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / f"{kind}_{i}.png")
            lines.append(f"{kind}_{i}.png,{label},{'train' if i < 4 else 'test'}")
    return _write(tmp_path, lines)


def test_cli_classify_reports_voc_mean_ap_on_a_multilabel_manifest(multilabel_set, tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from crosslayer.commands import main
    from crosslayer.eval import read_record

    out = tmp_path / "record.json"
    argv = ["eval", "classify", "--data", str(multilabel_set), "--method", "global", "--side", "64", "--weights",
            "random", "--cache", str(tmp_path / "cache"), "--json", str(out), "--quiet", "--folds", "2"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    record = read_record(out)
    assert printed["mean_ap"] == record["mean_ap"] and 0.0 <= record["mean_ap"] <= 1.0
    assert set(record["ap_per_class"]) == {"blue", "red"} and "accuracy" not in record
    assert record["ap_kind"].startswith("VOC 2007 11-point")
    assert len(record["test_predictions"]) == 6 and len(record["test_scores"][0]) == 2
    assert all(set(predicted) <= {"red", "blue"} for predicted in record["test_predictions"])

    argv = ["eval", "classify", "--data", str(multilabel_set), "--method", "aconv-fast", "--weights", "random",
            "--cache", str(tmp_path / "cache2"), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "multi-label" in capsys.readouterr().err
    assert not (tmp_path / "cache2").exists()
