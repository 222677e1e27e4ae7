import shutil
import subprocess
import sys
from pathlib import Path

import crosslayer


def test_build_info_reports_build():
    info = crosslayer.build_info()
    assert isinstance(info["cuda"], bool)
    assert info["blas_choice"] in ("scipy-openblas32", "system")
    if info["blas_choice"] == "scipy-openblas32":
        assert "OpenBLAS" in info["blas"]
    assert info["openmp_max_threads"] >= 1


def test_import_without_extension_explains_how_to_build(tmp_path):
    package = Path(crosslayer.__file__).parent
    copy = tmp_path / "crosslayer"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-c", "import crosslayer"],
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "pip install ." in result.stderr


def test_declared_numpy_minimum_has_bitwise_count():
    """search.nonzero_counts uses np.bitwise_count, new in numpy 2.0: both dependency lists must ask for it."""
    import re

    root = Path(__file__).resolve().parents[1]
    for name in ("pyproject.toml", "requirements.txt"):
        minimum = re.search(r"numpy>=([0-9.]+)", (root / name).read_text())
        assert minimum, f"{name}: no numpy minimum"
        version = tuple(int(part) for part in minimum.group(1).split(".")[:2])
        assert version >= (2, 0), f"{name}: numpy>={minimum.group(1)}"


def test_version_is_the_one_pyproject_declares():
    """One release number: the package's and the wheel's."""
    import re
    from pathlib import Path

    import crosslayer

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert crosslayer.__version__ == declared
