"""Contact sheets and the index/search command line end to end on tiny generated images (random-weight backbone)."""

import os

import pytest

from crosslayer.commands import main
from crosslayer.retrieval.sheet import SheetHit, SheetRow, render_sheet, sheet_size
from _images import write_block_images


def test_png_sheet_has_the_expected_size(tmp_path):
    from PIL import Image

    images = write_block_images(tmp_path / "imgs", 4)
    rows = [SheetRow(str(images[0]), [SheetHit(str(images[1]), 12, True), SheetHit(str(images[2]), 7, False),
                                      SheetHit(str(tmp_path / "missing.jpg"), 3)]),
            SheetRow(str(images[3]), [SheetHit(str(images[0]), 0.5)])]
    size = render_sheet(rows, tmp_path / "sheet.png", thumb=64)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == size == sheet_size(2, 3, thumb=64)
        # the first hit is framed green (correct), the second red (wrong)
        left, top = 8 + 1 * (64 + 8) + 8, 8
        assert sheet.getpixel((left - 1, top + 30))[1] > 120
        assert sheet.getpixel((left + 64 + 8 - 1, top + 30))[0] > 180


def test_html_sheet_inlines_every_thumbnail(tmp_path):
    images = write_block_images(tmp_path / "imgs", 3)
    render_sheet([SheetRow(str(images[0]), [SheetHit(str(p), 1) for p in images])], tmp_path / "sheet.html")
    assert (tmp_path / "sheet.html").read_text().count("data:image/jpeg;base64,") == 4


def test_sheet_rejects_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match=".png or .html"):
        render_sheet([SheetRow("q.jpg", [])], tmp_path / "sheet.gif")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    previous = os.environ.get("CROSSLAYER_CACHE")
    os.environ["CROSSLAYER_CACHE"] = str(tmp_path_factory.mktemp("models"))
    yield
    if previous is None:
        del os.environ["CROSSLAYER_CACHE"]
    else:
        os.environ["CROSSLAYER_CACHE"] = previous


TINY = ["--weights", "random", "--side", "64", "--fit-images", "6", "--batch-size", "4", "--threads", "1"]


def test_search_rejects_more_channels_than_the_encoder_has(tmp_path, model_cache, capsys):
    pytest.importorskip("torch")
    write_block_images(tmp_path / "db", 3)
    db = tmp_path / "index"
    assert main(["index", "build", str(db), "--images", str(tmp_path / "db"), *TINY]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(db), str(tmp_path / "db" / "img00.png"), "--channels", "5000", "--weights", "random"])
    assert exit_info.value.code == 2
    assert "channels: expected at most Dk=320 guidance channels" in capsys.readouterr().err


def test_search_of_a_missing_index_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(tmp_path / "nothing"), "q.jpg"])
    assert exit_info.value.code == 2
    assert "not a crosslayer image index" in capsys.readouterr().err


def test_eval_retrieve_end_to_end_on_identical_queries(tmp_path, model_cache, capsys):
    """Queries that are the database images themselves must be found first by every full-representation method."""
    import json

    pytest.importorskip("torch")
    images = write_block_images(tmp_path / "set", 5)
    write_block_images(tmp_path / "learn", 8, seed=2)
    rows = "path,item\n" + "".join(f"set/{p.name},{p.stem}\n" for p in images)
    (tmp_path / "queries.csv").write_text(rows)
    (tmp_path / "database.csv").write_text(rows)
    out = tmp_path / "eval.json"
    argv = ["eval", "retrieve", "--data", str(tmp_path), "--learn", str(tmp_path / "learn"), "--learn-images", "8",
            "--distractors", str(tmp_path / "learn"), "--channels", "3,all", "--spoc-dim", "4",
            "--cache", str(tmp_path / "cache"), "--json", str(out), *TINY]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| crosslayer-codes | 3 | 8 |" in table
    from crosslayer.retrieval.evaluate import read_results

    results = read_results(out)  # a checksummed crosslayer.formats document
    records = results["records"]
    assert (results["data"], results["distractors"]) == (str(tmp_path), [str(tmp_path / "learn")])
    found = {(r["method"], r["channels"]) for r in records}
    assert found == {("spoc", "all"), ("spoc-sign", "all"), ("embedding", "all"), ("crosslayer-float", "3"),
                     ("crosslayer-float", "all"), ("crosslayer-codes", "3"), ("crosslayer-codes", "all")}
    for r in records:
        assert (r["queries"], r["database"], r["distractors"]) == (5, 5, 8)
        assert set(r) >= {"map", "recall@1", "recall@5", "recall@10", "bytes_per_image", "search_ms", "encode_ms"}
        # (spoc-sign has 4 bits here: ties are likely and ranked against it)
        if r["method"] != "spoc-sign" and (r["method"] in ("spoc", "embedding") or r["channels"] == "all"):
            assert r["map"] == pytest.approx(1.0), r
    # a rerun reads the cache (same answer) and channel counts above Dk are refused
    assert main(argv) == 0
    assert json.loads(out.read_text())["records"][0]["map"] == records[0]["map"]
    with pytest.raises(SystemExit):
        main(argv[:-len(TINY)] + ["--channels", "2000", *TINY])
    assert "at most Dk=1280" in capsys.readouterr().err
