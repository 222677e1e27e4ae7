"""SCFV, the Table 5 variants (FC-FC, Conv-FC on fast regions) and the normalised-kernel-sum combination: pieces
against `crosslayer.reference` on random inputs, then end to end on a tiny synthetic set with an untrained network."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslayer import reference
from crosslayer.errors import CrossLayerError, FormatError, UsageError
from crosslayer.eval import combine, cross_fc, scfv
from crosslayer.eval.methods import MethodConfig
from _images import write_two_colour_set  # noqa: E402


def _unit_rows(rng, k, d):
    atoms = rng.normal(size=(k, d))
    return (atoms / np.linalg.norm(atoms, axis=1, keepdims=True)).astype(np.float32)


# ---- SCFV pieces -------------------------------------------------------------------------------------------------

def test_scfv_of_a_hand_computed_example():
    # B = identity (2 atoms in 2-d), one image with one position x = (3, 0.05), alpha 0.1:
    # the lasso code soft-thresholds x: u = (2.9, 0); residual x - uB = (0.1, 0.05); G_0 = 2.9 * (0.1, 0.05), G_1 = 0
    local = np.array([3.0, 0.05], np.float32).reshape(1, 2, 1, 1)
    out = scfv.scfv_encode(local, None, np.eye(2, dtype=np.float32), 1.0, 0.1)
    fisher = np.array([0.29, 0.145, 0.0, 0.0])
    expected = np.sqrt(fisher) / np.linalg.norm(np.sqrt(fisher))
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(2, 6), d=st.integers(2, 7), alpha=st.sampled_from([0.02, 0.1, 0.3]))
def test_fista_codes_are_the_lasso_solution(seed, k, d, alpha):
    rng = np.random.default_rng(seed)
    atoms = _unit_rows(rng, k, d)
    features = rng.normal(size=(5, d))
    codes = scfv.sparse_codes(features, atoms, alpha, iterations=5000, tolerance=1e-12)
    for x, u in zip(features, codes):
        np.testing.assert_allclose(u, reference.lasso_code(x, atoms, alpha), atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), with_pca=st.booleans(), scale=st.sampled_from([0.5, 1.0, 7.0]))
def test_scfv_encode_matches_the_reference(seed, with_pca, scale):
    rng = np.random.default_rng(seed)
    local = rng.normal(size=(2, 4, 3, 2)).astype(np.float32)
    pca = None
    if with_pca:
        mean = rng.normal(size=4).astype(np.float32)
        projection = np.linalg.qr(rng.normal(size=(4, 4)))[0].astype(np.float32)
        pca = (mean, projection)
    atoms = _unit_rows(rng, 5, 4)
    got = scfv.scfv_encode(local, pca, atoms, scale, 0.1)
    assert got.shape == (2, 5 * 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference.scfv(local, pca, atoms, scale, 0.1), atol=2e-4)


def test_learned_dictionary_has_unit_atoms_is_seeded_and_refuses_too_few_rows():
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(400, 6)) * 5).astype(np.float32)
    atoms, scale = scfv.learn_dictionary(features, atoms=8, alpha=0.1, seed=3)
    assert atoms.shape == (8, 6) and atoms.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale, np.sqrt(np.mean(np.sum(features.astype(np.float64) ** 2, axis=1))), rtol=1e-6)
    again, _ = scfv.learn_dictionary(features, atoms=8, alpha=0.1, seed=3)
    np.testing.assert_array_equal(atoms, again)
    with pytest.raises(UsageError, match="features"):
        scfv.learn_dictionary(features[:5], atoms=8)
    with pytest.raises(UsageError, match="features"):
        scfv.learn_dictionary(np.zeros((20, 6), np.float32), atoms=8)


def test_dictionary_file_round_trips_and_refuses_another_fit_or_damage(tmp_path):
    atoms = _unit_rows(np.random.default_rng(1), 3, 4)
    path = scfv.dictionary_path(tmp_path, "scfv-abc", 16, 2)
    scfv.write_dictionary(path, atoms, 2.5, 16, 2)
    got, scale = scfv.read_dictionary(path, 16, 2)
    np.testing.assert_array_equal(got, atoms)
    assert scale == 2.5
    with pytest.raises(scfv.DictionaryFormatError, match="fit_images"):
        scfv.read_dictionary(path, 16, 3)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        scfv.read_dictionary(path, 16, 2)


@pytest.mark.parametrize("options,name", [(dict(scfv_atoms=0), "scfv_atoms"), (dict(scfv_alpha=-1.0), "scfv_alpha"),
                                          (dict(scfv_alpha="0.1"), "scfv_alpha"),
                                          (dict(fc_guidance="tanh"), "fc_guidance")])
def test_bad_scfv_and_fc_options_name_the_argument(options, name):
    method = "fc-fc" if "fc_guidance" in options else "scfv"
    with pytest.raises(CrossLayerError, match=name):
        MethodConfig(method, **options)


def test_keys_change_with_the_options_that_change_rows():
    assert MethodConfig("scfv").key() != MethodConfig("scfv", scfv_atoms=50).key()
    assert MethodConfig("scfv").key() != MethodConfig("scfv", scfv_alpha=0.2).key()
    assert MethodConfig("fc-fc").key() != MethodConfig("fc-fc", fc_guidance="relu").key()
    assert MethodConfig("fc-fc", fc_guidance="relu").label() == "fc-fc relu-guidance"
    assert MethodConfig("conv-fc").key() != MethodConfig("conv-fc", aconv_region=64).key()
    # fc-fc has no local conv layer: a layer pair does not change its rows
    assert MethodConfig("fc-fc").key() == MethodConfig("fc-fc", layers=("features.16", "features.17")).key()


# ---- Table 5 pieces ----------------------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), guidance=st.sampled_from(cross_fc.GUIDANCES))
def test_fc_fc_and_conv_fc_rows_match_the_region_reference(seed, guidance):
    from crosslayer.backbones import get_backbone

    rng = np.random.default_rng(seed)
    spec = get_backbone("mobilenet_v2")
    n, regions = 2, 4
    embeddings = np.abs(rng.normal(size=(n, regions, 1280))).astype(np.float32)
    weight = (rng.normal(size=(1280, 1000)) * 0.05).astype(np.float32)
    bias = rng.normal(size=1000).astype(np.float32)
    mean = rng.normal(size=1280).astype(np.float32)
    projection = np.linalg.qr(rng.normal(size=(1280, 6)))[0].astype(np.float32)
    local = rng.normal(size=(n, regions, 320)).astype(np.float32)
    outputs = {cross_fc.REGIONS: embeddings, f"{cross_fc.REGION_LOCAL}:features.17": local}

    fc_fc = cross_fc.encode(MethodConfig("fc-fc", aconv_pca_dim=6, fc_guidance=guidance), spec, outputs,
                            (mean, projection), (weight, bias))
    logits = embeddings.astype(np.float64) @ weight + bias
    scores = reference.softmax(logits) if guidance == "softmax" else np.maximum(logits, 0)
    want = reference.region_representation(reference.pca_apply(embeddings.reshape(-1, 1280), mean, projection)
                                           .reshape(n, regions, 6), scores)
    np.testing.assert_allclose(fc_fc, want, atol=2e-3)  # float32 logits of 1280 terms, then a square root
    assert fc_fc.shape == (n, 1000 * 6)

    conv_fc = cross_fc.encode(MethodConfig("conv-fc"), spec, outputs, None, None)
    np.testing.assert_allclose(conv_fc, reference.region_representation(local, embeddings), atol=1e-4)
    assert conv_fc.shape == (n, 1280 * 320)


def test_softmax_guidance_is_a_distribution_and_relu_drops_negative_logits():
    logits = np.array([[[1000.0, 0.0, -3.0]]])
    probabilities = cross_fc.guidance_of(logits, "softmax")
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0)
    assert np.isfinite(probabilities).all() and probabilities[0, 0, 0] == pytest.approx(1.0)
    np.testing.assert_array_equal(cross_fc.guidance_of(logits, "relu"), [[[1000.0, 0.0, 0.0]]])


def test_fc_fc_refuses_networks_whose_classifier_is_not_linear_in_the_embedding():
    from crosslayer.backbones import get_backbone

    with pytest.raises(UsageError, match="fc-fc"):
        MethodConfig("fc-fc").check_backbone(get_backbone("vgg16"))
    with pytest.raises(UsageError, match="aconv_region"):
        MethodConfig("conv-fc", aconv_region=48, aconv_stride=48, aconv_side=480).check_backbone(
            get_backbone("mobilenet_v2"))


def test_classifier_read_off_the_network_is_its_linear_layer():
    torch = pytest.importorskip("torch")
    from crosslayer.backbones import get_backbone
    from crosslayer.backbones.export import _load_network

    spec = get_backbone("mobilenet_v2")
    weight, bias = cross_fc.load_classifier(spec, "random", 4)
    linear = _load_network(spec, None, 4).classifier[1]
    with torch.no_grad():
        np.testing.assert_allclose(weight, linear.weight.numpy().T, atol=1e-6)
        np.testing.assert_allclose(bias, linear.bias.numpy(), atol=1e-6)


# ---- combination -------------------------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_combined_kernel_is_the_gram_of_the_normalised_concatenation(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 40)) * 30
    a[4] = 0  # a zero row: zero similarity in that part
    train = np.array([0, 2, 3, 4])
    norms = [np.sum(a**2, axis=1), np.sum(b**2, axis=1)]
    kernel = combine.combined_kernel([a @ a[train].T, b @ b[train].T], norms, train)

    def unit(rows):
        length = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, length, out=np.zeros_like(rows), where=length > 0)

    joined = np.concatenate([unit(a), unit(b)], axis=1) / np.sqrt(2)
    np.testing.assert_allclose(kernel, joined @ joined[train].T, atol=1e-12)
    np.testing.assert_allclose(combine.squared_norms(b.astype(np.float16)), np.sum(b.astype(np.float16).astype(
        np.float64) ** 2, axis=1))


def test_combined_kernel_refuses_mismatched_parts():
    with pytest.raises(UsageError, match="grams"):
        combine.combined_kernel([np.zeros((3, 2))], [np.ones(3), np.ones(3)], [0, 1])
    with pytest.raises(UsageError, match="grams"):
        combine.combined_kernel([np.zeros((3, 2)), np.zeros((3, 3))], [np.ones(3), np.ones(3)], [0, 1])


# ---- end to end on a tiny set (untrained network) ------------------------------------------------------------------

FIT = dict(fit_images=4, seed=0)
COMMON = dict(side=64, progress=False, folds=2, **FIT)
REGIONS = dict(aconv_side=64, aconv_region=32, aconv_stride=32, aconv_pca_dim=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import torch

    from crosslayer.backbones.architectures import build

    root = write_two_colour_set(tmp_path_factory.mktemp("tiny-scfv"), noise=40, side=48)
    # He-initialised weights: torch's default initialisation shrinks the last maps below float16's resolution
    torch.manual_seed(0)
    net = build("mobilenet_v2")
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in")
    weights = tmp_path_factory.mktemp("weights") / "mobilenet_v2-scaled.pth"
    torch.save(net.state_dict(), weights)
    return root, str(weights), tmp_path_factory.mktemp("cache")


def _stored(root, cache, config, weights):
    from crosslayer.eval.extract import extract, pass_directory
    from crosslayer.eval.manifest import load_manifest

    dataset = load_manifest(root)
    store = extract(dataset, [config], "mobilenet_v2", 64, cache, weights, progress=False, **FIT)[config]
    assert store.complete and store.n == len(dataset)
    return dataset, store.read().astype(np.float64), pass_directory(cache, dataset, "mobilenet_v2", 64, weights)


def _maps(cache, image, taps, weights, with_embedding=False):
    from crosslayer.backbones.export import export
    from crosslayer.backbones.runtime import OnnxBackbone

    network = OnnxBackbone(export("mobilenet_v2", taps, weights, with_embedding=with_embedding, cache=cache / "onnx"),
                           intra_op_threads=1)
    return network.run(image[None])


def test_scfv_end_to_end_rows_are_the_reference_of_the_network_maps(tiny):
    from crosslayer.backbones import get_backbone
    from crosslayer.eval import classify
    from crosslayer.eval.extract import pca_path, read_pca
    from crosslayer.images import prepare

    root, weights, cache = tiny
    record = classify(root, "scfv", cache_dir=cache, weights=weights, scfv_atoms=6, **COMMON)
    assert record["dims"] == 6 * 320 and record["n_test"] == 4 and 0 <= record["accuracy"] <= 1
    config = MethodConfig("scfv", scfv_atoms=6, **FIT)
    dataset, rows, directory = _stored(root, cache, config, weights)
    atoms, scale = scfv.read_dictionary(scfv.dictionary_path(directory, config.key(), **FIT), **FIT)
    assert atoms.shape == (6, 320)
    pca = read_pca(pca_path(directory, "features.17", **FIT), **FIT)
    spec = get_backbone("mobilenet_v2")
    image = prepare(dataset.paths[9], 64, "square", spec.mean, spec.std)
    local = _maps(cache, image, ["features.17"], weights)["features.17"]
    want = reference.scfv(local, pca, atoms, scale, config.scfv_alpha)[0]
    # float16 rows of a unit vector: 2^-11 relative, plus the solvers' agreement
    np.testing.assert_allclose(rows[9], want, atol=2e-3)
    assert np.count_nonzero(rows[9]) > 0


@pytest.mark.parametrize("method", ["fc-fc", "conv-fc"])
def test_table5_rows_are_the_reference_of_the_window_means(tiny, method):
    from crosslayer.backbones import get_backbone
    from crosslayer.eval import classify
    from crosslayer.eval.extract import pca_path, read_pca
    from crosslayer.images import prepare

    root, weights, cache = tiny
    record = classify(root, method, cache_dir=cache, weights=weights, **COMMON, **REGIONS)
    dims = 1000 * 8 if method == "fc-fc" else 1280 * 320
    assert record["dims"] == dims and 0 <= record["accuracy"] <= 1
    config = MethodConfig(method, **REGIONS, **FIT)
    dataset, rows, directory = _stored(root, cache, config, weights)
    spec = get_backbone("mobilenet_v2")
    image = prepare(dataset.paths[3], 64, "square", spec.mean, spec.std)
    maps = _maps(cache, image, ["features.17", "features.18"], weights)
    # a 32 px region at stride 32 of a 64 px image is one cell of the 2x2 maps: 4 regions, row-major
    embeddings = maps["features.18"][0].reshape(1280, 4).T[None].astype(np.float64)
    if method == "fc-fc":
        weight, bias = cross_fc.load_classifier(spec, weights, 0)
        mean, projection = read_pca(pca_path(directory, config.key(), **FIT), **FIT)
        local = reference.pca_apply(embeddings[0], mean, projection)[None]
        want = reference.region_representation(local, reference.softmax(embeddings @ weight + bias))
    else:
        local = reference.signed_sqrt(maps["features.17"][0].reshape(320, 4).T[None])
        want = reference.region_representation(local, embeddings)
    np.testing.assert_allclose(rows[3], want[0], atol=2e-3)


def test_combination_of_oconv_and_aconv_fast_end_to_end(tiny):
    root, weights, cache = tiny
    aconv = dict(aconv_filters=4, aconv_epochs=2, **REGIONS)
    record = combine.classify_combination(root, [dict(method="crosslayer"), dict(method="aconv-fast", **aconv)],
                                          cache_dir=cache, weights=weights, **COMMON)
    assert [part["method"] for part in record["parts"]] == ["crosslayer", "aconv-fast"]
    assert record["dims"] == 1280 * 320 + 4 * 8 and len(record["test_predictions"]) == 4
    assert record["label"].startswith("crosslayer + aconv-fast") and 0 <= record["accuracy"] <= 1
    # paired against any method's row on the same images (reproduce_classification's Δ column needs both)
    assert record["test_keys"] == record["parts"][0]["test_keys"] and len(record["test_keys"]) == 4
    assert record["test_labels"] == record["parts"][0]["test_labels"]
    with pytest.raises(UsageError, match="parts"):
        combine.classify_combination(root, [dict(method="crosslayer")], cache_dir=cache, weights=weights, **COMMON)


@pytest.mark.parametrize("method", ["scfv", "fc-fc", "conv-fc"])
def test_cli_classify_runs_each_new_method(tiny, tmp_path, capsys, method):
    import json

    from crosslayer.commands import main
    from crosslayer.eval import read_record

    root, weights, cache = tiny
    out = tmp_path / "record.json"
    argv = ["eval", "classify", "--data", str(root), "--method", method, "--side", "64", "--weights", weights,
            "--cache", str(cache), "--json", str(out), "--quiet", "--folds", "2", "--fit-images", "4",
            "--aconv-side", "64", "--aconv-region", "32", "--aconv-stride", "32", "--aconv-pca-dim", "8",
            "--scfv-atoms", "6", "--fc-guidance", "relu"]
    assert main(argv) == 0
    record = read_record(out)
    assert record["method"] == method and json.loads(capsys.readouterr().out)["label"] == record["label"]
    assert record["dims"] == {"scfv": 6 * 320, "fc-fc": 1000 * 8, "conv-fc": 1280 * 320}[method]
    assert record["config"]["fc_guidance"] == "relu" and record["config"]["scfv_atoms"] == 6
