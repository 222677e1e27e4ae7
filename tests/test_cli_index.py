"""Index management on the command line, end to end as a user types it (child processes, progress on): ls, rm,
compact, verify, export, rebase, info, and search by folder, CSV, key or code file, as text or JSON; a corrupted
index, another encoder's codes and other settings give one-line errors and lose nothing."""

import json
import shutil

import pytest

from _cli import ok, one_line_error, run_cli
from _images import write_block_images
from test_cli_commands import SIDE, TINY

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def built(tmp_path_factory, backbone_cache):
    root = tmp_path_factory.mktemp("managed")
    images = write_block_images(root / "photos", 6, side=SIDE)
    db = root / "db"
    ok(run_cli("index", "build", db, "--images", root / "photos", *TINY, "--embeddings", "--commit-seconds", "5"))
    return db, images


@pytest.fixture
def db(built, tmp_path):
    copy = tmp_path / "db"
    shutil.copytree(built[0], copy)
    return copy


def listed(db, *options):
    return [line.split("\t") for line in ok(run_cli("index", "ls", db, *options)).stdout.splitlines()]


def search_json(db, *arguments):
    return json.loads(ok(run_cli("search", db, *arguments, "--json", "--threads", "1")).stdout)


def test_ls_lists_keys_with_ids_in_pages(built):
    db = built[0]
    assert listed(db) == [[str(i), f"img{i:02d}.png"] for i in range(6)]
    page = json.loads(ok(run_cli("index", "ls", db, "--offset", "2", "--limit", "3", "--json")).stdout)
    assert page["total"] == 6 and [(item["id"], item["key"]) for item in page["items"]] == [
        (2, "img02.png"), (3, "img03.png"), (4, "img04.png")]
    assert listed(db, "--offset", "6") == []


def test_rm_then_search_skips_and_compact_reclaims(db, built):
    _, images = built
    before = search_json(db, "--key", "img00.png", "--top", "6")["queries"][0]["hits"]
    assert [hit["key"] for hit in before][0] == "img00.png" and len(before) == 6

    # an absent key deletes nothing
    one_line_error(run_cli("index", "rm", db, "img01.png", "no-such.png"), "no-such.png", "nothing was deleted")
    done = ok(run_cli("index", "rm", db, "img01.png", str(images[3])))  # a key or the image's path
    assert "deleted 2 images; 4 left" in done.stdout
    assert [key for _, key in listed(db)] == ["img00.png", "img02.png", "img04.png", "img05.png"]
    after = search_json(db, "--key", "img00.png", "--top", "6")["queries"][0]["hits"]
    assert [h["key"] for h in after] == [h["key"] for h in before if h["key"] not in ("img01.png", "img03.png")]
    assert [h["score"] for h in after] == [h["score"] for h in before if h["key"] not in ("img01.png", "img03.png")]
    one_line_error(run_cli("search", db, "--key", "img01.png"), "not in the index", "img01.png")
    assert json.loads(ok(run_cli("info", db)).stdout)["deleted"] == 2

    done = ok(run_cli("index", "compact", db))
    numbers = [int(word) for word in done.stdout.replace(";", " ").split() if word.isdigit()]
    removed, before_bytes, after_bytes = numbers
    assert removed == 2 and after_bytes < before_bytes
    assert listed(db) == [["0", "img00.png"], ["1", "img02.png"], ["2", "img04.png"], ["3", "img05.png"]]
    summary = json.loads(ok(run_cli("info", db)).stdout)
    assert (summary["images"], summary["deleted"]) == (4, 0)
    assert ok(run_cli("index", "verify", db)).stdout.startswith(f"ok: {db}: 4 images")
    assert [h["score"] for h in search_json(db, "--key", "img00.png", "--top", "6")["queries"][0]["hits"]] == \
        [h["score"] for h in after]


def test_search_queries_from_a_folder_a_csv_and_normalized_scores(db, built, tmp_path):
    _, images = built
    raw = search_json(db, images[0].parent, "--top", "3")
    assert [q["query"] for q in raw["queries"]] == [str(p.resolve()) for p in images] and raw["score"] == "raw"
    encoder = json.loads(ok(run_cli("info", db)).stdout)["encoder"]
    channels, dt = encoder["Dk"], encoder["Dt"]  # every channel: the search default in a retrieval-pair index
    for query, image in zip(raw["queries"], images):
        assert query["kind"] == "image" and [h["rank"] for h in query["hits"]] == [1, 2, 3]
        assert query["hits"][0]["key"] == image.name and query["hits"][0]["path"] == str(image.resolve())
        assert all(isinstance(h["score"], int) and abs(h["score"]) <= channels * dt for h in query["hits"])
    assert set(raw["timings"]) >= {"encode_s", "search_s"}

    (tmp_path / "queries.csv").write_text(f"path,note\n{images[4]},a\n{images[1]},b\n")
    normalized = search_json(db, tmp_path / "queries.csv", "--top", "3", "--normalize")
    assert [q["query"] for q in normalized["queries"]] == [str(images[4].resolve()), str(images[1].resolve())]
    for query, raw_query in zip(normalized["queries"], [raw["queries"][4], raw["queries"][1]]):
        assert [h["id"] for h in query["hits"]] == [h["id"] for h in raw_query["hits"]]  # the raw ranking
        assert query["hits"][0]["score"] == pytest.approx(1.0)  # an image against itself
        assert all(-1.0 <= h["score"] <= 1.0 for h in query["hits"])
    # a key query uses the stored codes: the same hits as the image itself, nothing re-encoded
    by_key = search_json(db, "--key", "img04.png", "--top", "3")["queries"][0]
    assert by_key["kind"] == "key" and by_key["hits"] == raw["queries"][4]["hits"]


def _flip_a_byte(db):
    segment = sorted((db / "codes").glob("seg-*.xlc"))[-1]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    return segment


def test_a_flipped_byte_is_an_error_never_a_changed_score(db):
    segment = _flip_a_byte(db)
    done = run_cli("index", "verify", db)
    problems = [line for line in done.stdout.splitlines() if line.startswith("problem: ")]
    assert done.returncode == 1 and len(problems) == 1 and segment.name in problems[0] and "checksum" in problems[0]
    assert "Traceback" not in done.stderr
    one_line_error(run_cli("search", db, "--key", "img00.png", "--threads", "1"), segment.name, "checksum")
    one_line_error(run_cli("search", db, "--key", "img00.png", "--verify", "full"), "checksum")
    _flip_a_byte(db)  # flipped back: nothing was lost
    assert ok(run_cli("index", "verify", db)).stdout.startswith("ok: ")


def test_export_codes_search_with_them_and_another_encoder_is_refused(db, built, tmp_path):
    root = built[1][0].parent
    out = tmp_path / "two.xlc"
    assert "exported 2 images" in ok(run_cli("index", "export", db, out, "--keys", "img02.png", "img05.png")).stdout
    found = search_json(db, out, "--top", "2")
    assert [q["query"] for q in found["queries"]] == ["img02.png", "img05.png"]
    assert [q["hits"][0]["key"] for q in found["queries"]] == ["img02.png", "img05.png"]
    one_line_error(run_cli("index", "export", db, tmp_path / "dup.xlc", "--keys", "img02.png", "img02.png"),
                   "given more than once")
    one_line_error(run_cli("index", "export", db, tmp_path / "none.xlc", "--keys", "nope.png"), "not in the index")
    assert not (tmp_path / "dup.xlc").exists() and not (tmp_path / "none.xlc").exists()

    # the same shape of codes (1280 x Dt) from another network: refused both ways
    other = tmp_path / "efficientnet"
    ok(run_cli("index", "build", other, "--images", root, *TINY, "--backbone", "efficientnet_lite0", "--quiet"))
    one_line_error(run_cli("search", other, out, "--threads", "1"), "cannot be mixed")
    ok(run_cli("index", "export", other, tmp_path / "other.xlc"))
    one_line_error(run_cli("search", db, tmp_path / "other.xlc", "--threads", "1"), "cannot be mixed")
    # codes of unknown origin (saved without an identity) are refused too, saying how to stamp them
    from crosslayer import Codes

    theirs = Codes.load(tmp_path / "other.xlc")
    Codes(theirs.bits, theirs.channel_mean, theirs.Dt).save(tmp_path / "noid.xlc")
    one_line_error(run_cli("search", db, tmp_path / "noid.xlc", "--threads", "1"), "noid.xlc",
                   "carry no encoder identity", "with_identity")
    # building on an index with other settings names them; adding takes no encoder settings
    one_line_error(run_cli("index", "build", db, "--images", root, *TINY[:2], "--side", "96"),
                   "built with another encoder", "side 64 (requested 96)")
    one_line_error(run_cli("index", "add", db, "--images", root, "--side", "96"), "unrecognized arguments: --side")
    summary = json.loads(ok(run_cli("info", db)).stdout)
    assert summary["images"] == 6 and summary["identity"]["backbone"] == "mobilenet_v2"


def test_a_moved_image_folder_is_named_until_rebased(db, built, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(built[1][0].parent, photos)
    ok(run_cli("index", "rebase", db, photos))
    moved = tmp_path / "moved"
    photos.rename(moved)
    rebase = f"crosslayer index rebase {db} NEW_ROOT"
    # adding (or resuming the build) from the new place would re-add everything under '../moved/...'
    one_line_error(run_cli("index", "add", db, "--images", moved, "--quiet"), "no longer exists", rebase)
    one_line_error(run_cli("index", "build", db, "--images", moved, *TINY, "--embeddings", "--quiet"),
                   "no longer exists", rebase)
    assert len(listed(db)) == 6
    sheet = tmp_path / "hits.png"
    done = ok(run_cli("search", db, moved / "img03.png", "--top", "2", "--threads", "1", "--sheet", sheet))
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 2 of 2 hit images are missing"), done.stderr
    assert warnings[0].endswith(f"run '{rebase}'") and sheet.is_file()
    ok(run_cli("index", "rebase", db, moved))
    done = ok(run_cli("search", db, moved / "img03.png", "--top", "2", "--threads", "1"))
    assert "warning" not in done.stderr
    assert "indexed 0 images (6 already there" in ok(run_cli("index", "add", db, "--images", moved, "--quiet")).stdout


def test_search_skips_bad_query_images_unless_asked_to_stop(built, tmp_path):
    db = built[0]
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(built[1][3], queries / "good.png")
    (queries / "._good.png").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # a macOS resource fork
    (queries / "empty.jpg").write_bytes(b"")
    done = ok(run_cli("search", db, queries, "--top", "1", "--threads", "1"))
    assert [line for line in done.stdout.splitlines() if line.startswith("query ")] == [f"query {queries / 'good.png'}"]
    failures = [line for line in done.stderr.splitlines() if line.startswith("failed query: ")]
    assert [line.split(": ")[1] for line in failures] == [str(queries / "._good.png"), str(queries / "empty.jpg")]
    found = search_json(db, queries, "--top", "1")
    assert [q["query"] for q in found["queries"]] == [str(queries / "good.png")]
    assert found["queries"][0]["hits"][0]["key"] == "img03.png"
    assert [f["query"] for f in found["failed"]] == [str(queries / "._good.png"), str(queries / "empty.jpg")]
    assert all(f["reason"] for f in found["failed"])
    one_line_error(run_cli("search", db, queries, "--on-error", "raise", "--threads", "1"), "._good.png")
    # nothing searchable at all is an error, not an empty result
    one_line_error(run_cli("search", db, queries / "empty.jpg", "--threads", "1"), "empty.jpg")


def test_rebase_after_moving_the_images_and_info(db, built, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(built[1][0].parent, moved)
    done = ok(run_cli("index", "rebase", db, moved))
    assert done.stdout.strip().endswith(f"-> {moved.resolve()}") and "warning" not in done.stderr
    assert [key for _, key in listed(db)] == [f"img{i:02d}.png" for i in range(6)]
    hits = search_json(db, moved / "img03.png", "--top", "1")["queries"][0]["hits"]
    assert hits[0]["path"] == str((moved / "img03.png").resolve())
    summary = json.loads(ok(run_cli("info", db)).stdout)
    assert summary["root"] == str(moved.resolve()) and summary["failed"] == 0 and summary["bytes"] > 0
    assert summary["identity"]["backbone"] == "mobilenet_v2" and len(summary["identity"]["digest"]) == 16
    done = ok(run_cli("index", "rebase", db, tmp_path))
    assert "warning: 6 of 6 indexed images are not under" in done.stderr
