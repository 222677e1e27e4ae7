"""The image index as THE store: relative keys and rebase, commits by time and size, recorded bad images, embeddings,
search by key, normalised scores, identity of another network refused, a deleted marker completed, extract output
searchable. Random-weight backbones on tiny generated images."""

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from crosslayer import CodeIndex, Codes  # noqa: E402
from crosslayer.codes import IdentityMismatchError  # noqa: E402
from crosslayer.encoder import CrossLayerEncoder  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex, ImageIndexError  # noqa: E402
from _images import write_block_images  # noqa: E402

SIDE = 64


def _encoder(backbone="mobilenet_v2", **options):
    return CrossLayerEncoder(backbone, side=SIDE, weights="random", batch_size=4, threads=1, fit_images=6, **options)


@pytest.fixture(scope="module")
def fitted(backbone_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    return _encoder().fit(write_block_images(folder, 4, seed=9, side=SIDE))


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    (folder / "._mac.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    return sorted(str(p) for p in folder.iterdir())


def test_codes_of_another_network_with_the_same_shape_are_refused(backbone_cache, tmp_path, fitted):
    images = write_block_images(tmp_path / "imgs", 3, side=SIDE)
    other = _encoder("efficientnet_lite0").fit(images)
    assert (other.Dk, other.Dt) == (fitted.Dk, fitted.Dt) == (1280, 320)
    mine, theirs = fitted.encode(images), other.encode(images)
    assert mine.identity == fitted.identity_digest != theirs.identity == other.identity_digest
    with pytest.raises(IdentityMismatchError, match=f"{other.identity_digest}.*{fitted.identity_digest}"):
        Codes.concatenate([mine, theirs])
    with ImageIndex.create(tmp_path / "db", fitted, root=tmp_path / "imgs") as index:
        index.add(images, progress=False)
        with pytest.raises(IdentityMismatchError, match="queries"):
            index.codes.search(theirs, k=2)
        with pytest.raises(IdentityMismatchError, match="codes"):
            CodeIndex.append(_writable(index), theirs, keys=["x", "y", "z"])


def _writable(index):
    index.close()
    return CodeIndex.open(index.directory / "codes", "a")


def test_keys_are_relative_to_a_root_that_moves_with_the_images(backbone_cache, tmp_path, fitted):
    images = write_block_images(tmp_path / "photos" / "set", 4, side=SIDE)
    db = tmp_path / "db"
    with ImageIndex.create(db, fitted, fit_sources=images) as index:
        index.add(images, progress=False)
        assert index.root == str((tmp_path / "photos" / "set").resolve())
        assert index.keys() == [f"img{i:02d}.png" for i in range(4)]
        before, _ = index.search([images[1]], top=2)
    shutil.move(tmp_path / "photos", tmp_path / "moved")
    with ImageIndex.open(db, "a") as index:
        index.rebase(tmp_path / "moved" / "set")
    with ImageIndex.open(db) as index:
        moved = [str(p).replace(str(tmp_path / "photos"), str(tmp_path / "moved")) for p in images]
        assert index.paths() == [str(p) for p in moved] and all(os.path.exists(p) for p in index.paths())
        by_key, _ = index.search_keys(["img01.png"], top=2)  # no re-encoding
        assert [(h.path, h.score) for h in by_key[0]] == [(h.path.replace(str(tmp_path / "photos"),
                                                                          str(tmp_path / "moved")), h.score)
                                                          for h in before[0]]
        with pytest.raises(UsageError, match="not in the index"):
            index.search_keys(["nope.png"])
        normalized, _ = index.search_keys([moved[1]], top=4, normalize=True)
        assert normalized[0][0].path == moved[1] and normalized[0][0].score == pytest.approx(1.0)
        assert all(-1.0 <= h.score <= 1.0 for h in normalized[0])


def test_bad_images_are_recorded_not_retried_and_commits_follow_size_and_time(backbone_cache, tmp_path, fitted,
                                                                                monkeypatch):
    good = [str(p) for p in write_block_images(tmp_path / "imgs", 5, side=SIDE)]
    bad = _bad_files(tmp_path / "imgs" / "bad")
    ImageIndex.create(tmp_path / "db", fitted, root=tmp_path / "imgs").close()
    with ImageIndex.open(tmp_path / "db", "a", batch_size=1) as index:  # the bound is checked after each batch
        report = index.add(good + bad, commit_images=2, commit_seconds=None, progress=False)
        assert report.added == 5 and sorted(p for p, _ in report.failed) == bad
        assert [s["count"] for s in index.codes._manifest["segments"]] == [2, 2, 1]  # never more than 2 pending
    with ImageIndex.open(tmp_path / "db", "a") as index:
        assert sorted(index.failures()) == bad and index.summary()["failed"] == 3
        again = index.add(good + bad, progress=False)
        assert again.added == 0 and again.failed == []  # not retried
        assert (again.skipped, again.recorded_bad) == (5, 3)
        (tmp_path / "imgs" / "bad" / "text.jpg").unlink()
        shutil.copy(good[0], tmp_path / "imgs" / "bad" / "text.jpg")  # fixed by the user
        retried = index.add(bad, retry_failed=True, progress=False)
        assert retried.added == 1 and len(retried.failed) == 2
        assert len(index.failures()) == 2 and len(index) == 6
    # every batch past commit_seconds commits: a kill loses at most that much work
    clock = iter(np.arange(0.0, 1000.0, 100.0))
    monkeypatch.setattr("crosslayer.retrieval.image_index.time.monotonic", lambda: float(next(clock)))
    more = [str(p) for p in write_block_images(tmp_path / "more", 8, seed=3, side=SIDE)]
    with ImageIndex.open(tmp_path / "db", "a", batch_size=2) as index:
        report = index.add(more, commit_seconds=30.0, progress=False)
    assert report.added == 8 and report.commits == 4


def test_on_error_raise_commits_what_came_before(backbone_cache, tmp_path, fitted):
    from crosslayer.images import ImageError

    good = [str(p) for p in write_block_images(tmp_path / "imgs", 4, side=SIDE)]
    bad = _bad_files(tmp_path / "imgs" / "bad")
    with ImageIndex.create(tmp_path / "db", fitted, root=tmp_path / "imgs") as index:
        with pytest.raises(ImageError):
            index.add(good + bad[:1], on_error="raise", progress=False)
        assert len(index) == 4  # all four good images were in batches before the bad one
        with pytest.raises(UsageError, match="on_error"):
            index.add(good, on_error="ignore")


def test_embeddings_side_array_and_extract_output_is_searchable(backbone_cache, tmp_path, fitted):
    from crosslayer.extract import extract

    images = [str(p) for p in write_block_images(tmp_path / "imgs", 5, side=SIDE)]
    report = extract(images, tmp_path / "store", fitted, progress=False)
    assert report.done == 5
    with ImageIndex.open(tmp_path / "store") as store:
        embeddings = store.embeddings()
        assert embeddings.shape == (5, 1280) and embeddings.dtype == np.float32
    with ImageIndex.open(tmp_path / "store") as index:
        hits, _ = index.search([images[2]], top=3)
        assert hits[0][0].path == images[2]
        np.testing.assert_array_equal(index.embeddings(), embeddings)
        summary = index.summary()
        assert summary["side"] == {"embedding": {"dtype": "<f4", "shape": [1280]}}
        assert summary["identity"]["digest"] == fitted.identity_digest and summary["images"] == 5
    with ImageIndex.open(tmp_path / "store", "a") as index:
        with pytest.raises(UsageError, match="embeddings"):
            index.add(images, embeddings=False)
        assert index.remove([images[0]]) == 1
        assert len(index) == 4 and index.summary()["deleted"] == 1


def test_a_deleted_marker_is_completed_by_the_build_not_a_type_error(backbone_cache, tmp_path, fitted):
    # crosslayer 0.2: the rerun closed the code index and then asked its length: TypeError
    images = [str(p) for p in write_block_images(tmp_path / "imgs", 3, side=SIDE)]
    with ImageIndex.create(tmp_path / "db", fitted, fit_sources=images) as index:
        index.add(images, progress=False)
    (tmp_path / "db" / "image-index.json").unlink()
    with pytest.raises(ImageIndexError, match="interrupted"):
        ImageIndex.open(tmp_path / "db")
    with ImageIndex.create(tmp_path / "db", fitted, fit_sources=images) as index:
        assert len(index) == 3 and index.add(images, progress=False).added == 0
    (tmp_path / "db" / "image-index.json").unlink()
    other = _encoder(pca_dim=8)
    with pytest.raises(ImageIndexError, match="another encoder"):
        ImageIndex.create(tmp_path / "db", other, fit_sources=images)


def test_create_records_the_bad_images_of_the_fit_sample(backbone_cache, tmp_path):
    images = [str(p) for p in write_block_images(tmp_path / "imgs", 3, side=SIDE)]
    bad = _bad_files(tmp_path / "imgs" / "bad")
    encoder = _encoder()
    assert ImageIndex.will_fit(tmp_path / "db", encoder)
    with ImageIndex.create(tmp_path / "db", encoder, fit_sources=images + bad, on_error="skip") as index:
        assert sorted(index.failures()) == bad and encoder.fit_seconds_ > 0
        assert sorted(index.codes.attributes["failed"]) == sorted(f"bad/{os.path.basename(p)}" for p in bad)
        report = index.add(images + bad, progress=False)  # recorded: not retried
        assert (report.added, report.skipped, report.recorded_bad, report.failed) == (3, 0, 3, [])
        assert not ImageIndex.will_fit(tmp_path / "db", encoder)
        # ids by key or path, repeats and absent keys named; export of those codes
        assert index.ids_of(["img01.png", images[2]]).tolist() == [1, 2]
        with pytest.raises(UsageError, match="more than once"):
            index.ids_of(["img01.png", images[1]])
        with pytest.raises(UsageError, match="not in the index"):
            index.ids_of(["bad/empty.jpg"])
        assert index.export(tmp_path / "two.xlc", ["img00.png", "img02.png"]) == 2
        exported = Codes.load(tmp_path / "two.xlc")
        assert exported.keys == ["img00.png", "img02.png"]
        results, _ = index.search_codes(exported, top=1)
        assert [hits[0].key for hits in results] == ["img00.png", "img02.png"]
    from crosslayer.images import ImageError

    with pytest.raises(ImageError, match="/bad/.*not a recognised image format"):
        ImageIndex.create(tmp_path / "db2", _encoder(), fit_sources=images + bad, on_error="raise")
    assert not (tmp_path / "db2").exists()
