"""Guidance heatmaps: the colour map, where a hot cell lands in the rendered sheet, the channels chosen (the masked
search's), the sheet's documented size and the command line's argument checks (a random-weight MobileNetV2 on tiny
generated images)."""

import functools
import json

import numpy as np
import pytest

from crosslayer.heatmap import (GuidanceMaps, choose_channels, colormap, heatmap_size, render_heatmaps, tile_origin,
                                upsample)
from crosslayer.search import select_channels
from _images import write_block_images  # noqa: E402

SIDE = 64
TINY = ["--weights", "random", "--side", str(SIDE), "--fit-images", "4", "--batch-size", "4", "--threads", "1"]


def _luminance(rgb):
    return np.asarray(rgb, np.float64) @ np.array([0.2126, 0.7152, 0.0722])


_write_images = functools.partial(write_block_images, side=SIDE)


def test_colour_map_brightens_monotonically():
    luminance = _luminance(colormap(np.linspace(0, 1, 256)))
    assert np.all(np.diff(luminance) > 0)
    assert luminance[0] < 5 and luminance[-1] > 230


def test_hottest_pixel_of_each_overlay_lies_in_its_hot_cell(tmp_path):
    from PIL import Image

    cells, tile = 7, 70  # each guidance cell covers a 10 x 10 block of a tile
    guidance = np.zeros((4, cells, cells), np.float32)
    guidance[2, 1, 5] = 3.0  # row 1, column 5: not on a diagonal, so swapped axes would show
    guidance[3, 6, 0] = 1.0
    maps = GuidanceMaps("synthetic", np.zeros((SIDE, SIDE, 3), np.uint8), guidance,
                        guidance.mean(axis=(1, 2)), {"policy": "square"})
    out = tmp_path / "heat.png"
    size = render_heatmaps(maps, [2, 3, 0], out, tile=tile)
    with Image.open(out) as sheet:
        assert sheet.size == size == heatmap_size(3, tile)
        pixels = np.asarray(sheet.convert("RGB"))

    def tile_luminance(position):
        left, top = tile_origin(position, tile)
        return _luminance(pixels[top : top + tile, left : left + tile])

    for position, (row, column) in [(2, (1, 5)), (3, (6, 0))]:  # channels 2 and 3
        brightness = tile_luminance(position)
        y, x = np.unravel_index(np.argmax(brightness), brightness.shape)
        assert (y // 10, x // 10) == (row, column)
    # one colour scale for all channel tiles: channel 3's peak (a third of channel 2's) is dimmer
    assert tile_luminance(3).max() < tile_luminance(2).max() - 40
    # the all-zero channel 0 is cold everywhere; the sum shows both hot cells, the stronger one brightest
    assert tile_luminance(4).max() < tile_luminance(3).max()
    total = tile_luminance(1)
    assert np.unravel_index(np.argmax(total), total.shape)[0] // 10 == 1
    assert total[65, 5] > total[35, 35] + 20


def test_upsampling_centres_each_cell_on_its_block():
    activation = np.zeros((4, 4), np.float32)
    activation[3, 1] = 1.0
    heat = upsample(activation, 64)
    assert heat.shape == (64, 64)
    assert np.unravel_index(np.argmax(heat), heat.shape) in {(y, x) for y in (55, 56) for x in (23, 24)}


def test_default_channels_are_the_searchs_selection_with_its_tie_rule():
    means = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.5], np.float32)
    chosen = choose_channels(means, channels=2)
    assert chosen.tolist() == [1, 2]  # three channels tie at 3.0: the smaller ids win, as in the search
    assert sorted(chosen.tolist()) == select_channels(means[None], 2)[0].tolist()
    assert choose_channels(means, channels=4).tolist() == [1, 2, 4, 3]  # strongest first
    assert choose_channels(means, channel_ids=[5, 0]).tolist() == [5, 0]  # explicit ids in the order given
    # many ties among many channels, where an unstable sort would pick other ones
    many = np.random.default_rng(3).integers(0, 4, 1280).astype(np.float32)
    expected = sorted(range(1280), key=lambda c: (-many[c], c))[:50]
    assert choose_channels(many, channels=50).tolist() == expected


@pytest.mark.parametrize("kwargs, expected", [
    ({"channels": 0}, "channels: expected an integer >= 1"),
    ({"channels": 7}, "channels: expected at most 6"),
    ({"channel_ids": [6]}, "6 is not a guidance channel"),
    ({"channel_ids": [1, 1]}, "distinct"),
    ({"channel_ids": []}, "at least one"),
])
def test_bad_channel_choices_are_refused(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        choose_channels(np.ones(6, np.float32), **kwargs)


# ---- with a (random-weight) backbone -------------------------------------------------------------------------------

def test_cli_heatmap_shows_the_channels_a_search_compares(backbone_cache, tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from crosslayer import reference
    from crosslayer.commands import main
    from crosslayer.heatmap import HEATMAP_FORMAT, guidance_maps, read_heatmap_settings
    from crosslayer.retrieval.image_index import ImageIndex

    images = _write_images(tmp_path / "imgs", 4)
    db = tmp_path / "index"
    assert main(["index", "build", str(db), "--images", str(tmp_path / "imgs"), *TINY]) == 0
    capsys.readouterr()
    out = tmp_path / "heat.png"
    assert main(["heatmap", str(images[1]), "--out", str(out), "--index", str(db), "--channels", "5",
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    with Image.open(out) as sheet:
        assert sheet.size == heatmap_size(5)
        assert json.loads(sheet.text[HEATMAP_FORMAT])["format"] == HEATMAP_FORMAT
    meta = read_heatmap_settings(out)  # a crosslayer.formats document: version and checksum checked
    assert meta["version"] == 2 and meta["side"] == SIDE

    with ImageIndex.open(db, "r", threads=1) as index:
        encoder = index.encoder
        query = encoder.encode([str(images[1])])  # the codes a search with this query ranks channels by
        maps = guidance_maps(encoder, images[1])
    searched = select_channels(query.channel_mean, 5)[0].tolist()
    assert sorted(meta["channels"]) == searched
    assert printed.split(": ", 1)[1].split(", ")[0].split(" ")[0] == str(meta["channels"][0])
    np.testing.assert_array_equal(maps.channel_mean, query.channel_mean[0])
    np.testing.assert_allclose(maps.channel_mean, reference.channel_mean(maps.guidance[None])[0], rtol=1e-5, atol=1e-7)
    assert maps.rgb.shape == (SIDE, SIDE, 3)

    # the contact sheet's query tile shows the same channels' summed maps; the hits' tiles are unchanged
    from crosslayer.heatmap import attended_region
    from crosslayer.retrieval.sheet import PAD, THUMB

    sheets = {}
    for name, extra in [("plain", []), ("heat", ["--heatmaps"])]:
        sheets[name] = tmp_path / f"sheet-{name}.png"
        assert main(["search", str(db), str(images[1]), "--top", "2", "--channels", "5", "--threads", "1",
                     "--sheet", str(sheets[name]), *extra]) == 0
    with Image.open(sheets["plain"]) as plain, Image.open(sheets["heat"]) as heat:
        plain, heat = np.asarray(plain.convert("RGB")), np.asarray(heat.convert("RGB"))
    query_tile = (slice(PAD + 1, PAD + THUMB - 1), slice(PAD + 1, PAD + THUMB - 1))  # inside the frame
    expected = attended_region(maps, searched, THUMB)[0][1:-1, 1:-1]
    np.testing.assert_array_equal(heat[query_tile], expected)
    assert not np.array_equal(plain[query_tile], expected)
    hits = (slice(PAD, PAD + THUMB), slice(2 * PAD + THUMB, None))
    np.testing.assert_array_equal(heat[hits], plain[hits])
    with pytest.raises(SystemExit):
        main(["search", str(db), str(images[1]), "--heatmaps"])
    assert "give --sheet too" in capsys.readouterr().err


def test_cli_heatmap_checks_its_arguments_before_running_the_backbone(tmp_path, capsys, monkeypatch):
    from crosslayer.commands import main
    from crosslayer.encoder import CrossLayerEncoder

    def no_backbone(self):
        raise AssertionError("the backbone ran before the arguments were checked")

    monkeypatch.setattr(CrossLayerEncoder, "_backbone", no_backbone)
    (image,) = _write_images(tmp_path / "imgs", 1)
    out = tmp_path / "heat.png"
    for bad, expected in [(["--channel-ids", "3,1280"], "1280 is not a guidance channel"),
                          (["--channel-ids", "3,x"], "--channel-ids: expected comma-separated integers"),
                          (["--channels", "0"], "channels: expected an integer >= 1"),
                          (["--channels", "1281"], "channels: expected at most"),
                          (["--out", str(tmp_path / "heat.jpg")], "expected a .png file name"),
                          (["--index", str(tmp_path), "--side", "64"], "--side: the network and its input size"),
                          (["--side", "16"], "--side: expected an integer in [32, 4096], got 16"),
                          (["--side", "100000"], "--side: expected an integer in [32, 4096], got 100000"),
                          (["--image-missing"], "no such file")]:
        arguments = ["heatmap", str(image), "--out", str(out), "--weights", "random"]
        if bad == ["--image-missing"]:
            arguments[1] = str(tmp_path / "missing.png")
        else:
            arguments += bad
        with pytest.raises(SystemExit) as exit_info:
            main(arguments)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and expected in error and error.count("\n") == 1, error
    assert not out.exists() and not (tmp_path / "heat.jpg").exists()


def test_sheet_shows_given_query_pixels_instead_of_the_file(tmp_path):
    from PIL import Image

    from crosslayer.retrieval.sheet import PAD, SheetHit, SheetRow, render_sheet

    (image,) = _write_images(tmp_path / "imgs", 1)
    red = np.zeros((SIDE, SIDE, 3), np.uint8)
    red[..., 0] = 255
    rows = [SheetRow(str(image), [SheetHit(str(image), 3)], query_pixels=red, query_caption="query, heat: 6 ch")]
    render_sheet(rows, tmp_path / "sheet.png", thumb=SIDE)
    with Image.open(tmp_path / "sheet.png") as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert (pixels[PAD + 2 : PAD + SIDE - 2, PAD + 2 : PAD + SIDE - 2] == (255, 0, 0)).all()
    render_sheet(rows, tmp_path / "sheet.html", thumb=SIDE)
    plain = [SheetRow(str(image), rows[0].hits)]
    render_sheet(plain, tmp_path / "plain.html", thumb=SIDE)
    shown, unchanged = (tmp_path / "sheet.html").read_text(), (tmp_path / "plain.html").read_text()
    assert "query, heat: 6 ch" in shown and shown.split("<td>")[1] != unchanged.split("<td>")[1]
    assert shown.split("<td>")[2] == unchanged.split("<td>")[2]
