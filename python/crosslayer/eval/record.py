"""Evaluation records: one `crosslayer.formats` JSON document per run ("crosslayer-eval-record", version 2)."""

from __future__ import annotations

from pathlib import Path

from crosslayer.errors import FormatError
from crosslayer.formats import read_json, write_json

RECORD_FORMAT = "crosslayer-eval-record"
RECORD_VERSION = 2


class RecordError(FormatError):
    """A file is not an evaluation record of a version this crosslayer reads, or is damaged."""


def write_record(path, record: dict) -> Path:
    """Writes `record` atomically (its keys must not be the document's own: format, version, crc32)."""
    path = Path(path)
    write_json(path, RECORD_FORMAT, RECORD_VERSION, dict(record))
    return path


def read_record(path) -> dict:
    """The record written by `write_record` (with its "version"), format, version and checksum checked."""
    return read_json(path, RECORD_FORMAT, RECORD_VERSION, "crosslayer evaluation record", RecordError)
