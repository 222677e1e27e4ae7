"""Every row of the README's "Command line" table run as typed, in a child process with progress on: the row's
command with its placeholders filled in (tiny generated images), then only options that make it fast (an untrained
network at a small side, one thread). A row added to the table without an entry here fails the first test."""

import json
import shlex

import pytest

from _cli import ok, run_cli
from _images import write_block_images
from test_cli_commands import SIDE, TINY, index, manifest_set, photos  # noqa: F401 (fixtures)
from test_cli_readme import readme_table_commands

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

NETWORK = ["--weights", "random", "--side", SIDE, "--threads", "1"]
# each table row -> the options appended to it (placeholders are filled by `_fill`); the demo row runs in
# test_cli_readme.py (the pretrained network on the bundled photos), as typed
FAST = {
    "crosslayer export --backbone B": ["--weights", "random"],
    "crosslayer extract SOURCE DB": TINY,
    "crosslayer info [PATH]": [],
    "crosslayer index build DB --images FOLDER\\|CSV": TINY,
    "crosslayer search DB QUERY... --top 10 --channels all --sheet out.png": ["--threads", "1"],
    "crosslayer heatmap IMAGE --out heat.png --channels 6": NETWORK,
    "crosslayer eval classify --data DIR --method M --json OUT": [
        *NETWORK, "--folds", "2", "--fit-images", "4"],
    "crosslayer eval retrieve --data DIR [--distractors DIR...] --json OUT": [
        *TINY, "--learn-images", "6", "--channels", "3,all", "--spoc-dim", "4", "--no-float"],
}
RUN_ELSEWHERE = {"crosslayer demo"}


def test_every_row_of_the_table_is_run_here():
    assert set(readme_table_commands()) == set(FAST) | RUN_ELSEWHERE


@pytest.fixture(scope="module")
def retrieval_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    images = write_block_images(root / "set", 4, side=SIDE)
    write_block_images(root / "distractors", 6, seed=5, side=SIDE)
    rows = "path,item\n" + "".join(f"set/{p.name},{p.stem}\n" for p in images)
    (root / "queries.csv").write_text(rows)
    (root / "database.csv").write_text(rows)
    return root


def _fill(row: str, values: dict) -> list[str]:
    """The row's words with each placeholder replaced (optional brackets dropped, `...` lists given one value)."""
    words = []
    for word in shlex.split(row.replace("\\|", "|"))[1:]:
        word = word.strip("[]")
        if word.endswith("..."):
            word = word[:-3]
        words.append(str(values.get(word, word)))
    return words


@pytest.mark.parametrize("row", sorted(FAST))
def test_the_readme_row_runs_as_typed(row, photos, index, manifest_set, retrieval_set, tmp_path):  # noqa: F811
    root, images = photos
    retrieval = "eval retrieve" in row
    values = {
        "B": "mobilenet_v2", "SOURCE": root / "db", "DB": tmp_path / "db", "PATH": index,
        "FOLDER|CSV": root / "db", "QUERY": images[0], "IMAGE": images[1], "M": "crosslayer",
        "DIR": retrieval_set if retrieval else manifest_set, "OUT": tmp_path / "out.json",
        "out.png": tmp_path / "out.png", "heat.png": tmp_path / "heat.png",
    }
    if row.startswith("crosslayer search"):
        values["DB"] = index
    words = _fill(row, values)
    if retrieval:  # the optional distractor list, given: its placeholder became the data folder
        words[words.index("--distractors") + 1] = str(retrieval_set / "distractors")
    if "--cache" not in FAST[row] and row.startswith("crosslayer eval"):
        words += ["--cache", str(tmp_path / "cache")]
    done = ok(run_cli(*words, *FAST[row]))
    if row.startswith("crosslayer search"):
        assert (tmp_path / "out.png").stat().st_size > 0 and images[0].name in done.stdout
    elif row.startswith("crosslayer heatmap"):
        assert (tmp_path / "heat.png").stat().st_size > 0
    elif row.startswith("crosslayer info"):
        assert json.loads(done.stdout)["images"] == 6
    elif row.startswith(("crosslayer extract", "crosslayer index build")):
        assert json.loads(ok(run_cli("info", tmp_path / "db")).stdout)["images"] == 6
    elif row.startswith("crosslayer eval"):
        assert json.loads((tmp_path / "out.json").read_text())
    else:
        assert done.stdout.strip().endswith(".onnx")
