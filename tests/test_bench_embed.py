"""benchmarks/bench_embed.py end to end on a few tiny images: both ONNX forms checked against encode and timed, and
--write replaces only the generated part of the results file, keeping the hand-written notes."""

import subprocess
import sys
from pathlib import Path

import pytest

from _cli import child_env

ROOT = Path(__file__).resolve().parent.parent
DATA = next((folder for folder in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data")
             if (folder / "cub100").is_dir()), None)


@pytest.mark.skipif(DATA is None, reason="../shared/data/cub100 is not beside the repository")
def test_write_replaces_the_results_and_keeps_the_notes(tmp_path, backbone_cache):
    pytest.importorskip("onnxruntime")
    import crosslayer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_embed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "embed.md"
    out.write_text(f"# Title\n\nNotes before.\n\n{bench_embed.RESULTS_BEGIN}\nold table\n{bench_embed.RESULTS_END}\n\n"
                   "Notes after, by hand.\n")
    env = child_env()  # the crosslayer under test (installed in CI), not the source tree
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_embed.py"), "--data", str(DATA), "--images", "3",
               "--fit", "3", "--side", "64", "--batch-size", "2", "--repeat", "1", "--write", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith("# Title\n\nNotes before.\n\n") and text.endswith("\n\nNotes after, by hand.\n")
    assert "old table" not in text and text.count(bench_embed.RESULTS_BEGIN) == 1
    assert "| CrossLayerEncoder.encode |" in text and "| encoder.onnx (standard ops) |" in text
    try:
        crosslayer.ort_ops_library()
        assert "| encoder.onnx (custom ops) |" in text and "custom: " in done.stdout
    except crosslayer.NotBuiltError:
        assert "custom: skipped" in done.stdout


def test_results_block_is_appended_to_a_file_without_markers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_embed
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    replaced = bench_embed._replace_results("# Title\n\nonly notes\n", "table")
    assert replaced == f"# Title\n\nonly notes\n\n{bench_embed.RESULTS_BEGIN}\ntable\n{bench_embed.RESULTS_END}\n"
    assert bench_embed._replace_results(replaced, "new") == replaced.replace("\ntable\n", "\nnew\n")
