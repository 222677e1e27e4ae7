"""Evaluation records: one JSON object per run, written atomically, with a format name and version."""

from __future__ import annotations

import json
from pathlib import Path

from crosslayer._atomic import atomic_write
from crosslayer.errors import CrossLayerError

RECORD_FORMAT = "crosslayer-eval-record"
RECORD_VERSION = 1


class RecordError(CrossLayerError, ValueError):
    """A file is not an evaluation record of a version this crosslayer reads."""


def write_record(path, record: dict) -> Path:
    record = dict(record)
    record["format"] = RECORD_FORMAT
    record["version"] = RECORD_VERSION
    path = Path(path)
    with atomic_write(path, "w") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return path


def read_record(path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise RecordError(f"{path}: not JSON ({error})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise RecordError(f"{path}: not a {RECORD_FORMAT} file")
    if record.get("version") != RECORD_VERSION:
        raise RecordError(f"{path}: record version {record.get('version')}, this crosslayer reads {RECORD_VERSION}")
    return record
