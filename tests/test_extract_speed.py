"""Extraction speed pieces: per-stage seconds (the encoder path and `index build --profile`), onnxruntime's
non-spinning threads (same outputs), JPEG draft decoding (reduced scale, never below the side) and the int8
precision (quantised backbone saved with the encoder, its codes never mixed with fp32 codes)."""

import numpy as np
import pytest

from _cli import run_cli
from _images import write_block_images
from _cli import ok
from test_cli_commands import SIDE, TINY

from crosslayer.errors import UsageError
from crosslayer.images import ImageError, load_image, prepare
from crosslayer.stage_times import STAGES, WORKER_STAGES, StageTimes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _jpeg(path, height, width, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((height // 8, width // 8, 1), np.uint8))
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_stage_times_sum_per_stage_and_refuse_unknown_stages():
    times = StageTimes()
    times.add("decode", 0.5)
    times.add("decode", 0.25)
    with times.timing("inference"):
        pass
    times.count(3)
    seconds = times.seconds()
    assert seconds["decode"] == 0.75 and seconds["inference"] >= 0.0 and set(seconds) == set(STAGES)
    with pytest.raises(KeyError, match="stage"):
        times.add("no-such-stage", 1.0)
    table = times.table(wall_seconds=2.0)
    assert all(stage in table for stage in STAGES) and "wall" in table and "250.0" in table  # 0.75 s / 3 images
    times.reset()
    assert times.images == 0 and sum(times.seconds().values()) == 0.0


def test_draft_decodes_large_jpegs_at_a_reduced_scale_never_below_the_side(tmp_path):
    large = _jpeg(tmp_path / "large.jpg", 800, 640)
    assert load_image(large).shape == (800, 640, 3)
    assert load_image(large, draft_side=300).shape == (400, 320, 3)  # 1/2: 1/4 would go below 300
    assert load_image(large, draft_side=100).shape == (200, 160, 3)  # 1/4 (1/8 would give 80 < 100)
    assert load_image(large, draft_side=321).shape == (800, 640, 3)  # under twice the side: decoded in full
    png = tmp_path / "large.png"
    from PIL import Image

    Image.open(large).save(png)
    assert load_image(png, draft_side=100).shape == (800, 640, 3)  # not a JPEG: no draft
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(UsageError, match="draft_side"):
            load_image(large, draft_side=bad)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg", draft_side=64)


def test_prepare_with_draft_is_close_to_the_full_decode_and_records_its_stages(tmp_path):
    large = _jpeg(tmp_path / "large.jpg", 1024, 1024, seed=1)
    times = StageTimes()
    full = prepare(large, 128, "square", MEAN, STD, stage_times=times)
    drafted = prepare(large, 128, "square", MEAN, STD, draft=True)
    assert full.shape == drafted.shape == (3, 128, 128)
    # blocks of 128 pixels downscaled 8x: the two decodes differ only near block edges and by JPEG rounding
    assert np.median(np.abs(full - drafted)) < 0.05 and not np.array_equal(full, drafted)
    # resize and normalise are one pass of the fused kernel: its seconds are under resize (stage_times.py)
    assert all(times.seconds()[stage] > 0 for stage in WORKER_STAGES if stage != "normalise")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    return write_block_images(root / "photos", 6, side=SIDE)


def test_encoder_profile_covers_every_stage_of_a_build(photos, backbone_cache, tmp_path):
    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.extract import extract

    encoder = CrossLayerEncoder(weights="random", side=SIDE, fit_images=6, batch_size=4, threads=1)
    report = extract([str(p) for p in photos], tmp_path / "db", encoder, progress=False)
    seconds = encoder.stage_times_.seconds()
    assert report.done == 6
    assert all(seconds[stage] > 0 for stage in STAGES if stage not in ("decode_wait", "normalise")), seconds
    assert encoder.stage_times_.images == 12  # the PCA fit's pass and the indexing pass


def test_non_spinning_onnxruntime_threads_compute_the_same_outputs(backbone_cache):
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone

    path = export("mobilenet_v2", weights="random")
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    spinning = OnnxBackbone(path, intra_op_threads=2, allow_spinning=True).run(images)
    quiet = OnnxBackbone(path, intra_op_threads=2).run(images)
    assert set(spinning) == set(quiet)
    for name in quiet:
        np.testing.assert_allclose(quiet[name], spinning[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="allow_spinning"):
        OnnxBackbone(path, allow_spinning="no")


def test_encoder_refuses_a_draft_that_is_not_a_boolean():
    from crosslayer.encoder import CrossLayerEncoder

    with pytest.raises(UsageError, match="draft"):
        CrossLayerEncoder(weights="random", side=SIDE, draft="yes")


def test_index_build_profile_and_draft_on_the_command_line(photos, backbone_cache, tmp_path):
    db = tmp_path / "db"
    done = ok(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--profile", "--draft", "--quiet"))
    lines = done.stdout.splitlines()
    assert "indexed 6 images" in done.stdout
    stages = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in STAGES}
    assert set(stages) == set(STAGES)
    seconds = {stage: float(row[1]) for stage, row in stages.items()}
    (wall,) = [float(line.split()[1]) for line in lines if line.startswith("wall")]
    # the table rounds to 1 ms: tiny stages of this tiny run may show 0.00 (the library test checks each is > 0)
    assert all(value >= 0 for value in seconds.values()) and 0 < seconds["inference"] <= wall
    plain = ok(run_cli("index", "build", tmp_path / "plain", "--images", photos[0].parent, *TINY, "--quiet"))
    assert "inference" not in plain.stdout
    # draft decoding changes codes: a build made with it is not resumed without it
    from _cli import one_line_error

    one_line_error(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--quiet"),
                   "draft True (requested False)")


# ---- precision int8 --------------------------------------------------------------------------------------------------

def test_quantize_int8_is_deterministic_and_checks_its_inputs(backbone_cache):
    from crosslayer.backbones.export import export, quantize_int8
    from crosslayer.backbones.runtime import OnnxBackbone

    path = export("mobilenet_v2", weights="random", with_embedding=True)
    inputs = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    model = quantize_int8(path, inputs)
    assert model == quantize_int8(path, inputs)
    quantised, reference = OnnxBackbone(model, intra_op_threads=1), OnnxBackbone(path, intra_op_threads=1)
    assert quantised.model_path == "<in memory>"
    got, want = quantised.run(inputs), reference.run(inputs)
    for name in want:
        assert got[name].shape == want[name].shape
        # int8 is an approximation of the fp32 maps, not another network
        assert np.corrcoef(got[name].ravel(), want[name].ravel())[0, 1] > 0.9, name
    for bad in (inputs.astype(np.float64), inputs[:, :2], inputs[:0]):
        with pytest.raises(UsageError, match="calibration_inputs"):
            quantize_int8(path, bad)


def test_int8_encoder_saves_its_model_and_never_mixes_with_fp32(photos, backbone_cache, tmp_path):
    from crosslayer.encoder import CrossLayerEncoder, EncoderMismatchError, NotFittedError, Pass

    settings = dict(weights="random", side=SIDE, fit_images=6, batch_size=4, threads=1)
    sources = [str(p) for p in photos]
    with pytest.raises(UsageError, match="precision"):
        CrossLayerEncoder(precision="fp16", **settings)
    int8 = CrossLayerEncoder(precision="int8", **settings)
    with pytest.raises(NotFittedError, match="int8"):
        next(iter(int8.activations(sources)))
    int8.fit(sources)
    fp32 = CrossLayerEncoder(**settings).fit(sources)
    assert int8.identity["precision"] == "int8" and "precision" not in fp32.identity
    assert int8.identity_digest != fp32.identity_digest
    codes = int8.encode(sources)
    path = tmp_path / "int8.xle"
    int8.save(path)
    loaded = CrossLayerEncoder.load(path)
    assert loaded.precision == "int8" and loaded.int8_model_ == int8.int8_model_
    again = loaded.encode(sources)
    assert again.identity == codes.identity and np.array_equal(again.signs(), codes.signs())
    with pytest.raises(EncoderMismatchError, match="precision 'int8' \\(requested 'fp32'\\)"):
        CrossLayerEncoder.load_for_resume(path, CrossLayerEncoder(**settings))
    with pytest.raises(UsageError, match="int8 covers"):
        next(iter(loaded.activations(sources, pass_=Pass(taps=("features.18",)))))


def test_index_build_precision_int8_on_the_command_line_refuses_fp32_on_resume(photos, backbone_cache, tmp_path):
    from _cli import one_line_error

    db = tmp_path / "db"
    done = ok(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--precision", "int8", "--quiet"))
    assert "indexed 6 images" in done.stdout
    refused = run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--quiet")
    one_line_error(refused, "precision 'int8' (requested 'fp32')")
    resumed = ok(run_cli("index", "build", db, "--images", photos[0].parent, *TINY, "--precision", "int8", "--quiet"))
    assert "6 already there" in resumed.stdout


def test_normalize_is_the_float32_formula_bit_for_bit():
    from crosslayer.images import normalization, normalize

    rng = np.random.default_rng(3)
    for height, width in ((1, 1), (7, 5), (64, 33)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        scale, offset = normalization(MEAN, STD)
        want = rgb.astype(np.float32) * scale - offset  # what the exported encoder graph computes
        got = normalize(rgb, MEAN, STD)
        assert got.flags.c_contiguous and got.dtype == np.float32
        assert np.array_equal(got, want.transpose(2, 0, 1))
