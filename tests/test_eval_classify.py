"""End to end on a tiny synthetic image set with an untrained (seeded) backbone: `crosslayer eval classify` writes a
record, reuses its caches on a second run, and ablation flags reach the computation."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from PIL import Image  # noqa: E402

from crosslayer.cli import main  # noqa: E402
from crosslayer.eval import classify, read_record  # noqa: E402


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    lines = ["path,label,split"]
    for label, colour in enumerate(((220, 40, 40), (40, 40, 220))):
        for i in range(6):
            image = np.clip(np.asarray(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"c{label}_{i}.png")
            lines.append(f"c{label}_{i}.png,class{label},{'train' if i < 4 else 'test'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_cli_classify_writes_a_record_and_reuses_the_cache(tiny_set, tmp_path, capsys):
    out = tmp_path / "record.json"
    argv = ["eval", "classify", "--data", str(tiny_set), "--method", "crosslayer", "--side", "64", "--weights", "random",
            "--cache", str(tmp_path / "cache"), "--json", str(out), "--quiet", "--folds", "2", "--fit-images", "4"]
    assert main(argv) == 0
    record = read_record(out)
    assert record["n_train"] == 8 and record["n_test"] == 4 and record["classes"] == 2
    assert 0.0 <= record["accuracy"] <= 1.0 and record["dims"] == 320 * 1280
    assert record["seconds"]["gram_cached"] is False
    assert json.loads(capsys.readouterr().out)["label"] == "crosslayer"
    assert main(argv) == 0
    assert read_record(out)["seconds"]["gram_cached"] is True


def test_ablation_without_l2_and_power_differs_and_sign_codes_run(tiny_set, tmp_path):
    common = dict(side=64, weights="random", cache_dir=tmp_path / "cache", progress=False, folds=2, fit_images=4,
                  layers=("features.16", "features.17"))
    default = classify(tiny_set, "crosslayer", **common)
    ablated = classify(tiny_set, "crosslayer", l2=False, power=False, **common)
    assert default["kernel_scale"] != pytest.approx(ablated["kernel_scale"])
    sign = classify(tiny_set, "crosslayer-sign", **common)
    assert sign["bytes_per_image"] == 320 * 2 * 3 * 8 and sign["dims"] == 160 * 320
