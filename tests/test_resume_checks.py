"""Resuming a store or an image index only with the encoder (settings and network weights) it was made with; paths
resolved; the command line's errors. A random-weight MobileNetV2 on tiny generated images."""

import functools
import io
import json
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from crosslayer.backbones.weights import file_sha256  # noqa: E402
from crosslayer.commands import main  # noqa: E402
from crosslayer.encoder import CrossLayerEncoder, EncoderMismatchError  # noqa: E402
from crosslayer.extract import extract  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex, ImageIndexError  # noqa: E402
from _images import write_block_images  # noqa: E402

SIDE = 64
TINY = ["--weights", "random", "--side", str(SIDE), "--fit-images", "6", "--batch-size", "4", "--threads", "1"]


_write_images = functools.partial(write_block_images, side=SIDE)


def _encoder(**options):
    return CrossLayerEncoder(**{"side": SIDE, "weights": "random", "batch_size": 4, "threads": 1, **options})


@pytest.fixture
def other_weights(tmp_path):
    path = tmp_path / "other.pth"
    path.write_bytes(b"a state dict that was never the store's")
    return path


def test_store_refuses_other_weights_naming_both(backbone_cache, tmp_path, other_weights):
    images = _write_images(tmp_path / "imgs", 4)
    store = tmp_path / "store"
    extract(images[:2], store, _encoder().fit(images), progress=False)
    assert CrossLayerEncoder.read_meta(store / "encoder.xle")["weights_id"] == "random:0"

    with pytest.raises(ImageIndexError) as info:
        extract(images, store, _encoder(weights=str(other_weights)), progress=False)
    message = str(info.value)
    assert "untrained weights (seed 0)" in message and file_sha256(other_weights) in message
    with pytest.raises(ImageIndexError, match=r"seed 0\).*seed 1\)"):
        extract(images, store, _encoder(seed=1), progress=False)
    # loading the encoder with other weights (a "moved" file) is refused as well
    with pytest.raises(EncoderMismatchError, match=file_sha256(other_weights)):
        CrossLayerEncoder.load(store / "encoder.xle", weights=str(other_weights))
    assert ImageIndex.open(store).paths() == [str(p) for p in images[:2]]

    report = extract(images, store, _encoder(), progress=False)
    assert (report.done, report.skipped) == (2, 2)


def test_weights_file_replaced_since_the_encoder_was_saved_is_refused(tmp_path):
    weights = tmp_path / "net.pth"
    weights.write_bytes(b"the weights the PCA was learnt with")
    encoder = CrossLayerEncoder(side=SIDE, pca_dim=4, weights=str(weights))
    dt_in = encoder.spec.channels[encoder.layers[0]]
    encoder.pca_ = (np.zeros(dt_in, np.float32), np.eye(dt_in, 4, dtype=np.float32))  # no network needed to save
    encoder.save(tmp_path / "enc.xle")
    recorded = file_sha256(weights)
    assert CrossLayerEncoder.read_meta(tmp_path / "enc.xle")["weights_id"] == recorded

    weights.write_bytes(b"other weights under the same name")
    loaded = CrossLayerEncoder.load(tmp_path / "enc.xle")
    with pytest.raises(EncoderMismatchError, match=f"{recorded}.*{file_sha256(weights)}"):
        loaded._backbone()  # refused before the network is exported or run


def _version_1_encoder_file(path, encoder):
    """An encoder file as crosslayer 0.2 wrote it: meta.json (version 1, no checksum, weights_id optional)."""
    meta = {"format": "crosslayer-encoder", "version": 1, **encoder.config()}
    del meta["weights_id"]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.json", json.dumps(meta))
        for name, array in (("pca_mean", encoder.pca_[0]), ("pca_projection", encoder.pca_[1])):
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())


def test_older_or_tampered_encoder_files_are_refused(backbone_cache, tmp_path):
    from crosslayer.encoder import EncoderFormatError

    encoder = _encoder().fit(_write_images(tmp_path / "imgs", 3))
    _version_1_encoder_file(tmp_path / "old.xle", encoder)
    with pytest.raises(EncoderFormatError, match="old.xle: not a readable crosslayer encoder file"):
        CrossLayerEncoder.load(tmp_path / "old.xle", weights="random")
    encoder.save(tmp_path / "new.xle")
    with zipfile.ZipFile(tmp_path / "new.xle") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    projection = np.load(io.BytesIO(members["pca_projection.npy"]))
    projection[0, 0] += 1.0  # a changed PCA behind an intact document: the array's checksum refuses it
    buffer = io.BytesIO()
    np.save(buffer, projection)
    members["pca_projection.npy"] = buffer.getvalue()
    with zipfile.ZipFile(tmp_path / "tampered.xle", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(EncoderFormatError, match="pca_projection.*checksum"):
        CrossLayerEncoder.load(tmp_path / "tampered.xle")
    loaded = CrossLayerEncoder.load(tmp_path / "new.xle")
    assert loaded.identity == encoder.identity and loaded.identity_digest == encoder.identity_digest
    assert set(encoder.identity) == {"backbone", "layers", "side", "policy", "pca_dim", "weights_id", "pca_sha256"}


def test_cli_extract_checks_its_flags_on_resume(backbone_cache, tmp_path, capsys, monkeypatch):
    _write_images(tmp_path / "imgs", 3)
    store = str(tmp_path / "store")
    assert main(["extract", str(tmp_path / "imgs"), store, "--quiet", *TINY]) == 0
    capsys.readouterr()

    changed = [a for a in TINY if a != str(SIDE)]
    changed.insert(changed.index("--side") + 1, "224")
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(tmp_path / "imgs"), store, "--quiet", "--backbone", "vgg16", *changed])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "backbone 'mobilenet_v2' (requested 'vgg16')" in error and "side 64 (requested 224)" in error

    # the same settings resume, with this run's batch size, threads and decode workers
    used = {}
    original = CrossLayerEncoder.activations

    def spy(self, images, on_error="raise", **options):
        used.update(batch_size=self.batch_size, threads=self.threads, decode_workers=self.decode_workers)
        return original(self, images, on_error, **options)

    monkeypatch.setattr(CrossLayerEncoder, "activations", spy)
    _write_images(tmp_path / "imgs", 4)
    runtime = [a for a in TINY if a not in ("--batch-size", "4", "--threads", "1")]
    assert main(["extract", str(tmp_path / "imgs"), store, "--quiet", *runtime, "--batch-size", "3", "--threads", "2",
                 "--decode-workers", "1"]) == 0
    assert "indexed 1 images (3 already there" in capsys.readouterr().out
    assert used == {"batch_size": 3, "threads": 2, "decode_workers": 1}


def test_store_keeps_one_entry_per_file_however_named(backbone_cache, tmp_path, monkeypatch):
    images = _write_images(tmp_path / "imgs", 3)
    store = tmp_path / "store"
    encoder = _encoder().fit(images)
    report = extract([images[0], images[0], tmp_path / "imgs" / ".." / "imgs" / "img00.png", images[1]], store,
                     encoder, progress=False)
    assert (report.done, report.skipped) == (2, 2)
    assert ImageIndex.open(store).paths() == [str(images[0]), str(images[1])]

    monkeypatch.chdir(tmp_path / "imgs")
    report = extract(["img00.png", "img01.png", "img02.png"], store, encoder, progress=False)
    assert (report.done, report.skipped) == (1, 2)
    assert ImageIndex.open(store).paths() == [str(p) for p in images]
    assert len(ImageIndex.open(store)) == 3


def test_cli_missing_inputs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    import crosslayer.commands.info
    from crosslayer.extract import read_manifest, resolve_sources

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(tmp_path / "nonexistent"), str(tmp_path / "store")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.count("\n") == 1 and "nonexistent does not exist" in error and "Traceback" not in error

    def failing_with(error_of):
        def command(args):
            error_of()
        return command

    monkeypatch.setattr(crosslayer.commands.info, "run", failing_with(lambda: read_manifest(tmp_path / "missing.csv")))
    with pytest.raises(SystemExit) as exit_info:
        main(["info"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("crosslayer info: error: ") and "No such file or directory" in error
    assert error.count("\n") == 1
    # a TypeError from an operation failing inside the library is a bug: its traceback is kept
    monkeypatch.setattr(crosslayer.commands.info, "run", failing_with(lambda: resolve_sources(5)))
    with pytest.raises(TypeError, match="not iterable"):
        main(["info"])


def test_search_checks_its_arguments_before_running_the_backbone(backbone_cache, tmp_path, capsys, monkeypatch):
    images = _write_images(tmp_path / "imgs", 3)
    db = str(tmp_path / "index")
    assert main(["index", "build", db, "--images", str(tmp_path / "imgs"), *TINY]) == 0
    capsys.readouterr()

    def no_backbone(self):
        raise AssertionError("the backbone ran before the arguments were checked")

    monkeypatch.setattr(CrossLayerEncoder, "_backbone", no_backbone)
    for bad, expected in [(["--sheet", str(tmp_path / "out.jpg")], "expected a .png or .html"),
                          (["--top", "0"], "top")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["search", db, str(images[0]), "--weights", "random", *bad])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "out.jpg").exists()


def test_index_refuses_other_weights_and_info_describes_it(backbone_cache, tmp_path, capsys, other_weights):
    _write_images(tmp_path / "imgs", 3)
    db = str(tmp_path / "index")
    assert main(["index", "build", db, "--images", str(tmp_path / "imgs"), *TINY]) == 0
    capsys.readouterr()
    other = [a if a != "random" else str(other_weights) for a in TINY]
    digest = file_sha256(other_weights)
    for argv in (["index", "build", db, "--images", str(tmp_path / "imgs"), *other],
                 ["index", "add", db, "--images", str(tmp_path / "imgs"), "--weights", str(other_weights)],
                 ["search", db, str(tmp_path / "imgs" / "img00.png"), "--weights", str(other_weights)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "untrained weights (seed 0)" in error and digest in error, argv

    assert main(["info", db]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["encoder"]["weights_id"] == "random:0"
    assert summary["encoder"]["Dk"] == 320  # the retrieval pair, features.16 x features.17


@pytest.mark.parametrize("interrupted_after", ["encoder", "codes"])
def test_interrupted_index_build_is_completed_by_build(backbone_cache, tmp_path, capsys, interrupted_after):
    import shutil

    _write_images(tmp_path / "imgs", 3)
    db = tmp_path / "index"
    assert main(["index", "build", str(db), "--images", str(tmp_path / "imgs"), *TINY]) == 0
    capsys.readouterr()
    # what an interruption before the marker leaves behind (no image is appended before the marker exists)
    shutil.rmtree(db)
    db.mkdir()
    encoder = _encoder().fit(_write_images(tmp_path / "fit", 3, seed=5))
    encoder.save(db / "encoder.xle")
    if interrupted_after == "codes":
        from crosslayer.index import CodeIndex

        CodeIndex.create(db / "codes", encoder.Dk, encoder.Dt).close()
    saved = (db / "encoder.xle").read_bytes()

    with pytest.raises(SystemExit):
        main(["index", "add", str(db), "--images", str(tmp_path / "imgs")])
    assert "interrupted" in capsys.readouterr().err
    changed = [a if a != str(SIDE) else "96" for a in TINY]
    with pytest.raises(SystemExit):
        main(["index", "build", str(db), "--images", str(tmp_path / "imgs"), *changed])
    assert "side 64 (requested 96)" in capsys.readouterr().err

    assert main(["index", "build", str(db), "--images", str(tmp_path / "imgs"), *TINY]) == 0
    assert "indexed 3 images" in capsys.readouterr().out
    assert (db / "encoder.xle").read_bytes() == saved  # completed with the saved encoder, not fitted again
    assert main(["index", "add", str(db), "--images", str(tmp_path / "imgs"), "--weights", "random"]) == 0
    assert "indexed 0 images (3 already there" in capsys.readouterr().out
    assert sorted(os.listdir(db)) == ["codes", "encoder.xle", "image-index.json"]


def test_demo_neighbours_match_the_reference_similarity(rng):
    from crosslayer import reference
    from crosslayer.commands.demo import nearest_neighbours
    from crosslayer.pooling import pool

    local = rng.standard_normal((6, 70, 3, 3)).astype(np.float32)
    guidance = rng.random((6, 40, 3, 3)).astype(np.float32)
    codes = pool(local, guidance, output="codes")
    codes = codes.concatenate([codes, codes[[2]], codes[[0]]])  # duplicates tie with their originals
    for channels in (5, 40):
        expected = []
        for query in range(len(codes)):
            selected = sorted(np.argsort(-codes.channel_mean[query], kind="stable")[:channels].tolist())
            scores = [reference.ternary_dot(codes.bits[query], codes.bits[i], codes.Dt, selected)
                      for i in range(len(codes))]
            scores[query] = -(1 << 62)
            best = int(np.argmax(scores))
            expected.append((best, scores[best]))
        assert nearest_neighbours(codes, channels) == expected
