"""The evaluation harness's pieces on tiny synthetic data: SPM pooling, manifest parsing, row stores, streaming
and popcount Grams, SVM C selection, cross-layer variants, region windows, AConv training and records."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crosslayer import reference
from crosslayer.eval import spm, svm, variants
from crosslayer.eval.aconv import guided_representation, train_guidance
from crosslayer.eval.gram import codes_gram, streaming_gram
from crosslayer.eval.manifest import ManifestError, load_manifest
from crosslayer.eval.methods import MethodConfig
from crosslayer.eval.record import RecordError, read_record, write_record
from crosslayer.eval.regions import region_grid, window_mean
from crosslayer.eval.store import RowStore, StoreError, StoreFormatError
from crosslayer.errors import FormatError

from _tolerances import assert_normalized_within, max_pool_float32_bound


# ---- spatial pyramid pooling -------------------------------------------------------------------------------------

def test_spm_sum_and_max_match_a_hand_computed_example():
    # one image, one channel, 2x2 map:  [[1, 4], [9, 16]]
    maps = np.array([[[[1.0, 4.0], [9.0, 16.0]]]], np.float32)
    summed = spm.spm_pool(maps, levels=(0, 1), pooling="sum")
    # level 0: sum 30 -> sqrt(30); level 1: cells 1, 4, 9, 16 -> 1, 2, 3, 4; then L2 over the 5 values
    expected = np.array([np.sqrt(30), 1, 2, 3, 4])
    np.testing.assert_allclose(summed[0], expected / np.linalg.norm(expected), rtol=1e-6)
    maxed = spm.spm_pool(maps, levels=(0, 1), pooling="max")
    expected = np.array([16, 1, 4, 9, 16.0])
    np.testing.assert_allclose(maxed[0], expected / np.linalg.norm(expected), rtol=1e-6)


def test_spm_signed_sqrt_keeps_sign_and_cells_cover_odd_maps():
    maps = -np.ones((1, 2, 5, 5), np.float32)
    out = spm.spm_pool(maps, levels=(0, 2), pooling="sum")
    assert out.shape == (1, spm.spm_dim(2, (0, 2)))
    assert (out < 0).all()  # every 4x4 cell of a 5x5 map is non-empty
    edges = spm.cell_edges(5, 4)
    assert edges[0] == 0 and edges[-1] == 5 and (np.diff(edges) >= 1).all()


def test_spm_rejects_bad_pooling_and_levels():
    with pytest.raises(ValueError, match="pooling"):
        spm.spm_pool(np.zeros((1, 1, 2, 2)), pooling="mean")
    with pytest.raises(ValueError, match="levels"):
        spm.spm_pool(np.zeros((1, 1, 2, 2)), levels=(-1,))


# ---- manifests ---------------------------------------------------------------------------------------------------

def _write(path, text):
    path.write_text(text)
    return path


def test_manifest_parses_relative_and_absolute_paths(tmp_path):
    _write(tmp_path / "manifest.csv", f"path,label,split\na.jpg,cat,train\n{tmp_path}/b.jpg,dog,test\nc.jpg,dog,train\n\n")
    data = load_manifest(tmp_path)
    assert data.paths == (str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), str(tmp_path / "c.jpg"))
    assert data.classes == ("cat", "dog")
    assert data.labels.tolist() == [0, 1, 1]
    assert data.indices("train").tolist() == [0, 2]


def test_dataset_key_does_not_depend_on_how_the_folder_is_spelled(tmp_path, monkeypatch):
    """The extraction cache is keyed by the dataset: `data`, `./data/` and an absolute path must share it."""
    from crosslayer.eval.extract import dataset_key

    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "manifest.csv", "path,label,split\na.jpg,cat,train\nb.jpg,dog,test\n")
    monkeypatch.chdir(tmp_path)
    keys = {dataset_key(load_manifest(spelling)) for spelling in ("data", "./data/", tmp_path / "data",
                                                                  "data/../data/manifest.csv")}
    assert len(keys) == 1
    assert load_manifest("data").paths[0] == str((tmp_path / "data" / "a.jpg").resolve())


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("path,label,split\na.jpg,cat,train\nb.jpg,dog,holdout\n", 3, "split"),
        ("path,label,split\na.jpg,cat,train\nb.jpg,dog\n", 3, "fields"),
        ("path,label,split\n,cat,train\n", 2, "empty path"),
        ("path,label,split\na.jpg,,train\n", 2, "empty label"),
        ("path,name,split\na.jpg,cat,train\n", 1, "lacks"),
    ],
)
def test_manifest_errors_name_the_file_and_line(tmp_path, text, line, what):
    manifest = _write(tmp_path / "manifest.csv", text)
    with pytest.raises(ManifestError, match=f"{manifest}:{line}:.*{what}"):
        load_manifest(tmp_path)


def test_manifest_needs_train_and_test(tmp_path):
    _write(tmp_path / "manifest.csv", "path,label,split\na.jpg,cat,train\n")
    with pytest.raises(ManifestError, match="test"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "elsewhere")


def test_subset_per_class_limits_each_class_and_split(tmp_path):
    lines = ["path,label,split"] + [f"{c}{i}.jpg,{c},{s}" for c in "ab" for s in ("train", "test") for i in range(5)]
    _write(tmp_path / "manifest.csv", "\n".join(lines) + "\n")
    small = load_manifest(tmp_path).subset_per_class(2)
    assert len(small) == 8
    for split in ("train", "test"):
        assert np.bincount(small.labels[small.indices(split)]).tolist() == [2, 2]


# ---- row stores --------------------------------------------------------------------------------------------------

def test_row_store_resumes_and_refuses_another_key(tmp_path, rng):
    rows = rng.standard_normal((7, 3)).astype(np.float16)
    store = RowStore(tmp_path / "s", "k1", 7, (3,), "float16")
    store.append(0, rows[:4])
    store.close()
    again = RowStore(tmp_path / "s", "k1", 7, (3,), "float16")
    assert again.done == 4 and not again.complete
    with pytest.raises(ValueError, match="start"):
        again.append(2, rows[2:])
    again.append(4, rows[4:])
    np.testing.assert_array_equal(again.read(), rows)
    with pytest.raises(StoreError, match="expected"):
        RowStore(tmp_path / "s", "k2", 7, (3,), "float16")


def test_row_store_files_are_checked(tmp_path, rng):
    store = RowStore(tmp_path / "s", "k", 4, (3,), "float16")
    store.append(0, rng.standard_normal((4, 3)).astype(np.float16))
    store.close()
    data = tmp_path / "s" / "rows.bin"
    damaged = bytearray(data.read_bytes())
    damaged[5] ^= 1
    data.write_bytes(bytes(damaged))
    with pytest.raises(StoreFormatError, match="rows.bin: checksum mismatch"):
        RowStore(tmp_path / "s", "k", 4, (3,), "float16").read()
    meta = tmp_path / "s" / "meta.json"
    body = json.loads(meta.read_text())
    for text, message in ((json.dumps({**body, "done": 2}), "checksum"), (json.dumps({**body, "version": 1}),
                                                                           "version 1"), ("{", "not valid JSON")):
        meta.write_text(text)
        with pytest.raises(StoreFormatError, match=message) as info:
            RowStore(tmp_path / "s", "k", 4, (3,), "float16")
        assert isinstance(info.value, FormatError)


# ---- Grams -------------------------------------------------------------------------------------------------------

@given(n=st.integers(1, 9), dim=st.integers(1, 70), block=st.integers(4, 600), seed=st.integers(0, 2**16))
def test_streaming_gram_equals_the_dense_gram(n, dim, block, seed):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim)).astype(np.float16)
    columns = rng.permutation(n)[: rng.integers(0, n + 1)]
    got = streaming_gram(rows, columns, block_bytes=block)
    dense = rows.astype(np.float64) @ rows.astype(np.float64)[columns].T
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-4)  # float32 accumulation of float16 rows


def test_streaming_gram_reads_a_memmap_store(tmp_path, rng):
    store = RowStore(tmp_path / "g", "g", 10, (2, 33), "float16")
    values = rng.standard_normal((10, 2, 33)).astype(np.float16)
    store.append(0, values)
    flat = values.reshape(10, -1).astype(np.float64)
    np.testing.assert_allclose(streaming_gram(store.read().reshape(10, -1), [3, 1, 8], block_bytes=600),
                               flat @ flat[[3, 1, 8]].T, rtol=1e-5, atol=1e-4)


def test_codes_gram_equals_the_numpy_reference(rng):
    local = rng.standard_normal((5, 70, 3, 2)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((5, 4, 3, 2)), 0).astype(np.float32)
    guidance[1, 2] = 0  # an all-zero channel
    bits = reference.encode_codes(local, guidance)
    signs = reference.unpack_ternary(bits, 70).reshape(5, -1).astype(np.int64)
    np.testing.assert_array_equal(codes_gram(bits, 70, [4, 0]), signs @ signs[[4, 0]].T)


def test_codes_gram_scans_the_bits_once(monkeypatch, rng):
    import crosslayer.codes

    scans = []
    real = crosslayer.codes.invalid_bits_reason
    monkeypatch.setattr(crosslayer.codes, "invalid_bits_reason", lambda *args: scans.append(1) or real(*args))
    bits = reference.pack_ternary(rng.integers(-1, 2, (6, 3, 70)).astype(np.int8))
    codes_gram(bits, 70, [5, 1, 1])
    assert len(scans) == 1  # the chosen columns are rows of the checked codes


# ---- SVM ---------------------------------------------------------------------------------------------------------

def _blobs(rng, per_class, classes, spread):
    centres = rng.standard_normal((classes, 6)) * 4
    x = np.concatenate([centres[c] + spread * rng.standard_normal((per_class, 6)) for c in range(classes)])
    return x, np.repeat(np.arange(classes), per_class)


def test_select_c_picks_the_best_cross_validated_c_on_a_separable_set():
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    rng = np.random.default_rng(3)
    x, y = _blobs(rng, 12, 3, 0.3)
    kernel = x @ x.T / np.mean(np.sum(x * x, axis=1))
    grid = (1e-4, 1e-2, 1.0, 100.0)
    best, scores = svm.select_c(kernel, y, grid, folds=3, seed=0)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    for c in grid:
        independent = cross_val_score(SVC(kernel="precomputed", C=c), kernel, y, cv=folds).mean()
        assert scores[c] == pytest.approx(independent)
    assert scores[best] == max(scores.values()) == 1.0
    assert best == min(c for c in grid if scores[c] == 1.0)  # ties go to the smaller C


def test_train_and_test_is_perfect_on_separable_blobs_and_scales_kernels():
    rng = np.random.default_rng(4)
    x, y = _blobs(rng, 10, 3, 0.2)
    test_x, test_y = x[1::2], y[1::2]
    train_x, train_y = x[::2] * 1e3, y[::2]  # a large scale: the kernel scale must absorb it
    result = svm.train_and_test(train_x @ train_x.T, train_y, (test_x * 1e3) @ train_x.T, test_y, folds=2)
    assert result["accuracy"] == 1.0 and result["mean_per_class_accuracy"] == 1.0
    assert result["kernel_scale"] == pytest.approx(np.mean(np.sum(train_x**2, axis=1)))


def test_select_c_needs_two_images_per_class():
    with pytest.raises(ValueError, match="at least 2"):
        svm.select_c(np.eye(3), np.array([0, 1, 1]))


def test_mean_per_class_accuracy_weights_classes_equally():
    truth = np.array([0, 0, 0, 1])
    assert svm.mean_per_class_accuracy(truth, np.array([0, 0, 0, 0])) == pytest.approx(0.5)


# ---- cross-layer variants ----------------------------------------------------------------------------------------

U32 = reference.FLOAT32_UNIT_ROUNDOFF


@given(n=st.integers(0, 3), dt=st.integers(1, 9), dk=st.integers(1, 5), positions=st.integers(1, 7),
       seed=st.integers(0, 2**32 - 1))
def test_sum_variant_matches_the_reference_and_ablations_change_it(n, dt, dk, positions, seed):
    """Tolerances: the float32 pooled values err by at most reference.float32_pool_bound; the normalised ones as
    `assert_normalized_within` derives, with the float32 norm and division (Dt + 2) u |v| and the rounded square root
    2u |v| (first order). Squaring the rounded square root back in float64 errs by 2u + u^2 < 3u relative."""
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, dt, positions, 1)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, positions, 1)), 0).astype(np.float32)
    pca = tuple(part.astype(np.float32) for part in reference.pca_fit(rng.standard_normal((20, dt))))
    pooled = reference.cross_layer_pool(local, guidance, pca)
    bound = reference.float32_pool_bound(local, guidance, pca)
    raw = variants.cross_layer_sum(local, guidance, pca, l2=False, power=False).reshape(n, dk, dt)
    assert np.all(np.abs(raw - pooled) <= bound)

    full = variants.cross_layer_sum(local, guidance, pca).reshape(n, dk, dt).astype(np.float64)
    assert_normalized_within(full, pooled, bound, epilogue_units=dt + 4)

    no_power = variants.cross_layer_sum(local, guidance, pca, power=False).reshape(n, dk, dt)
    assert np.all(np.abs(full * np.abs(full) - no_power) <= 3 * U32 * np.abs(no_power))  # power undone by x|x|
    if n and (raw != 0).any():
        assert not np.allclose(raw, full)


@given(n=st.integers(0, 3), dt_in=st.integers(1, 9), dk=st.integers(1, 5), positions=st.integers(1, 7),
       use_pca=st.booleans(), small_chunks=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_max_variant_matches_the_reference(n, dt_in, dk, positions, use_pca, small_chunks, seed):
    """Tolerance: `max_pool_float32_bound` derives it."""
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((n, dt_in, positions, 1)).astype(np.float32)
    guidance = np.maximum(rng.standard_normal((n, dk, positions, 1)), 0).astype(np.float32)
    guidance[:, rng.integers(0, dk)] = 0  # an all-zero channel pools to exactly 0
    pca = None
    if use_pca:
        mean, proj = reference.pca_fit(rng.standard_normal((20, dt_in)) + 2, rng.integers(1, dt_in + 1))
        pca = (mean.astype(np.float32), proj.astype(np.float32))
    dt = dt_in if pca is None else pca[1].shape[1]
    with pytest.MonkeyPatch.context() as patch:
        if small_chunks:  # a few channels per chunk: the chunk loop runs, and its last chunk may be partial
            patch.setattr(variants, "MAX_CHUNK_ELEMENTS", 8)
        got = variants.cross_layer_max(local, guidance, pca, l2=False, power=False).reshape(n, dk, dt)
    expected = reference.cross_layer_max_pool(local, guidance, pca)
    tolerance = max_pool_float32_bound(local, guidance, pca)
    assert got.dtype == np.float32 and np.all(np.abs(got - expected) <= tolerance)
    assert not got[guidance.reshape(n, dk, positions).max(axis=2, initial=0) == 0].any()


def test_ablation_flags_change_the_method_key():
    keys = {MethodConfig("crosslayer", **flags).key() for flags in ({}, {"pca": False}, {"l2": False}, {"power": False})}
    assert len(keys) == 4
    assert MethodConfig("global", pca=False).key() == MethodConfig("global").key()  # irrelevant to global
    with pytest.raises(ValueError, match="method"):
        MethodConfig("fisher")
    with pytest.raises(ValueError, match="spm_layer"):
        MethodConfig("sum-spm", spm_layer="t2")


def test_default_keys_are_those_of_existing_stores():
    # the names of stores written before seed and fit_images were keyed: they must stay reusable
    assert MethodConfig("global").key() == "global-3b3a2739ea5a"
    assert MethodConfig("crosslayer").key() == "crosslayer-3266f3c0bb58"
    assert MethodConfig("crosslayer-sign").key() == "crosslayer-sign-b9cad8758711"
    assert MethodConfig("sum-spm", spm_layer="t").key() == "sum-spm-affaca13b757"
    assert MethodConfig("aconv-fast").key() == "aconv-fast-e8e98ab785f7"


def test_seed_and_fit_images_change_the_key_where_they_change_the_rows():
    default = MethodConfig("crosslayer")
    assert MethodConfig("crosslayer", fit_images=64).key() != default.key()
    assert MethodConfig("crosslayer", seed=1).key() != default.key()
    assert MethodConfig("aconv-fast", fit_images=64).key() != MethodConfig("aconv-fast").key()
    # no PCA, no fitted sample; the seed still counts (it seeds "random" weights)
    assert MethodConfig("crosslayer", pca=False, fit_images=64).key() == MethodConfig("crosslayer", pca=False).key()
    assert MethodConfig("global", seed=1).key() != MethodConfig("global").key()


@pytest.mark.parametrize("options,name", [
    (dict(aconv_stride=0), "aconv_stride"),
    (dict(aconv_pca_dim=0), "aconv_pca_dim"),
    (dict(aconv_filters=0), "aconv_filters"),
    (dict(aconv_epochs=-1), "aconv_epochs"),
    (dict(aconv_epochs=0), "aconv_epochs"),
    (dict(aconv_lr=-1.0), "aconv_lr"),
    (dict(aconv_lr=float("nan")), "aconv_lr"),
    (dict(aconv_region=0), "aconv_region"),
    (dict(aconv_side=0), "aconv_side"),
    (dict(aconv_region_side=0), "aconv_region_side"),
    (dict(fit_images=0), "fit_images"),
    (dict(seed=-1), "seed"),
])
def test_method_config_rejects_bad_aconv_and_sampling_options(options, name):
    with pytest.raises(ValueError, match=name):
        MethodConfig("aconv", **options)


def test_aconv_pca_dim_must_fit_the_embedding():
    from crosslayer.backbones import get_backbone

    spec = get_backbone("mobilenet_v2")
    MethodConfig("aconv-fast", aconv_pca_dim=1280).check_backbone(spec)
    with pytest.raises(ValueError, match="aconv_pca_dim.*1280"):
        MethodConfig("aconv-fast", aconv_pca_dim=1281).check_backbone(spec)


@pytest.mark.parametrize("c_grid,folds,name", [((1.0,), 1, "folds"), ((1.0,), 2.5, "folds"), ((), 3, "c_grid"),
                                                ((1.0, 0.0), 3, "c_grid"), ((float("inf"),), 3, "c_grid")])
def test_svm_options_are_checked(c_grid, folds, name):
    with pytest.raises(ValueError, match=name):
        svm.check_svm_options(c_grid, folds)


# ---- regions and AConv -------------------------------------------------------------------------------------------

def test_window_mean_matches_explicit_windows(rng):
    maps = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    got = window_mean(maps, 4, 1)
    assert got.shape == (2, 9, 3)
    for r in range(3):
        for c in range(3):
            np.testing.assert_allclose(got[:, r * 3 + c], maps[:, :, r : r + 4, c : c + 4].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert region_grid(512, 128, 32) == 13


def test_aconv_training_reduces_the_loss_and_guides_pooling():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 8)
    regions = rng.standard_normal((24, 9, 5)).astype(np.float32)
    regions[np.arange(24), 0, labels] += 4.0  # one region carries the class
    model, losses = train_guidance(regions, labels, classes=3, filters=6, epochs=15, lr=0.05, batch_size=8)
    assert losses[-1] < 0.5 * losses[0]
    rep = guided_representation(model, regions[:4])
    assert rep.shape == (4, 6 * 5) and np.isfinite(rep).all()


# ---- records -----------------------------------------------------------------------------------------------------

def test_record_round_trip_and_version_check(tmp_path):
    record = {"method": "crosslayer", "accuracy": 0.875, "seconds": {"gram": 1.5}}
    path = write_record(tmp_path / "r.json", record)
    loaded = read_record(path)
    assert loaded["accuracy"] == 0.875 and loaded["seconds"] == {"gram": 1.5} and loaded["version"] == 2
    data = json.loads(path.read_text())
    for change, message in (({"version": 1}, "version 1"), ({"accuracy": 0.9}, "checksum")):
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(RecordError, match=message) as info:
            read_record(path)
        assert isinstance(info.value, FormatError)
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_record(tmp_path / "x.json")


def test_reproduce_classification_notes_name_the_groups_it_did_not_run():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_classification.py"
    spec = importlib.util.spec_from_file_location("reproduce_classification", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    note = script.not_run_note(script.parse_groups(script.DEFAULT_GROUPS))
    assert "CNN-Jitter" in note and "exact AConv" in note and "Table 7" not in note
    assert "Table 7" in script.not_run_note(script.parse_groups("jitter"))
    with pytest.raises(SystemExit, match="--groups"):
        script.parse_groups("ablations,jiter")
