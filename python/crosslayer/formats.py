"""The one home of crosslayer's on-disk formats: every versioned file is written and read through here.

A JSON document is ``{"format": NAME, "version": V, "crc32": C, ...body}`` where C is the crc32 of the body alone
(keys sorted, compact separators). Writers are atomic (`crosslayer._atomic.atomic_write`): a reader sees the old
file or the complete new one. Readers check the format name, the version and the checksum, and raise `FormatError`
naming the file and what is wrong — never another exception, whatever the bytes.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from crosslayer._atomic import atomic_write
from crosslayer.errors import FormatError

_RESERVED = ("format", "version", "crc32")


def _body_checksum(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_json(path, format: str, version: int, body: dict) -> None:
    """Writes `body` atomically as a document of `format` and `version`, with the crc32 of the body."""
    clash = [key for key in _RESERVED if key in body]
    if clash:
        raise ValueError(f"body: keys {clash} are reserved for the document header")
    document = {"format": format, "version": int(version), "crc32": _body_checksum(body), **body}
    with atomic_write(path, "w") as handle:
        json.dump(document, handle, indent=1)


def read_json(path, format: str, versions, what: str | None = None) -> dict:
    """The body of a document written by `write_json`, after checking its format, version (one of `versions`, an
    int or a collection) and checksum; ``body["version"]`` is kept for readers of several versions.

    `what` names the file in messages (default: the format name)."""
    path = Path(path)
    what = what or format
    versions = (versions,) if isinstance(versions, int) else tuple(versions)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no {what} here (file not found)") from None
    except OSError as error:
        raise FormatError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise FormatError(f"{path}: not a {what} (not valid JSON)") from None
    if not isinstance(document, dict) or document.get("format") != format:
        raise FormatError(f"{path}: not a {what}")
    version = document.get("version")
    if isinstance(version, bool) or version not in versions:
        readable = ", ".join(str(v) for v in versions)
        raise FormatError(f"{path}: {what} version {version!r}; this crosslayer reads version {readable}")
    body = {key: value for key, value in document.items() if key not in _RESERVED}
    if document.get("crc32") != _body_checksum(body):
        raise FormatError(f"{path}: damaged {what} (checksum mismatch)")
    body["version"] = version
    return body
