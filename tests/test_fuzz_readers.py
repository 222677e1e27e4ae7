"""Every reader of an on-disk format, fed random bytes, truncations and byte flips of valid files: a CrossLayerError
(subclass), never another exception, a crash or a hang. Bounded: a fixed number of examples per reader."""

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crosslayer import CodeIndex, Codes, formats, reference
from crosslayer.encoder import CrossLayerEncoder
from crosslayer.errors import CrossLayerError
from crosslayer.retrieval.image_index import ImageIndex

DK, DT = 3, 70
# no per-example deadline (a loaded 2-core CI machine makes example times erratic, and a deadline is only checked
# after an example returns), so a reader that loops forever on some input is stopped by a per-test timeout
# (pytest-timeout; each test takes a few seconds). The "thread" method ends the run with every thread's stack: the
# "signal" one raises inside the test once, and hypothesis catches that and replays the hanging example.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FUZZ_TIMEOUT_S = 120
pytestmark = pytest.mark.timeout(FUZZ_TIMEOUT_S, method="thread")


def _codes(n=4, identity="0123456789abcdef"):
    rng = np.random.default_rng(n)
    signs = rng.integers(-1, 2, size=(n, DK, DT)).astype(np.int8)
    return Codes(reference.pack_ternary(signs), rng.random((n, DK), dtype=np.float32), DT, identity)


def damaged(valid: bytes):
    """Random bytes, a truncation, flipped bytes, or bytes appended, of `valid` (positions are drawn independently
    of its length, which may differ between examples)."""
    flips = st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=4)

    def flip(changes):
        data = bytearray(valid)
        for offset, mask in changes:
            data[offset % len(data)] ^= mask
        return bytes(data)

    return st.one_of(st.binary(max_size=300), st.integers(0, 2**20).map(lambda n: valid[: n % len(valid)]),
                     flips.map(flip), st.binary(min_size=1, max_size=20).map(lambda tail: valid + tail))


def _refused_or_read(read):
    try:
        read()
    except CrossLayerError:
        pass


# ---- code files ---------------------------------------------------------------------------------------------------
_CODE_FILE = {}


def _valid_code_file(tmp_path_factory):
    if not _CODE_FILE:
        path = tmp_path_factory.mktemp("codes") / "c.xlc"
        _codes().save(path, keys=["a", "b", None, "d"])
        _CODE_FILE["bytes"] = path.read_bytes()
    return _CODE_FILE["bytes"]


@FUZZ
@given(data=st.data())
def test_code_file_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "c.xlc"
    path.write_bytes(data.draw(damaged(_valid_code_file(tmp_path_factory))))
    _refused_or_read(lambda: Codes.load(path))


# ---- JSON documents -----------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data(), body=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)),
                                            max_size=3))
def test_json_document_reader(tmp_path_factory, data, body):
    folder = tmp_path_factory.mktemp("json")
    body = {k: v for k, v in body.items() if k not in ("format", "version", "crc32")}
    formats.write_json(folder / "d.json", "fuzz", 1, body)
    valid = (folder / "d.json").read_bytes()
    (folder / "d.json").write_bytes(data.draw(damaged(valid)))
    _refused_or_read(lambda: formats.read_json(folder / "d.json", "fuzz", 1))


# ---- code index ---------------------------------------------------------------------------------------------------
def _valid_index(folder):
    with CodeIndex.create(folder, DK, DT) as index:
        index.append(_codes(3), keys=["a", "b", "c"], side={"emb": np.arange(6, dtype=np.float32).reshape(3, 2)})
        index.append(_codes(2), keys=["d", "e"], side={"emb": np.ones((2, 2), np.float32)})
        index.delete([1])
    return {name: (folder / name).read_bytes()
            for name in ("MANIFEST.json", "seg-00000000.xlc", "seg-00000001.emb.npy")}


@FUZZ
@given(data=st.data(), which=st.sampled_from(["MANIFEST.json", "seg-00000000.xlc", "seg-00000001.emb.npy"]),
       verify=st.sampled_from(["lazy", "full", "none"]))
def test_code_index_reader(tmp_path_factory, data, which, verify):
    folder = tmp_path_factory.mktemp("idx") / "idx"
    valid = _valid_index(folder)
    (folder / which).write_bytes(data.draw(damaged(valid[which])))

    def read():
        with CodeIndex.open(folder, verify=verify) as index:
            index.search(_codes(2), k=3, channels=2)
            live = index.live_ids()
            index.keys(live), index.get(live), index.find(["a", "e"]), index.summary(), index.verify()
            for name in index.side_names:
                index.side(name)

    _refused_or_read(read)


# ---- encoder file and image index ---------------------------------------------------------------------------------
def _saved_encoder(path):
    encoder = CrossLayerEncoder(side=64, weights="random", pca_dim=4)
    rng = np.random.default_rng(0)
    dt_in = encoder.spec.channels[encoder.layers[0]]
    encoder.pca_ = (rng.random(dt_in, dtype=np.float32), rng.random((dt_in, 4), dtype=np.float32))
    encoder.save(path)
    return encoder


@pytest.fixture(scope="module")
def encoder_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "e.xle"
    _saved_encoder(path)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_encoder_file_reader(tmp_path_factory, encoder_bytes, data):
    path = tmp_path_factory.mktemp("fuzz") / "e.xle"
    path.write_bytes(data.draw(damaged(encoder_bytes)))
    _refused_or_read(lambda: CrossLayerEncoder.read_meta(path))
    _refused_or_read(lambda: CrossLayerEncoder.load(path))


@FUZZ
@given(data=st.data(), which=st.sampled_from(["image-index.json", "encoder.xle", "codes/MANIFEST.json"]))
def test_image_index_reader(tmp_path_factory, data, which):
    folder = tmp_path_factory.mktemp("db") / "db"
    folder.mkdir()
    encoder = _saved_encoder(folder / "encoder.xle")
    ImageIndex.create(folder, encoder, root=folder).close()
    valid = (folder / which).read_bytes()
    (folder / which).write_bytes(data.draw(damaged(valid)))

    def read():
        with ImageIndex.open(folder) as index:
            index.summary(), index.paths(), index.failures()

    _refused_or_read(read)


# ---- evaluation files and caches ------------------------------------------------------------------------------------
def _fuzz_file(tmp_path_factory, data, valid: bytes, name: str):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data.draw(damaged(valid)))
    return path


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    """Valid bytes of every evaluation file: record, row store metadata, PCA, retrieval results, feature cache
    metadata (beside its encoder file), heatmap sheet."""
    from crosslayer.eval.extract import write_pca
    from crosslayer.eval.record import write_record
    from crosslayer.eval.store import RowStore
    from crosslayer.heatmap import GuidanceMaps, render_heatmaps
    from crosslayer.retrieval.evaluate import write_results
    from crosslayer.retrieval.feature_cache import FeatureCache

    folder = tmp_path_factory.mktemp("eval")
    write_record(folder / "record.json", {"method": "crosslayer", "accuracy": 0.5, "seconds": {"gram": 1.0}})
    store = RowStore(folder / "store", "k", 3, (2,), "float16", info={"config": {"a": 1}})
    store.append(0, np.ones((3, 2), np.float16))
    write_pca(folder / "pca.zip", np.zeros(3, np.float32), np.eye(3, 2, dtype=np.float32), 4, 0)
    write_results(folder / "results.json", "smvs", ["scene15"], [{"method": "spoc", "map": 0.5}])
    encoder = _saved_encoder(folder / "encoder.xle")
    FeatureCache(folder / "cache", encoder)
    rng = np.random.default_rng(0)
    maps = GuidanceMaps("x.jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                        rng.random((4, 2, 2), dtype=np.float32), rng.random(4, dtype=np.float32), {"side": 16})
    render_heatmaps(maps, [0, 2], folder / "heat.png", tile=16)
    files = {name: (folder / name).read_bytes() for name in ("record.json", "pca.zip", "results.json", "heat.png")}
    files["store"] = (folder / "store" / "meta.json").read_bytes()
    files["cache"] = (folder / "cache" / "cache.json").read_bytes()
    files["encoder"] = (folder / "cache" / "encoder.xle").read_bytes()
    return files


def _store_reader(path):
    from crosslayer.eval.store import RowStore

    RowStore(path.parent, "k", 3, (2,), "float16").read()


def _cache_reader(path, encoder_bytes):
    from crosslayer.retrieval.feature_cache import FeatureCache

    path.rename(path.parent / "cache.json")
    (path.parent / "encoder.xle").write_bytes(encoder_bytes)
    FeatureCache(path.parent, CrossLayerEncoder(side=64, weights="random", pca_dim=4), fit_sources=["a.jpg"])


def _readers():
    from crosslayer.eval.extract import read_pca
    from crosslayer.eval.record import read_record
    from crosslayer.heatmap import read_heatmap_settings
    from crosslayer.retrieval.evaluate import read_results

    return {"record.json": read_record, "pca.zip": lambda path: read_pca(path, 4, 0), "results.json": read_results,
            "heat.png": read_heatmap_settings, "store": _store_reader}


@FUZZ
@given(data=st.data(), which=st.sampled_from(["record.json", "pca.zip", "results.json", "heat.png", "store"]))
def test_evaluation_file_readers(tmp_path_factory, eval_files, data, which):
    path = _fuzz_file(tmp_path_factory, data, eval_files[which], "meta.json" if which == "store" else which)
    _refused_or_read(lambda: _readers()[which](path))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_feature_cache_metadata_reader(tmp_path_factory, eval_files, data):
    path = _fuzz_file(tmp_path_factory, data, eval_files["cache"], "damaged.json")
    _refused_or_read(lambda: _cache_reader(path, eval_files["encoder"]))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_onnx_export_sidecar_reader(tmp_path_factory, data):
    from crosslayer.backbones.export import EXPORT_VERSION, SIDECAR_FORMAT, _sidecar_valid

    folder = tmp_path_factory.mktemp("sidecar")
    (folder / "m.onnx").write_bytes(b"model")
    body = {"key": "k", "size": 5, "sha256": hashlib.sha256(b"model").hexdigest()}
    formats.write_json(folder / "m.json", SIDECAR_FORMAT, EXPORT_VERSION, body)
    assert _sidecar_valid(folder / "m.onnx", folder / "m.json", "k")
    (folder / "m.json").write_bytes(data.draw(damaged((folder / "m.json").read_bytes())))
    if _sidecar_valid(folder / "m.onnx", folder / "m.json", "k"):  # never raises; trusted only if still sound
        assert formats.read_json(folder / "m.json", SIDECAR_FORMAT, EXPORT_VERSION) == {**body, "version": 2}


def test_every_fuzz_test_fails_instead_of_hanging(request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed (requirements.txt)"
    tests = [item for item in request.session.items if item.module is request.module] or [request.node]
    for item in tests:
        mark = item.get_closest_marker("timeout")
        assert mark is not None and mark.args == (FUZZ_TIMEOUT_S,) and mark.kwargs == {"method": "thread"}, item.nodeid
