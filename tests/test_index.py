import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import crosslayer
from crosslayer import CodeIndex, CodeIndexError, Codes, formats, reference

DK, DT = 6, 70


def random_codes(rng, n, dk=DK, dt=DT):
    signs = rng.integers(-1, 2, size=(n, dk, dt)).astype(np.int8)
    return Codes(reference.pack_ternary(signs), rng.integers(0, 3, (n, dk)).astype(np.float32), dt)


def test_append_search_reopen_and_keys(tmp_path, rng):
    parts = [random_codes(rng, n) for n in (3, 0, 8, 1)]
    everything = Codes.concatenate(parts)
    queries = random_codes(rng, 4)
    with CodeIndex.create(tmp_path / "idx", DK, DT) as index:
        assert len(index) == 0
        assert index.search(queries, k=5, channels=2)[0].shape == (4, 0)
        ids = [index.append(part, keys=[f"img{i}_{j}.jpg" for j in range(len(part))] if i != 2 else None)
               for i, part in enumerate(parts)]
        np.testing.assert_array_equal(np.concatenate(ids), np.arange(12))
    with CodeIndex.open(tmp_path / "idx") as index:
        assert len(index) == 12 and not index.writable
        for k in (1, 5, 12, 40):
            scores, found = index.search(queries, k=k, channels=3)
            expected = crosslayer.search(queries, everything, k=k, channels=3)
            np.testing.assert_array_equal(scores, expected[0])
            np.testing.assert_array_equal(found, expected[1])
        assert index.get([0, 11, 5]) == everything[np.array([0, 11, 5])]
        assert index.keys([0, 2, 3, 11]) == ["img0_0.jpg", "img0_2.jpg", None, "img3_0.jpg"]
        with pytest.raises(CodeIndexError, match="read-only"):
            index.append(parts[0])
        with pytest.raises(IndexError):
            index.get([12])
        with pytest.raises(ValueError, match="channels"):
            index.search(queries, channels=DK + 1)


def test_single_writer_and_reader_snapshots(tmp_path, rng):
    path = tmp_path / "idx"
    writer = CodeIndex.create(path, DK, DT)
    writer.append(random_codes(rng, 4))
    with pytest.raises(CodeIndexError, match="another process"):
        CodeIndex.open(path, mode="a")
    reader = CodeIndex.open(path)
    writer.append(random_codes(rng, 3))
    queries = random_codes(rng, 2)
    assert len(reader) == 4 and reader.search(queries, k=10, channels=3)[1].max() < 4  # the manifest it opened
    reader.reload()
    assert len(reader) == 7
    writer.close()
    with CodeIndex.open(path, mode="a") as again:
        again.append(random_codes(rng, 1))
        assert len(again) == 8
    reader.close()
    with pytest.raises(CodeIndexError, match="closed"):
        reader.search(queries)


def test_key_tables_are_read_once_and_new_segments_are_seen(tmp_path, rng, monkeypatch):
    reads = []
    real_read = CodeIndex._read_key_table

    def counting_read(self, segment):
        if not self.writable:  # the writer reads its tables too, to refuse duplicate keys
            reads.append(segment["file"])
        return real_read(self, segment)

    monkeypatch.setattr(CodeIndex, "_read_key_table", counting_read)
    writer = CodeIndex.create(tmp_path / "idx", DK, DT)
    writer.append(random_codes(rng, 3), keys=["a", "b", "c"])
    writer.append(random_codes(rng, 1))
    reader = CodeIndex.open(tmp_path / "idx", verify="none")
    assert reader.keys([2, 0]) == ["c", "a"] and reader.keys([1, 3]) == ["b", None]
    assert reads == ["seg-00000000.xlc"]
    writer.append(random_codes(rng, 2), keys=["d", "e"])
    with pytest.raises(IndexError):
        reader.keys([5])  # the reader's snapshot until it reloads
    reader.reload()
    assert reader.keys([5, 0, 4]) == ["e", "a", "d"]
    assert reads == ["seg-00000000.xlc", "seg-00000002.xlc"]
    reader.close()
    with CodeIndex.open(tmp_path / "idx", verify="none") as again:  # a new index object reads afresh
        assert again.keys([1]) == ["b"] and reads[-1] == "seg-00000000.xlc" and len(reads) == 3
    writer.close()


def test_an_index_recording_an_identity_refuses_codes_of_unknown_origin(tmp_path, rng):
    from crosslayer.codes import IdentityMismatchError

    digest = "0123456789abcdef"
    unknown = random_codes(rng, 3)
    with CodeIndex.create(tmp_path / "idx", DK, DT, identity=digest) as index:
        with pytest.raises(IdentityMismatchError, match=f"no encoder identity.*{digest}.*with_identity"):
            index.append(unknown)
        ids = index.append(unknown.with_identity(digest))
        with pytest.raises(IdentityMismatchError, match="queries: codes carry no encoder identity"):
            index.search(unknown, k=2, channels=2)
        with pytest.raises(IdentityMismatchError, match="queries"):
            index.rerank(unknown, [ids] * 3, k=2, channels=2)
        stamped = Codes(unknown.bits, unknown.channel_mean, DT, identity=digest)
        np.testing.assert_array_equal(index.search(stamped, k=3, channels=2)[1],
                                      index.search(unknown.with_identity(digest), k=3, channels=2)[1])
        unknown.save(tmp_path / "noid.xlc", keys=["a", "b", "c"])
        with pytest.raises(IdentityMismatchError, match="code_file"):
            index.adopt(tmp_path / "noid.xlc")
    with pytest.raises(IdentityMismatchError, match="cannot be mixed"):
        stamped.with_identity("fedcba9876543210")
    # raw kernels: an index created without identity takes (and searches) codes without one
    with CodeIndex.create(tmp_path / "raw", DK, DT) as raw:
        raw.append(unknown)
        assert raw.search(unknown, k=1, channels=None)[1][:, 0].tolist() == [0, 1, 2]


def test_create_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Dk"):
        CodeIndex.create(tmp_path / "a", 0, DT)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(CodeIndexError, match="not an empty directory"):
        CodeIndex.create(tmp_path / "b", DK, DT)
    with pytest.raises(CodeIndexError, match="not a crosslayer code index"):
        CodeIndex.open(tmp_path / "b")
    with CodeIndex.create(tmp_path / "c", DK, DT) as index:
        with pytest.raises(ValueError, match="codes: Dk=5"):
            index.append(random_codes(np.random.default_rng(0), 2, dk=5))
        with pytest.raises(ValueError, match="keys"):
            index.append(random_codes(np.random.default_rng(0), 2), keys=["only one"])
        # a bare string used to become one key per character
        for keys in ("ab", b"ab"):
            with pytest.raises(TypeError, match="keys: expected a sequence of strings"):
                index.append(random_codes(np.random.default_rng(0), 2), keys=keys)
        assert len(index) == 0


def test_search_validates_num_threads(committed_index, rng):
    queries = random_codes(rng, 2)
    with CodeIndex.open(committed_index) as index:
        expected = index.search(queries, k=4, channels=3)
        with pytest.raises(TypeError, match="num_threads: expected an integer >= 0"):
            index.search(queries, k=4, channels=3, num_threads="2")
        with pytest.raises(ValueError, match="num_threads"):
            index.search(queries, k=4, channels=3, num_threads=-1)
        for threads in (1, 10**10):
            for got, want in zip(index.search(queries, k=4, channels=3, num_threads=threads), expected):
                np.testing.assert_array_equal(got, want)


@pytest.fixture
def committed_index(tmp_path, rng):
    path = tmp_path / "idx"
    with CodeIndex.create(path, DK, DT) as index:
        index.append(random_codes(rng, 5), keys=list("abcde"))
        index.append(random_codes(rng, 4))
    return path


def test_truncated_segment_is_a_clear_error(committed_index):
    segment = committed_index / "seg-00000001.xlc"
    segment.write_bytes(segment.read_bytes()[:-7])
    with pytest.raises(CodeIndexError, match="truncated"):
        CodeIndex.open(committed_index, verify="none")


def test_tampered_payload_manifest_and_keys_are_clear_errors(committed_index):
    segment = committed_index / "seg-00000000.xlc"
    original = segment.read_bytes()
    for offset in (100, len(original) - 3):  # in the bits; in the key block
        tampered = bytearray(original)
        tampered[offset] ^= 0x10
        segment.write_bytes(bytes(tampered))
        with pytest.raises(CodeIndexError, match="checksum mismatch"):
            CodeIndex.open(committed_index, verify="full")
    segment.write_bytes(original)

    manifest = committed_index / "MANIFEST.json"
    good = manifest.read_text()
    manifest.write_text(good.replace('"count": 9', '"count": 10'))
    with pytest.raises(CodeIndexError, match="checksum mismatch"):
        CodeIndex.open(committed_index)
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(CodeIndexError, match="not valid JSON"):
        CodeIndex.open(committed_index)
    manifest.write_text(good.replace('"version": 4', '"version": 2'))
    with pytest.raises(CodeIndexError, match="version 2; this crosslayer reads version 3, 4"):
        CodeIndex.open(committed_index)
    manifest.write_text(good)
    (committed_index / "seg-00000001.xlc").unlink()
    with pytest.raises(CodeIndexError, match="missing"):
        CodeIndex.open(committed_index)


def rewrite_segment(index_path, number, bits):
    """Rewrites segment `number` with `bits`, checksums consistent in it and in the manifest, as another tool could
    have written it."""
    segment = index_path / f"seg-{number:08d}.xlc"
    data = segment.read_bytes()
    size = formats.CodeFile.parse(data, segment).bits_offset
    header, payload = bytearray(data[:size]), bytearray(data[size:])
    payload[: bits.nbytes] = bits.astype("<u8").tobytes()
    crc = zlib.crc32(bytes(payload), zlib.crc32(bytes(header[:-4])))
    header[-4:] = crc.to_bytes(4, "little")
    segment.write_bytes(bytes(header + payload))
    body = formats.read_json(index_path / "MANIFEST.json", "crosslayer-code-index", 4)
    body.pop("version")
    body["segments"][number]["crc32"] = crc
    formats.write_json(index_path / "MANIFEST.json", "crosslayer-code-index", 4, body)


def test_segment_bits_breaking_the_layout_are_rejected(committed_index):
    with CodeIndex.open(committed_index) as index:
        bits = index.get(np.arange(5)).bits.copy()
    bits[3, 0, 0, -1] |= np.uint64(1) << np.uint64(DT % 64)  # a padding bit past Dt, behind a valid checksum
    rewrite_segment(committed_index, 0, bits)
    with pytest.raises(CodeIndexError, match="seg-00000000.xlc: invalid code bits: item 3 has padding bits set"):
        CodeIndex.open(committed_index, verify="full")
    with CodeIndex.open(committed_index) as index:  # lazy: refused when the segment is first read
        with pytest.raises(CodeIndexError, match="invalid code bits"):
            index.search(random_codes(np.random.default_rng(0), 1), k=2, channels=3)
    with CodeIndex.open(committed_index, verify="none") as index:
        assert len(index.get([4, 6])) == 2
        with pytest.raises(CodeIndexError, match="bits: item 0 has padding bits set"):
            index.get([3])



def test_the_check_reads_segments_in_chunks_and_names_the_item_across_them(committed_index, monkeypatch):
    """The check walks a segment chunk by chunk (dropping each chunk's pages, so verifying a large index does not keep
    it resident): a bad item in a later chunk is still found and named by its number in the segment."""
    import crosslayer.index as index_module

    with CodeIndex.open(committed_index) as index:
        bits = index.get(np.arange(5)).bits.copy()
        item_bytes = bits[0].nbytes
    bits[3, 0, 0, -1] |= np.uint64(1) << np.uint64(DT % 64)
    rewrite_segment(committed_index, 0, bits)
    monkeypatch.setattr(index_module, "_VERIFY_CHUNK_BYTES", 2 * item_bytes)  # chunks of 2 items: item 3 is in the 2nd
    with pytest.raises(CodeIndexError, match="seg-00000000.xlc: invalid code bits: item 3 has padding bits set"):
        CodeIndex.open(committed_index, verify="full")

# A child appends deterministic batches in a loop and reports each commit; the parent kills it with SIGKILL.
_WRITER_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from crosslayer import CodeIndex, Codes, reference

    def batch(i):
        rng = np.random.default_rng(i)
        n = 1 + i % 7
        signs = rng.integers(-1, 2, size=(n, {dk}, {dt})).astype(np.int8)
        return Codes(reference.pack_ternary(signs), rng.random((n, {dk}), dtype=np.float32), {dt})

    index = CodeIndex.open(sys.argv[1], mode="a")
    i = len(index._manifest["segments"])
    while True:
        index.append(batch(i), keys=[f"{{i}}/{{j}}" for j in range(1 + i % 7)])
        print(i, flush=True)
        i += 1
    """
).format(dk=DK, dt=DT)


def _expected_batch(i):
    rng = np.random.default_rng(i)
    n = 1 + i % 7
    signs = rng.integers(-1, 2, size=(n, DK, DT)).astype(np.int8)
    return Codes(reference.pack_ternary(signs), rng.random((n, DK), dtype=np.float32), DT)


def test_killed_writer_leaves_every_committed_item_and_nothing_corrupt(tmp_path, rng):
    path = tmp_path / "idx"
    CodeIndex.create(path, DK, DT).close()
    env = dict(os.environ, PYTHONPATH=str(Path(crosslayer.__file__).resolve().parent.parent))
    for _ in range(2):
        child = subprocess.Popen([sys.executable, "-c", _WRITER_CHILD, str(path)], stdout=subprocess.PIPE, env=env, text=True)
        committed = int(child.stdout.readline())  # at least one append committed
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        committed = max([committed] + [int(line) for line in child.stdout.read().split()])
        child.stdout.close()
        with CodeIndex.open(path, verify="full") as index:
            segments = len(index._manifest["segments"])
            assert segments >= committed + 1  # every reported commit survived (the next may have, too)
            expected = Codes.concatenate([_expected_batch(i) for i in range(segments)])
            assert len(index) == len(expected)
            assert index.get(np.arange(len(index))) == expected
            assert index.keys([len(index) - 1]) == [f"{segments - 1}/{len(_expected_batch(segments - 1)) - 1}"]
    with CodeIndex.open(path, mode="a") as index:  # the writer removes what the crash left behind
        index.append(_expected_batch(0))
        named = {s["file"] for s in index._manifest["segments"]}
        leftovers = [p.name for p in path.iterdir() if p.name not in named and p.name not in ("MANIFEST.json", "WRITER.lock")]
        assert leftovers == []
