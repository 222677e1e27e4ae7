"""How the command line fails, in a child process as a user sees it: bad arguments, missing or unwritable files, a
full disk, Ctrl-C and a closed pipe each give one line (or nothing) and a status, never a traceback; a real bug keeps
its traceback."""

import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from _cli import child_env, one_line_error, run_cli, start_cli
from _images import write_block_images

SIDE = 64
NETWORK = ["--weights", "random", "--side", SIDE, "--threads", "1"]
TINY = [*NETWORK, "--fit-images", "6", "--batch-size", "2"]


@pytest.mark.parametrize("arguments, expected", [
    (["index", "build", "db", "--images", "x", "--side", "100000"], "crosslayer index build: error: argument --side: "
                                                                     "expected an integer in [32, 4096], got 100000"),
    (["index", "build", "db", "--images", "x", "--side", "100", "--backbone", "efficientnet_lite0"],
     "--side: efficientnet_lite0 needs a multiple of 32, got 100 (try 96)"),
    (["search", "db", "q.jpg", "--top", "0"], "argument --top: expected an integer >= 1, got 0"),
    (["search", "db", "q.jpg", "--channels", "many"], "argument --channels: expected an integer >= 1 or 'all', got 'many'"),
    (["heatmap", "x.png", "--out", "h.png", "--channel-ids", "3,x"], "--channel-ids: expected comma-separated integers"),
    (["eval", "classify", "--data", "d", "--method", "crosslayer", "--c-grid", "1,a"],
     "--c-grid: expected comma-separated numbers"),
    (["eval", "classify", "--data", "d", "--method", "crosslayer", "--layers", "features.16"],
     "--layers: expected two tap names"),
    (["index", "build", "db"], "crosslayer index build: error: the following arguments are required: --images"),
    (["index", "build", "db", "--images", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["index"], "crosslayer index: error: the following arguments are required: COMMAND"),
    (["info", "no/such/path"], "crosslayer info: error: PATH: no/such/path does not exist"),
    (["extract", "no/such/folder", "store"], "SOURCE: no/such/folder does not exist"),
])
def test_argument_errors_are_one_line_and_status_2(tmp_path, arguments, expected):
    one_line_error(run_cli(*arguments, cwd=tmp_path), expected)
    assert os.listdir(tmp_path) == []  # nothing written


def test_a_missing_index_is_named(tmp_path):
    one_line_error(run_cli("search", tmp_path / "nothing", "q.jpg"), "not a crosslayer image index")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return write_block_images(tmp_path_factory.mktemp("one"), 1, side=SIDE)[0]


def test_an_output_folder_that_is_a_file_is_named(tmp_path, image, backbone_cache):
    pytest.importorskip("torch")
    (tmp_path / "file").write_text("a file, not a folder")
    one_line_error(run_cli("heatmap", image, "--out", tmp_path / "file" / "heat.png", *NETWORK),
                   str(tmp_path / "file"))


_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _without_root_file_access():
    """For a child of root: drops the capabilities that let root write into read-only folders from the bounding set,
    so the program it runs has them neither (root's own files, the interpreter under a 0700 /root included, stay
    readable as their owner's). A plain uid change would lock it out of that interpreter."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def apply():
        for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return apply


def test_a_read_only_output_folder_is_named(tmp_path, image, backbone_cache):
    pytest.importorskip("torch")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    options = {"preexec_fn": _without_root_file_access()} if os.geteuid() == 0 else {}
    try:
        try:
            done = run_cli("heatmap", image, "--out", folder / "heat.png", *NETWORK, **options)
        except subprocess.SubprocessError as error:  # no CAP_SETPCAP in this container: root cannot be limited
            pytest.skip(f"cannot drop root's file access for the child: {error}")
        one_line_error(done, "Permission denied", str(folder))
    finally:
        folder.chmod(0o755)
    assert os.listdir(folder) == []


def _file_size_limit(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, backbone_cache):
    """A file-size limit stands in for a full disk: writes past it fail (EFBIG, as ENOSPC would) mid-file."""
    pytest.importorskip("torch")
    write_block_images(tmp_path / "imgs", 4, side=SIDE)
    db = tmp_path / "db"
    done = run_cli("index", "build", db, "--images", tmp_path / "imgs", *TINY, preexec_fn=_file_size_limit(50_000))
    one_line_error(done, f"File too large (writing {db})")
    assert not db.exists() or not [p for p in db.rglob("*") if p.is_file()]  # the ~80 kB encoder file is not there
    # with room again, the same command builds the index
    assert "indexed 4 images" in run_cli("index", "build", db, "--images", tmp_path / "imgs", *TINY).stdout


def _read_into(stream, sink: list):
    for chunk in iter(lambda: stream.read(1), ""):
        sink.append(chunk)


def test_ctrl_c_is_one_line_status_130_and_the_index_resumes(tmp_path, backbone_cache):
    pytest.importorskip("torch")
    write_block_images(tmp_path / "imgs", 80, side=SIDE)
    db = tmp_path / "db"
    arguments = ["index", "build", db, "--images", tmp_path / "imgs", *TINY]
    child = start_cli(*arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []
    reader = threading.Thread(target=_read_into, args=(child.stderr, stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while "index:" not in "".join(stderr):  # the images are being encoded
        assert child.poll() is None and time.monotonic() < deadline, "".join(stderr)
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    status = child.wait(60)
    reader.join(10)
    printed = "".join(stderr)
    lines = [line for line in printed.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert status == 130 and lines[-1] == "crosslayer index build: interrupted", printed
    assert "Traceback" not in printed

    # everything committed is readable, and the build completes from there
    done = run_cli(*arguments)
    assert done.returncode == 0, done.stderr
    assert f"; 80 in {db}" in done.stdout, done.stdout


def test_a_closed_pipe_exits_quietly():
    child = start_cli("info", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # like `crosslayer info | head -0`: closed before the command writes
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1 and err == b"", err.decode()


def test_a_real_bug_keeps_its_traceback():
    program = ("import sys, crosslayer.commands.info as info\n"
               "from crosslayer.commands import main\n"
               "def broken(args):\n"
               "    return [][1]\n"
               "info.run = broken\n"
               "sys.exit(main(['info']))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=child_env(), timeout=60)
    assert done.returncode == 1 and "Traceback" in done.stderr and "IndexError" in done.stderr
