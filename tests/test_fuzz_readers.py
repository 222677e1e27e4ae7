"""Every reader of an on-disk format, fed random bytes, truncations and byte flips of valid files: a CrossLayerError
(subclass), never another exception, a crash or a hang. Bounded: a fixed number of examples per reader."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crosslayer import CodeIndex, Codes, formats, reference
from crosslayer.encoder import CrossLayerEncoder
from crosslayer.errors import CrossLayerError
from crosslayer.retrieval.image_index import ImageIndex

DK, DT = 3, 70
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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
