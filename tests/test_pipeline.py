"""The one encoder path: bad images in fit and encode, bounded sides and batches, fit progress and time, Pass hooks,
and the evaluation passes running through the encoder."""

import io
import warnings

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from _images import write_block_images  # noqa: E402

from crosslayer import batches as batches_module  # noqa: E402
from crosslayer.encoder import CrossLayerEncoder, FitError, Pass  # noqa: E402
from crosslayer.errors import UsageError  # noqa: E402
from crosslayer.images import MAX_SIDE, BadImagesError, ImageError, check_side  # noqa: E402

SIDE = 64
# Pillow warns on opening the oversized file before crosslayer refuses it by its header
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def _encoder(**options):
    return CrossLayerEncoder(side=SIDE, weights="random", threads=1, **{"pca_dim": 8, "batch_size": 2, **options})


def _bad_files(folder):
    """One file of every kind of bad image a user meets, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    found["empty"] = folder / "empty.jpg"
    found["empty"].write_bytes(b"")
    found["text"] = folder / "notes.jpg"
    found["text"].write_text("not an image at all\n")
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, "JPEG")
    found["truncated"] = folder / "truncated.jpg"
    found["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # macOS AppleDouble companion: a binary resource header, not image data
    found["appledouble"] = folder / "._photo.jpg"
    found["appledouble"].write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    # over the decompression-bomb limit (100 megapixels) by its header; a 1-bit image keeps the file tiny
    found["oversized"] = folder / "huge.png"
    Image.new("1", (12_000, 9_000)).save(found["oversized"])
    return found


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    return [str(p) for p in write_block_images(tmp_path_factory.mktemp("good"), 6, side=48)]


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "appledouble", "oversized"])
def test_fit_skips_each_kind_of_bad_image_and_reports_it(backbone_cache, good_files, bad_files, kind):
    bad = str(bad_files[kind])
    encoder = _encoder().fit([good_files[0], bad, *good_files[1:4]], on_error="skip")
    assert [path for path, _ in encoder.fit_failures_] == [bad]
    # fitted on the good ones only: the same PCA as a fit without the bad file
    clean = _encoder().fit([good_files[0], *good_files[1:4]])
    for mine, theirs in zip(encoder.pca_, clean.pca_):
        np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ImageError, match="huge.png|empty.jpg|notes.jpg|truncated.jpg|._photo.jpg"):
        _encoder().fit([good_files[0], bad, *good_files[1:4]])


def test_every_bad_image_is_reported_in_one_fit_and_one_encode(backbone_cache, good_files, bad_files):
    bad = [str(p) for p in bad_files.values()]
    mixed = [good_files[0], *bad[:2], good_files[1], *bad[2:], good_files[2]]
    encoder = _encoder().fit(mixed, on_error="skip")
    assert sorted(path for path, _ in encoder.fit_failures_) == sorted(bad)
    reasons = dict(encoder.fit_failures_)
    assert "pixels" in reasons[str(bad_files["oversized"])] and "decode" in reasons[str(bad_files["truncated"])]
    seen, skipped = [], []
    for batch in encoder.activations(mixed, on_error="skip"):
        seen += batch.sources
        skipped += [error.path for _, error in batch.errors]
    assert seen == good_files[:3] and sorted(skipped) == sorted(bad)


def test_fit_with_too_few_good_images_is_a_clear_error_naming_them(backbone_cache, good_files, bad_files):
    bad = [str(bad_files["empty"]), str(bad_files["text"])]
    with pytest.raises(FitError, match="1 usable image.*empty.jpg.*notes.jpg") as caught:
        _encoder().fit([good_files[0], *bad], on_error="skip")
    assert [path for path, _ in caught.value.failures] == bad


def test_side_is_bounded_and_batches_fit_the_memory_budget(backbone_cache, good_files, monkeypatch):
    for side in (100_000, MAX_SIDE + 1, 16):
        with pytest.raises(UsageError, match="side"):
            check_side(side)
        with pytest.raises(UsageError, match="side"):
            CrossLayerEncoder(side=side)
    assert check_side(MAX_SIDE) == MAX_SIDE
    encoder = _encoder(batch_size=5)
    per_input = encoder.spec.bytes_per_input(SIDE)
    monkeypatch.setattr(batches_module, "BATCH_MEMORY_BUDGET", 2 * per_input)
    sizes = [len(batch.positions) for batch in encoder.activations(good_files)]
    assert sizes == [2, 2, 2]  # lowered from 5 to what the budget holds
    monkeypatch.setattr(batches_module, "BATCH_MEMORY_BUDGET", per_input - 1)
    with pytest.raises(UsageError, match="memory budget"):
        encoder.activations(good_files)


def test_fit_shows_progress_counts_its_time_and_warns_when_too_small(backbone_cache, good_files, capsys):
    encoder = _encoder(pca_dim=None)
    with pytest.warns(UserWarning, match="full PCA rotation of 320 channels"):
        encoder.fit(good_files, progress=True)
    assert "fit PCA" in capsys.readouterr().err
    assert encoder.fit_seconds_ > 0
    with pytest.warns(UserWarning, match="fit: 6 images for 8 PCA components.*at most 1"):
        _encoder(pca_dim=8).fit(good_files)  # fewer than 4 images a component: the fit-set trap (issue 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = _encoder(pca_dim=1).fit(good_files, progress=False)
        # a sample of a larger set: most of the set is encoded with a PCA fitted on other images
        _encoder(pca_dim=8, fit_images=2).fit(good_files)
    assert quiet.fit_failures_ == [] and "fit PCA" not in capsys.readouterr().err


def test_a_pass_feeds_several_inputs_per_image_and_reduces_them(backbone_cache, good_files):
    """Two inputs per image (the image and its mirror), reduced to their mean embedding: the same as running each."""
    from crosslayer.images import load_image, normalize, resize

    encoder = _encoder()
    spec = encoder.spec

    def both(source):
        image = resize(load_image(source), SIDE)
        return np.stack([normalize(image, spec.mean, spec.std), normalize(np.ascontiguousarray(image[:, ::-1]),
                                                                          spec.mean, spec.std)])

    step = Pass(prepare=both, reduce=lambda outputs: {"embedding": outputs["embedding"].mean(axis=1)},
                taps=("features.18",), inputs_per_image=2, max_inputs=3)
    rows = np.concatenate([b.outputs["embedding"] for b in encoder.activations(good_files[:3], pass_=step)])
    runner = encoder._backbone(("features.18",), True)
    expected = np.stack([runner.run(both(path))["embedding"].mean(axis=0) for path in good_files[:3]])
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def dataset_with_bad_images(tmp_path):
    root = tmp_path / "set"
    paths = write_block_images(root, 8, side=48)
    lines = ["path,label,split"] + [f"{p.name},c{i % 2},{'train' if i < 6 else 'test'}" for i, p in enumerate(paths)]
    bad = _bad_files(root)
    lines.insert(4, f"{bad['truncated'].name},c0,test")  # after three good images
    lines.append(f"{bad['text'].name},c1,test")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root, [bad["truncated"], bad["text"]]


def test_eval_pass_names_every_bad_image_and_keeps_the_rows_before_them(backbone_cache, dataset_with_bad_images,
                                                                        tmp_path):
    from crosslayer.eval.extract import extract
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.methods import MethodConfig

    root, bad = dataset_with_bad_images
    dataset = load_manifest(root)
    config = MethodConfig("global", fit_images=4)
    with pytest.raises(BadImagesError) as caught:
        extract(dataset, [config], side=SIDE, cache_root=tmp_path / "cache", weights="random", batch_size=2,
                fit_images=4, progress=False)
    assert sorted(path for path, _ in caught.value.failures) == sorted(map(str, bad))
    assert "truncated.jpg" in str(caught.value) and "notes.jpg" in str(caught.value)
    from crosslayer.eval.extract import open_store, pass_directory

    directory = pass_directory(tmp_path / "cache", dataset, "mobilenet_v2", SIDE, "random")
    store = open_store(directory, config, CrossLayerEncoder().spec, len(dataset))
    assert store.done == 3  # the rows before the first bad image are kept for the resume


def test_eval_pca_fit_sample_with_a_bad_image_names_every_bad_image(backbone_cache, dataset_with_bad_images, tmp_path):
    from crosslayer.eval.extract import extract
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.methods import MethodConfig

    root, bad = dataset_with_bad_images
    lines = (root / "manifest.csv").read_text().replace(f"{bad[0].name},c0,test", f"{bad[0].name},c0,train")
    (root / "manifest.csv").write_text(lines)
    dataset = load_manifest(root)
    config = MethodConfig("crosslayer-sign", fit_images=20, layers=("features.16", "features.17"))
    with pytest.raises(BadImagesError) as caught:
        extract(dataset, [config], side=SIDE, cache_root=tmp_path / "cache", weights="random", batch_size=2,
                fit_images=20, progress=False)
    assert sorted(path for path, _ in caught.value.failures) == sorted(map(str, bad))
    # no PCA was cached from a sample missing an image
    assert not list((tmp_path / "cache").rglob("pca-*.npz"))


def test_eval_pass_counts_its_pca_fit_in_the_methods_that_use_it(backbone_cache, tmp_path):
    from crosslayer.eval.extract import extract
    from crosslayer.eval.manifest import load_manifest
    from crosslayer.eval.methods import MethodConfig

    paths = write_block_images(tmp_path / "set", 6, side=48)
    lines = ["path,label,split"] + [f"{p.name},c{i % 2},{'train' if i < 4 else 'test'}" for i, p in enumerate(paths)]
    (tmp_path / "set" / "manifest.csv").write_text("\n".join(lines) + "\n")
    sign, plain = MethodConfig("crosslayer-sign", fit_images=4), MethodConfig("global", fit_images=4)
    stores = extract(load_manifest(tmp_path / "set"), [sign, plain], side=SIDE, cache_root=tmp_path / "cache",
                     weights="random", batch_size=4, fit_images=4, progress=False)
    assert stores[sign].info["seconds"]["pca"] > 0 and "pca" not in stores[plain].info["seconds"]
    assert stores[sign].info["seconds"]["network"] > 0


def test_the_side_bounds_have_one_home():
    """`crosslayer.config` defines MIN_SIDE/MAX_SIDE; no other module sets its own copy that could drift apart."""
    import re
    from pathlib import Path

    import crosslayer

    package = Path(crosslayer.__file__).parent
    homes = sorted(path.relative_to(package).as_posix() for path in package.rglob("*.py")
                   if re.search(r"^(MIN|MAX)_SIDE\s*=", path.read_text(), re.MULTILINE))
    assert homes == ["config.py"]
