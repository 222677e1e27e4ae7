"""Where the benchmarks find their data: `--data ROOT`, by default ../shared/data beside the repository (resolved from
this file, not from the working directory), and data sets named relative to it. Result records hold paths relative
to the root, so results made on one machine read the same on another."""

from __future__ import annotations

import argparse
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPOSITORY.parent / "shared" / "data"


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="the data root holding the sets (default: ../shared/data beside the repository, "
                             f"here {DEFAULT_DATA})")


def data_set(root, name) -> Path:
    """A set named relative to the data root (an absolute path is taken as it is)."""
    path = Path(name)
    return path if path.is_absolute() else Path(root) / path


def relative_to_data(root, path) -> str:
    """`path` as recorded in results: relative to the data root when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
