"""`crosslayer info [PATH]`: build info, or what an image index or an encoder file holds."""

from __future__ import annotations

import json

from crosslayer.commands.options import add_command
from crosslayer.errors import UsageError

EXAMPLES = """\
  crosslayer info                  # what the compiled core was built with
  crosslayer info my-index         # an image index: images, deleted, failed (with reasons), bytes, encoder, root
  crosslayer info encoder.xle      # an encoder file
"""


def run(args) -> int:
    import crosslayer

    if args.path is None:
        for key, value in crosslayer.build_info().items():
            print(f"{key:>20}: {value}")
        return 0
    from pathlib import Path

    from crosslayer.encoder import CrossLayerEncoder
    from crosslayer.retrieval.image_index import ImageIndex

    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"PATH: {path} does not exist (expected an image index or an encoder file)")
    if not path.is_dir():
        summary = CrossLayerEncoder.read_meta(path)
    else:
        with ImageIndex.open(path, "r") as index:
            summary = dict(index.summary(), failures=index.failures())
    print(json.dumps(summary, indent=1))
    return 0


def register(commands) -> None:
    parser = add_command(commands, "info", run, "build info, or what an image index (made by 'index build' or "
                         "'extract') or an encoder file holds", EXAMPLES)
    parser.add_argument("path", nargs="?", default=None, metavar="PATH",
                        help="an image index directory or an encoder file (default: build info)")
