"""Every command of the command line end to end, as a user types it, in a child process, with progress bars on:
tiny generated images and an untrained (seeded) MobileNetV2 at a small side keep it fast."""

import csv
import json

import numpy as np
import pytest

from _cli import ok, one_line_error, run_cli
from _images import write_block_images

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

SIDE = 64
TINY = ["--weights", "random", "--side", SIDE, "--fit-images", "6", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, backbone_cache):
    root = tmp_path_factory.mktemp("photos")
    return root, write_block_images(root / "db", 6, side=SIDE)


@pytest.fixture(scope="module")
def index(photos):
    root, _ = photos
    db = root / "index"
    done = ok(run_cli("index", "build", db, "--images", root / "db", *TINY))
    assert "indexed 6 images (0 already there, 0 failed)" in done.stdout
    # progress is shown: the PCA fit first, then the bar
    assert "learning the PCA on 6 of 6 images" in done.stderr and "index: 100%" in done.stderr
    # the small-sample warning is one line for a CLI user, without Python's source line
    warned = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("crosslayer index build: warning: fit: 6 images for"), done.stderr
    assert "UserWarning" not in done.stderr and "encoder.fit(" not in done.stderr
    return db


def test_index_build_resumes_add_extends_and_search_ranks(photos, index, tmp_path):
    root, images = photos
    done = ok(run_cli("index", "build", index, "--images", root / "db", *TINY))
    assert "indexed 0 images (6 already there" in done.stdout and "learning the PCA" not in done.stderr

    more = write_block_images(tmp_path / "more", 2, seed=1, side=SIDE)
    copy = tmp_path / "index"
    import shutil

    shutil.copytree(index, copy)
    done = ok(run_cli("index", "add", copy, "--images", *more, "--weights", "random", "--threads", "1"))
    assert "indexed 2 images" in done.stdout and "8 in" in done.stdout

    sheet = tmp_path / "hits.png"
    done = ok(run_cli("search", index, images[3], "--top", "3", "--channels", "50", "--threads", "1",
                      "--sheet", sheet, "--heatmaps"))
    lines = done.stdout.splitlines()
    assert lines[0] == f"query {images[3]}" and [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
    top = int(lines[1].split()[1])
    assert any(line.split()[2] == str(images[3].resolve()) and int(line.split()[1]) == top for line in lines[1:4])
    assert sheet.stat().st_size > 0 and "ms/query" in done.stderr

    summary = json.loads(ok(run_cli("info", index)).stdout)
    assert summary["images"] == 6 and summary["encoder"]["side"] == SIDE


def test_heatmap_takes_the_index_network(photos, index, tmp_path):
    _, images = photos
    out = tmp_path / "heat.png"
    done = ok(run_cli("heatmap", images[1], "--out", out, "--index", index, "--channels", "4", "--threads", "1"))
    assert "features.17 channels (mean activation)" in done.stdout  # the retrieval pair's guidance and out.stat().st_size > 0
    shown = done.stdout.split(": ", 1)[1].split(", ")
    assert len(shown) == 4


def test_extract_then_info_search_and_export_from_the_cache(photos, tmp_path):
    root, images = photos
    db = tmp_path / "db"
    done = ok(run_cli("extract", root / "db", db, *TINY))
    assert "indexed 6 images (0 already there, 0 failed)" in done.stdout and "index: 100%" in done.stderr
    # the fit shows progress and its time is counted
    assert "learning the PCA on 6 of 6 images" in done.stderr and "fit PCA: 100%" in done.stderr
    assert float(done.stdout.split("(PCA ")[1].split(" s)")[0]) > 0
    summary = json.loads(ok(run_cli("info", db)).stdout)
    assert summary["images"] == 6 and "embedding" in summary["side"]  # extract = index build --embeddings
    # what extract made is an image index: searchable as it is
    done = ok(run_cli("search", db, images[2], "--top", "2", "--threads", "1"))
    assert done.stdout.splitlines()[1].split()[2] == str(images[2].resolve())
    assert json.loads(ok(run_cli("info", db / "encoder.xle")).stdout)["side"] == SIDE
    assert "popcount" in ok(run_cli("info")).stdout

    exported = ok(run_cli("export", "--weights", "random")).stdout.strip()
    assert exported.endswith(".onnx")


def bad_images(folder):
    """A 0-byte file, a text file named .jpg and a macOS `._x.jpg` among three good images."""
    write_block_images(folder, 3, seed=3, side=SIDE)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "._x.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return ["empty.jpg", "text.jpg", "._x.jpg"]


@pytest.mark.parametrize("command", ["extract", "index build"])
def test_bad_images_in_the_fit_sample_are_skipped_and_all_reported(command, tmp_path):
    bad = bad_images(tmp_path / "mixed")
    db = tmp_path / "db"
    arguments = ([command, tmp_path / "mixed", db] if command == "extract" else
                 ["index", "build", db, "--images", tmp_path / "mixed"])
    done = ok(run_cli(*arguments, *TINY, "--on-error", "skip"))
    assert "learning the PCA on 6 of 6 images" in done.stderr  # the bad images are in the fit sample
    assert "indexed 3 images (0 already there, 3 failed)" in done.stdout
    reported = [line for line in done.stderr.splitlines() if line.startswith("  failed: ")]
    assert sorted(line.split(": ")[1].rsplit("/", 1)[1] for line in reported) == sorted(bad)
    # recorded in the index (info shows them) and not retried by a later run unless asked
    summary = json.loads(ok(run_cli("info", db)).stdout)
    assert summary["failed"] == 3 and sorted(p.rsplit("/", 1)[1] for p in summary["failures"]) == sorted(bad)
    done = ok(run_cli(*arguments, *TINY))
    assert "indexed 0 images (3 already there, 3 recorded as bad earlier, 0 failed)" in done.stdout
    done = ok(run_cli("index", "add", db, "--images", tmp_path / "mixed", "--weights", "random", "--retry-failed"))
    assert "indexed 0 images (3 already there, 3 failed)" in done.stdout


def test_extract_skips_bad_images_and_reports_them(photos, tmp_path):
    root, images = photos
    db = tmp_path / "db"
    ok(run_cli("extract", root / "db", db, *TINY))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "text.jpg").write_text("not an image")
    write_block_images(mixed, 1, seed=3, side=SIDE)
    done = ok(run_cli("extract", mixed, db, *TINY))
    assert "indexed 1 images (0 already there, 2 failed)" in done.stdout
    assert "empty.jpg" in done.stderr and "text.jpg" in done.stderr

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    one_line_error(run_cli("extract", tmp_path / "bad", db, *TINY, "--on-error", "raise"), "broken.jpg")
    assert json.loads(ok(run_cli("info", db)).stdout)["images"] == 7  # nothing lost


def test_index_add_reports_bad_images_and_on_error_raise_is_never_ignored(photos, index, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "empty.png").write_bytes(b"")
    done = ok(run_cli("index", "add", copy, "--images", tmp_path / "bad", "--weights", "random"))
    assert "1 failed" in done.stdout and "empty.png" in done.stderr
    error = one_line_error(run_cli("index", "add", copy, "--images", tmp_path / "bad", "--weights", "random",
                                   "--on-error", "raise", "--retry-failed"))
    assert "empty.png" in error


@pytest.fixture(scope="module")
def manifest_set(tmp_path_factory):
    """Three colour classes of noisy 40x40 images: 3 train, 2 test, 1 val each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    rows = [("path", "label", "split")]
    for label, colour in enumerate(((220, 40, 40), (40, 40, 220), (40, 200, 40))):
        for i in range(6):
            image = np.clip(np.asarray(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"c{label}_{i}.png")
            rows.append((f"c{label}_{i}.png", f"class{label}", "train" if i < 3 else "test" if i < 5 else "val"))
    with open(root / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root


def test_eval_classify_with_its_progress_bars(manifest_set, backbone_cache, tmp_path):
    """The command as users run it: progress on (it crashed with the Gram's progress bar before)."""
    out = tmp_path / "record.json"
    done = ok(run_cli("eval", "classify", "--data", manifest_set, "--method", "crosslayer", "--side", SIDE,
                      "--weights", "random", "--cache", tmp_path / "cache", "--json", out, "--folds", "2",
                      "--fit-images", "4", "--threads", "1"))
    assert "Gram" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["label"] == "crosslayer" and 0.0 <= summary["accuracy"] <= 1.0
    record = json.loads(out.read_text())
    assert record["n_train"] == 9 and record["n_test"] == 6


def test_eval_retrieve_with_its_progress_bars(backbone_cache, tmp_path):
    images = write_block_images(tmp_path / "set", 4, side=SIDE)
    write_block_images(tmp_path / "learn", 6, seed=2, side=SIDE)
    rows = "path,item\n" + "".join(f"set/{p.name},{p.stem}\n" for p in images)
    (tmp_path / "queries.csv").write_text(rows)
    (tmp_path / "database.csv").write_text(rows)
    done = ok(run_cli("eval", "retrieve", "--data", tmp_path, "--learn", tmp_path / "learn", "--learn-images", "6",
                      "--channels", "3,all", "--spoc-dim", "4", "--no-float", "--cache", tmp_path / "cache",
                      "--json", tmp_path / "eval.json", *TINY))
    assert "| crosslayer-codes | 3 |" in done.stdout and "features" in done.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["records"]


def test_python_dash_m_and_version():
    import crosslayer

    assert ok(run_cli("--version")).stdout.strip() == f"crosslayer {crosslayer.__version__}"
    done = ok(run_cli("search", "--help"))
    assert "examples:" in done.stdout and "(default: 10)" in done.stdout
    # list defaults as typed on the command line, not as Python tuples
    done = " ".join(ok(run_cli("eval", "classify", "--help")).stdout.split())
    assert "(default: 0,1,2)" in done and "(default: 0.001,0.01,0.1,1,10,100,1000)" in done


@pytest.mark.parametrize("ops", ["standard", "custom"])
def test_export_a_fitted_encoder_to_onnx(photos, index, tmp_path, ops):
    import onnxruntime as ort

    import crosslayer
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.onnx_encoder import model_metadata

    options = ort.SessionOptions()
    if ops == "custom":
        try:
            options.register_custom_ops_library(crosslayer.ort_ops_library())
        except crosslayer.NotBuiltError as error:
            pytest.skip(str(error))
    _, images = photos
    out = tmp_path / "encoder.onnx"
    done = ok(run_cli("export", "--encoder", index / "encoder.xle", "--out", out, "--ops", ops, "--embedding"))
    assert done.stdout.strip() == str(out)
    assert model_metadata(out)["ops"] == ops and model_metadata(out)["side"] == str(SIDE)
    encoder = CrossLayerEncoder.load(index / "encoder.xle")
    session = ort.InferenceSession(str(out), options)
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: encoder.load_pixels(images[:2])})))
    assert outputs["bits"].shape == (2, encoder.Dk, 2, (encoder.Dt + 63) // 64) and outputs["embedding"].shape[0] == 2
    # backbone-only options do not apply to an encoder, and an encoder export needs a file to write
    one_line_error(run_cli("export", "--encoder", index / "encoder.xle"), "--out")
    one_line_error(run_cli("export", "--out", out), "--encoder")


def test_python_dash_m_cmake_dir():
    import crosslayer

    assert ok(run_cli("--cmake-dir")).stdout.strip() == crosslayer.cmake_dir()
