"""`crosslayer extract SOURCE DB_DIR`: the alias of `crosslayer index build DB_DIR --images SOURCE --embeddings`."""

from __future__ import annotations

from crosslayer.commands.index import add_build_options, run_build
from crosslayer.commands.options import add_command

EXAMPLES = """\
  crosslayer extract photos/ db/                       # every image under photos/
  crosslayer extract manifest.csv db/ --side 224       # the 'path' column of a CSV
  crosslayer extract more/ db/                         # resumes: only images not yet in db/
  crosslayer extract photos/ db/ --encoder encoder.xle # a fitted encoder: no PCA to learn
  crosslayer search db/ query.jpg                      # the result is an image index
"""


def run(args) -> int:
    args.images, args.embeddings = [args.source], True
    return run_build(args)


def register(commands) -> None:
    parser = add_command(commands, "extract", run, "encode an image folder or a CSV manifest into an image index "
                         "with embeddings: 'crosslayer index build DB_DIR --images SOURCE --embeddings'", EXAMPLES)
    parser.add_argument("source", metavar="SOURCE", help="an image folder, or a CSV whose first column is 'path'")
    parser.add_argument("db_dir", metavar="DB_DIR", help="the index directory (created, or resumed)")
    parser.set_defaults(images_option="SOURCE")
    add_build_options(parser)
