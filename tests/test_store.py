"""The store layer: encoder identity on codes and indexes, keyed CodeIndex (side arrays, tombstones, lazy verification,
export, compaction), normalised scores against reference.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crosslayer
from crosslayer import CodeIndex, CodeIndexError, Codes, reference
from crosslayer.codes import IdentityMismatchError
from crosslayer.errors import CrossLayerError, UsageError

DK, DT = 6, 70
A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def random_codes(rng, n, identity=None, dk=DK, dt=DT):
    signs = rng.integers(-1, 2, size=(n, dk, dt)).astype(np.int8)
    return Codes(reference.pack_ternary(signs), rng.integers(0, 3, (n, dk)).astype(np.float32), dt, identity)


def test_codes_of_two_known_identities_are_never_mixed(tmp_path, rng):
    a, b, unknown = random_codes(rng, 3, A), random_codes(rng, 2, B), random_codes(rng, 2)
    for mix in (lambda: Codes.concatenate([a, unknown, b]), lambda: crosslayer.gram(a, b),
                lambda: crosslayer.search(a, b, k=2, channels=2)):
        with pytest.raises(IdentityMismatchError, match=f"{B}.*{A}|{A}.*{B}"):
            mix()
    assert Codes.concatenate([a, unknown]).identity == A  # unknown codes join known ones
    crosslayer.gram(a, unknown)
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(unknown)
        index.append(a)  # the first known identity is recorded
        assert index.identity == A
        with pytest.raises(IdentityMismatchError, match=f"codes: codes of encoder {B}"):
            index.append(b)
        with pytest.raises(IdentityMismatchError, match="queries"):
            index.search(b, k=2, channels=2)
        assert index.get([0]).identity == A
    with pytest.raises(IdentityMismatchError):
        CodeIndex.open(tmp_path / "idx", "a").append(b)


def test_duplicate_keys_and_non_finite_means_are_refused(tmp_path, rng):
    codes = random_codes(rng, 3)
    bad = codes.channel_mean.copy()
    bad[1, 2] = np.nan
    with pytest.raises(UsageError, match="channel_mean: item 1 has a non-finite mean"):
        Codes(codes.bits, bad, DT)
    bad[1, 2] = np.inf
    with pytest.raises(UsageError, match="non-finite"):
        Codes(codes.bits, bad, DT)
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        with pytest.raises(UsageError, match=r"given more than once: \['x'\]"):
            index.append(codes, keys=["x", "y", "x"])
        index.append(codes, keys=["x", "y", "z"])
        with pytest.raises(UsageError, match=r"already in the index: \['y'\]"):
            index.append(codes[:2], keys=["w", "y"])
        index.delete_keys(["y"])
        index.append(codes[:1], keys=["y"])  # a deleted key may come back
        assert index.find(["y", "x", "nope"]).tolist() == [3, 0, -1]


def test_side_arrays_are_declared_once_checked_and_read_in_id_order(tmp_path, rng):
    emb = rng.random((5, 4)).astype(np.float32)
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(random_codes(rng, 3), side={"emb": emb[:3], "label": np.arange(3)})
        assert index.side_names == ["emb", "label"]
        with pytest.raises(UsageError, match=r"missing \['label'\]"):
            index.append(random_codes(rng, 2), side={"emb": emb[3:]})
        with pytest.raises(UsageError, match=r"side\['emb'\]: expected shape \(2, 4\)"):
            index.append(random_codes(rng, 2), side={"emb": emb[3:, :2], "label": np.arange(2)})
        index.append(random_codes(rng, 2), side={"emb": emb[3:], "label": np.arange(3, 5)})
    with CodeIndex.open(tmp_path / "idx") as index:
        np.testing.assert_array_equal(index.side("emb"), emb)
        np.testing.assert_array_equal(index.side("label", [4, 0, 3]), [4, 0, 3])
        with pytest.raises(UsageError, match="not 'nope'"):
            index.side("nope")
        assert index.summary()["side"] == {"emb": {"dtype": "<f4", "shape": [4]}, "label": {"dtype": "<i8", "shape": []}}
    side_file = tmp_path / "idx" / "seg-00000001.emb.npy"
    data = bytearray(side_file.read_bytes())
    data[-1] ^= 0x40
    side_file.write_bytes(bytes(data))
    with CodeIndex.open(tmp_path / "idx") as index:
        index.side("emb", [0, 1])  # the damaged segment is not read
        with pytest.raises(CodeIndexError, match="seg-00000001.emb.npy: checksum mismatch"):
            index.side("emb", [3])
        assert len(index.verify()) == 1
    with pytest.raises(CodeIndexError, match="emb.npy: checksum mismatch"):
        CodeIndex.open(tmp_path / "idx", verify="full")


def test_a_damaged_side_array_header_is_a_format_error_even_unverified(tmp_path, rng):
    # found by the fuzz: numpy's .npy header parser raised tokenize.TokenError on ")2, 2)" in the shape
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(random_codes(rng, 2), side={"emb": np.ones((2, 2), np.float32)})
    side_file = tmp_path / "idx" / "seg-00000000.emb.npy"
    side_file.write_bytes(side_file.read_bytes().replace(b"(2, 2)", b")2, 2)"))
    with CodeIndex.open(tmp_path / "idx", verify="none") as index:
        with pytest.raises(CodeIndexError, match="emb.npy: not a side array of float32 \\(2, 2\\)"):
            index.side("emb")


def test_a_flipped_byte_in_a_segment_fails_the_search_never_changes_a_score(tmp_path, rng):
    queries = random_codes(rng, 2)
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(random_codes(rng, 4))
        index.append(random_codes(rng, 4))
    segment = tmp_path / "idx" / "seg-00000001.xlc"
    data = bytearray(segment.read_bytes())
    data[64 + 8] ^= 0x01  # a bit of an item's nonzero plane: a valid code with another score
    segment.write_bytes(bytes(data))
    with CodeIndex.open(tmp_path / "idx") as index:  # the default, lazy verification
        with pytest.raises(CodeIndexError, match="seg-00000001.xlc: checksum mismatch"):
            index.search(queries, k=3, channels=3)
        problems = index.verify()
        assert len(problems) == 1 and "seg-00000001.xlc" in problems[0]
        with pytest.raises(CodeIndexError, match="checksum mismatch"):
            index.get([5])
        assert len(index.get([1])) == 1  # the sound segment still reads
    with CodeIndex.open(tmp_path / "idx", verify="none") as index:  # asked not to check: searched as it is
        assert index.search(queries, k=3, channels=3)[0].shape == (2, 3)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4),
       k=st.integers(1, 12), channels=st.one_of(st.none(), st.integers(1, DK)), data=st.data())
def test_search_skips_tombstones_exactly_and_compact_keeps_the_live_items(tmp_path_factory, seed, sizes, k, channels,
                                                                          data):
    rng = np.random.default_rng(seed)
    parts = [random_codes(rng, n) for n in sizes]
    everything = Codes.concatenate(parts)
    queries = random_codes(rng, 3)
    gone = data.draw(st.lists(st.integers(0, max(len(everything) - 1, 0)), unique=True)) if len(everything) else []
    path = tmp_path_factory.mktemp("idx") / "idx"
    with CodeIndex.create(path, DK, DT) as index:
        for i, part in enumerate(parts):
            index.append(part, keys=[f"{i}/{j}" for j in range(len(part))],
                         side={"row": np.arange(len(part)) + 100 * i})
        assert index.delete(gone) == len(gone) and index.delete(gone[:1]) == 0
        live = np.setdiff1d(np.arange(len(everything)), gone)
        np.testing.assert_array_equal(index.live_ids(), live)
        assert index.deleted == len(gone) and index.live_count == len(live)
        scores, ids = index.search(queries, k=k, channels=channels)
        ref_scores, ref_ids = reference.search_reference(queries.bits, queries.channel_mean, everything.bits[live], DT,
                                                         k, channels)
        np.testing.assert_array_equal(scores, ref_scores)
        np.testing.assert_array_equal(ids, live[ref_ids])
        if gone:
            with pytest.raises(CodeIndexError, match="deleted"):
                index.get(gone[:1])
        keys = index.keys(live)
        rows = index.side("row")
        report = index.compact()
        assert report["removed"] == len(gone) and index.deleted == 0 and len(index) == len(live)
        np.testing.assert_array_equal(index.search(queries, k=k, channels=channels)[1], ref_ids)  # ids renumbered
        assert index.keys(np.arange(len(live))) == keys
        np.testing.assert_array_equal(index.side("row"), rows)
    with CodeIndex.open(path, verify="full") as index:
        assert index.get(np.arange(len(live))) == everything[live] and index.verify() == []


def test_deletions_commit_atomically_and_need_a_writer(tmp_path, rng):
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(random_codes(rng, 4), keys=list("abcd"))
        index.delete_keys(["b"])
        with pytest.raises(UsageError, match=r"not in the index: \['zz'\]; nothing was deleted"):
            index.delete_keys(["c", "zz"])
        assert index.find(["c"]).tolist() == [2]
        with pytest.raises(IndexError):
            index.delete([4])
    with CodeIndex.open(tmp_path / "idx") as index:
        assert index.deleted == 1 and index.keys(index.live_ids()) == ["a", "c", "d"]
        with pytest.raises(CodeIndexError, match="read-only"):
            index.delete([0])


def test_export_writes_keys_codes_and_identity_that_codes_load_reads(tmp_path, rng):
    codes = random_codes(rng, 5, A)
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        index.append(codes, keys=list("abcde"))
        index.delete([1])
        assert index.export(tmp_path / "all.xlc") == 4
        index.export(tmp_path / "two.xlc", ids=[4, 0])
        summary = index.summary()
        assert summary["count"] == 4 and summary["deleted"] == 1 and summary["identity"] == A
        assert summary["bytes"] == index.bytes_on_disk > codes.nbytes
    exported = Codes.load(tmp_path / "all.xlc")
    assert exported.keys == list("acde") and exported.identity == A and exported == codes[np.array([0, 2, 3, 4])]
    assert Codes.load(tmp_path / "two.xlc").keys == ["e", "a"]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), k=st.integers(1, 9),
       channels=st.one_of(st.none(), st.integers(1, DK)))
def test_normalized_scores_match_the_reference_and_lie_in_unit_range(tmp_path_factory, seed, n, k, channels):
    rng = np.random.default_rng(seed)
    database = random_codes(rng, n)
    database.bits[0] = 0  # an all-zero code scores 0, not NaN
    queries = random_codes(rng, 3)
    with CodeIndex.create(tmp_path_factory.mktemp("idx") / "idx", DK, DT) as index:
        index.append(database)
        raw, ids = index.search(queries, k=k, channels=channels)
        scores, same_ids = index.search(queries, k=k, channels=channels, normalize=True)
    np.testing.assert_array_equal(ids, same_ids)  # the ranking stays the raw one
    expected = reference.masked_cosine_reference(queries.bits, queries.channel_mean, database.bits, DT, channels)
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, 1), rtol=0, atol=1e-12)
    assert np.all(np.abs(scores) <= 1.0) and np.all(np.sign(scores) == np.sign(raw))


def test_verify_policy_and_mode_arguments_are_checked(tmp_path):
    CodeIndex.create(tmp_path / "idx", DK, DT).close()
    with pytest.raises(UsageError, match="verify: expected one of"):
        CodeIndex.open(tmp_path / "idx", verify=True)
    with pytest.raises(UsageError, match="mode"):
        CodeIndex.open(tmp_path / "idx", mode="w")
    assert issubclass(CodeIndexError, CrossLayerError)
