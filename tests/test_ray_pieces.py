"""The pieces of the Ray scale-out that need no cluster: `CodeIndex.adopt` (verified, by rename, all or nothing),
search of segment groups merged exactly (against the whole index, with deletions), deterministic shard plans, the
staging folder's cleanup, the address check and the error when Ray is missing."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslayer import CodeIndex, Codes, reference
from crosslayer.distributed.cluster import RayMissingError, check_address, require_ray
from crosslayer.distributed.sharded import group_segments, merge_top_k
from crosslayer.distributed.shards import (Shard, plan_shards, read_staged_records, remove_unrecorded,
                                           write_staged_shard)
from crosslayer.errors import UsageError
from crosslayer.index import CodeIndexFormatError

DK, DT = 5, 70


def random_codes(rng, n, keys=None, identity=None):
    signs = rng.integers(-1, 2, size=(n, DK, DT)).astype(np.int8)
    return Codes(reference.pack_ternary(signs), rng.integers(0, 3, (n, DK)).astype(np.float32), DT, identity, keys)


def _staged(tmp_path, rng, keys, name="shard"):
    codes = random_codes(rng, len(keys), keys)
    folder = tmp_path / "staging"
    folder.mkdir(exist_ok=True)
    record = write_staged_shard(folder, Shard(name, tuple(keys), tuple(keys)), codes,
                                rng.random((len(keys), 3), dtype=np.float32), {"bad.jpg": "not an image"})
    return codes, folder / record["code_file"], {"embedding": folder / record["side"]["embedding"]}


def test_adopt_renames_a_verified_segment_into_the_index(tmp_path, rng):
    codes, code_file, side = _staged(tmp_path, rng, ["a", "b", "c"])
    inode = code_file.stat().st_ino
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(random_codes(rng, 2), keys=["x", "y"], side={"embedding": np.zeros((2, 3), np.float32)})
        ids = index.adopt(code_file, side, attributes={"note": 1})
        assert ids.tolist() == [2, 3, 4] and not code_file.exists() and not side["embedding"].exists()
        assert (tmp_path / "idx" / "seg-00000001.xlc").stat().st_ino == inode  # renamed, not copied
        assert index.keys([2, 3, 4]) == ["a", "b", "c"] and index.attributes == {"note": 1}
    with CodeIndex.open(tmp_path / "idx", verify="full") as index:
        np.testing.assert_array_equal(index.get([2, 3, 4]).bits, codes.bits)
        assert index.side("embedding", [2]).shape == (1, 3) and index.verify() == []


def test_adopt_refuses_bad_segments_and_leaves_the_index_unchanged(tmp_path, rng):
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(random_codes(rng, 2), keys=["x", "y"], side={"embedding": np.zeros((2, 3), np.float32)})
        before = (tmp_path / "idx" / "MANIFEST.json").read_bytes()
        _, code_file, side = _staged(tmp_path, rng, ["x", "z"], "dup")
        with pytest.raises(UsageError, match="already in the index"):
            index.adopt(code_file, side)
        _, code_file, side = _staged(tmp_path, rng, ["p", "q"], "damaged")
        data = bytearray(code_file.read_bytes())
        data[-3] ^= 0xFF
        code_file.write_bytes(bytes(data))
        with pytest.raises(CodeIndexFormatError, match="checksum"):
            index.adopt(code_file, side)
        _, code_file, side = _staged(tmp_path, rng, ["r"], "noside")
        with pytest.raises(UsageError, match="missing"):
            index.adopt(code_file, {})
        random_codes(rng, 2).save(tmp_path / "nokeys.xlc")
        with pytest.raises(UsageError, match="no key"):
            index.adopt(tmp_path / "nokeys.xlc", side)
        assert code_file.exists()  # a refused file stays where it was
        assert (tmp_path / "idx" / "MANIFEST.json").read_bytes() == before and len(index) == 2


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6),
       groups=st.integers(1, 4), k=st.integers(1, 30), channels=st.one_of(st.none(), st.integers(1, DK)),
       normalize=st.booleans(), deleted=st.integers(0, 6))
def test_group_searches_merged_equal_the_whole_index(tmp_path_factory, seed, sizes, groups, k, channels, normalize,
                                                     deleted):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("idx") / "codes"
    with CodeIndex.create(path, DK, DT) as index:
        for size in sizes:
            part = random_codes(rng, size)
            part.bits[: size // 2] = part.bits[:1] if size else part.bits  # equal codes: ties across segments
            index.append(part)
        if len(index):
            index.delete(rng.choice(len(index), min(deleted, len(index)), replace=False))
        queries = random_codes(rng, 3)
        expected = index.search(queries, k, channels, normalize=normalize)
        chosen = group_segments(index.segment_files(), groups)
        assert sum(chosen, []) == [file for file, _ in index.segment_files()] and len(chosen) <= groups
        parts = []
        for group in chosen:
            raw, ids = index.search(queries, k, channels, segments=group)
            shown = index.normalized_scores(queries, raw, ids, channels or DK) if normalize else None
            parts.append((raw, ids, shown))
        if parts:
            got = merge_top_k(parts, k)
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
        with pytest.raises(UsageError, match="segments"):
            index.search(queries, k, channels, segments=["seg-99999999.xlc"])


def test_shard_plan_is_deterministic_and_sorted_by_key():
    keys = [f"img{i:03d}.jpg" for i in range(10)]
    paths = [f"/data/{key}" for key in keys]
    plan = plan_shards(paths[::-1], keys[::-1], 4)
    assert [len(s.keys) for s in plan] == [4, 4, 2] and plan[0].keys == tuple(keys[:4])
    assert plan == plan_shards(paths, keys, 4) and plan[0].paths == tuple(paths[:4])
    assert len({s.name for s in plan}) == 3 and plan[1].name.startswith("shard-000001-")
    assert plan_shards([], [], 4) == []
    with pytest.raises(UsageError, match="shard_size"):
        plan_shards(paths, keys, 0)


def test_staging_cleanup_keeps_only_recorded_shards(tmp_path, rng):
    _, code_file, _ = _staged(tmp_path, rng, ["a"], "shard-000000-aaaa")
    folder = code_file.parent
    (folder / "shard-000001-bbbb.xlc").write_bytes(b"a worker died before the record")
    (folder / ".shard-000002-cccc.xlc.tmp").write_bytes(b"")
    (folder / "shard-000003-dddd.json").write_text("{damaged")
    remove_unrecorded(folder)
    records = read_staged_records(folder)
    assert [r["name"] for r in records] == ["shard-000000-aaaa"] and records[0]["failed"] == {"bad.jpg": "not an image"}
    assert sorted(p.name for p in folder.iterdir()) == ["shard-000000-aaaa.embedding.npy", "shard-000000-aaaa.json",
                                                          "shard-000000-aaaa.xlc"]


def test_remote_address_needs_token_authentication(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert check_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert check_address("localhost:6379") == "localhost:6379"
    with pytest.raises(UsageError, match="RAY_AUTH_MODE"):
        check_address("10.0.0.5:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert check_address("10.0.0.5:6379") == "10.0.0.5:6379"


def test_auto_address_is_resolved_before_the_token_rule(monkeypatch):
    """"auto" connects to RAY_ADDRESS: the loopback-or-token rule applies to that address, which is connected to."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(UsageError, match=r"auto \(10\.0\.0\.5:6379\) is not on this machine.*RAY_AUTH_MODE"):
        check_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert check_address("auto") == "127.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert check_address("auto") == "10.0.0.5:6379"


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(RayMissingError, match=r"pip install 'crosslayer\[ray\]'"):
        require_ray()
