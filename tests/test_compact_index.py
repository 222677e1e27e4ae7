"""CodeIndex with compact segments (index format 4): append, convert, search, rerank, normalise, delete, compact,
export, adopt; and a version 3 index (2-plane segments, no layout) still opens, searches and keeps its layout."""

import json
import shutil
import zlib

import numpy as np
import pytest

import crosslayer
from crosslayer import CodeIndex, Codes, formats, reference
from crosslayer.errors import UsageError

from _codes import random_compact_codes, random_compactable_signs

DK, DT = 70, 65


def test_compact_index_matches_search_on_the_codes(tmp_path, rng):
    codes = random_compact_codes(rng, 40, DK, DT, 0.1)
    queries = random_compact_codes(rng, 3, DK, DT, 0.1)
    with CodeIndex.create(tmp_path / "idx", DK, DT, layout="compact") as index:
        assert index.layout == "compact"
        index.append(codes[:15], keys=[f"k{i}" for i in range(15)])
        index.append(codes[15:].expanded())  # 2-plane codes are converted to the index's layout
        index.delete([2, 30])
    live = np.setdiff1d(np.arange(40), [2, 30])
    with CodeIndex.open(tmp_path / "idx", verify="full") as index:
        assert index.verify() == []
        segment = formats.CodeFile.read_header(tmp_path / "idx" / "seg-00000001.xlc")[0]
        assert (segment.version, segment.layout) == (4, "compact")
        scores, ids = index.search(queries, k=5, channels=7)
        want_scores, positions = crosslayer.search(queries, codes[live], k=5, channels=7)
        np.testing.assert_array_equal(ids, live[positions])
        np.testing.assert_array_equal(scores, want_scores)
        # 2-plane queries give the same; rerank over every id equals the search
        np.testing.assert_array_equal(index.search(queries.expanded(), k=5, channels=7)[1], ids)
        reranked = index.rerank(queries, np.tile(np.arange(40), (3, 1)), k=5, channels=7)
        np.testing.assert_array_equal(reranked[1], ids)
        np.testing.assert_array_equal(reranked[0], scores)
        normalized = index.search(queries, k=5, channels=7, normalize=True)[0]
        cosine = reference.masked_cosine_reference(queries.expanded().bits, queries.channel_mean,
                                                   codes.expanded().bits, DT, 7)
        np.testing.assert_allclose(normalized, np.take_along_axis(cosine, ids, 1), rtol=1e-12)
        assert index.get([0, 39]) == codes[np.array([0, 39])]
        index.export(tmp_path / "out.xlc", ids=[0, 1])
        assert Codes.load(tmp_path / "out.xlc").layout == "compact"
    with CodeIndex.open(tmp_path / "idx", mode="a") as index:
        index.compact()
        np.testing.assert_array_equal(index.search(queries, k=5, channels=7)[0], scores)


def test_layout_follows_the_first_codes_and_partial_codes_cannot_join_a_compact_index(tmp_path, rng):
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        assert index.layout is None
        index.append(Codes.empty(DK, DT))
        assert index.layout is None
        index.append(random_compact_codes(rng, 3, DK, DT))
        assert index.layout == "compact"
        signs = random_compactable_signs(rng, 1, DK, DT, 0.0)
        signs[0, 3, 7] = 0
        partial = Codes(reference.pack_ternary(signs), np.zeros((1, DK), np.float32), DT)
        with pytest.raises(UsageError, match="codes: cannot join an index of compact codes: .*item 0 channel 3 is partly zero"):
            index.append(partial)
        with pytest.raises(UsageError, match="queries: cannot search an index of compact codes"):
            index.search(partial, k=1)
        partial.save(tmp_path / "partial.xlc", keys=["p"])
        with pytest.raises(UsageError, match="code_file: cannot join an index of compact codes: .*partly zero"):
            index.adopt(tmp_path / "partial.xlc")
        assert len(index) == 3
        whole = random_compact_codes(rng, 2, DK, DT)
        whole.expanded().save(tmp_path / "whole.xlc", keys=["w0", "w1"])  # a 2-plane file is rewritten compact
        np.testing.assert_array_equal(index.adopt(tmp_path / "whole.xlc"), [3, 4])
        assert index.get([3, 4]) == whole and index.verify() == []
    with pytest.raises(UsageError, match="layout: expected one of"):
        CodeIndex.create(tmp_path / "other", DK, DT, layout="ternary")


def make_version_3_index(path, codes, keys):
    """An index as crosslayer 0.3 wrote it: manifest version 3 without a layout, one version 3 segment."""
    path.mkdir()
    block = formats.CodeFile.key_block(keys)
    header = formats.CodeFile(len(codes), codes.Dk, codes.Dt, len(block), None, version=3)
    payload = codes.bits.tobytes() + codes.channel_mean.tobytes() + block
    crc = zlib.crc32(payload, header.checksum_seed())
    data = header.pack(crc) + payload
    (path / "seg-00000000.xlc").write_bytes(data)
    body = {"Dk": codes.Dk, "Dt": codes.Dt, "count": len(codes), "identity": None, "side": {},
            "segments": [{"file": "seg-00000000.xlc", "count": len(codes), "id_base": 0, "size": len(data),
                          "crc32": crc, "keys": True, "side": {}}],
            "deleted": [], "next_segment": 1, "attributes": {}}
    formats.write_json(path / "MANIFEST.json", "crosslayer-code-index", 3, body)


def test_a_version_3_index_opens_searches_and_keeps_its_layout(tmp_path, rng):
    signs = rng.integers(-1, 2, size=(12, DK, DT)).astype(np.int8)  # partly-zero channels: 2-plane only
    codes = Codes(reference.pack_ternary(signs), rng.integers(0, 3, (12, DK)).astype(np.float32), DT)
    make_version_3_index(tmp_path / "old", codes[:8], [f"k{i}" for i in range(8)])
    queries = codes[8:10]
    with CodeIndex.open(tmp_path / "old", verify="full") as index:
        assert index.layout == "two_plane" and index.verify() == []
        np.testing.assert_array_equal(index.search(queries, k=4, channels=5)[1],
                                      crosslayer.search(queries, codes[:8], k=4, channels=5)[1])
    with CodeIndex.open(tmp_path / "old", mode="a") as index:
        index.append(codes[8:].compact(lossy=True))  # compact codes join a 2-plane index expanded
        index.append(codes[10:])
    body = json.loads((tmp_path / "old" / "MANIFEST.json").read_text())
    assert (body["version"], body["layout"]) == (4, "two_plane")
    with CodeIndex.open(tmp_path / "old", verify="full") as index:
        assert index.verify() == [] and len(index) == 14
        every = Codes.concatenate([codes[:8], codes[8:].compact(lossy=True).expanded(), codes[10:]])
        np.testing.assert_array_equal(index.search(queries, k=6, channels=5)[1],
                                      crosslayer.search(queries, every, k=6, channels=5)[1])
    shutil.rmtree(tmp_path / "old")
