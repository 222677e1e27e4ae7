"""The `crosslayer` command line: one module per command family, `main` only dispatches and reports errors.

Warnings show as one line `crosslayer CMD: warning: ...`. Errors: a `CrossLayerError` (bad arguments, files,
images, mismatched encoders), an OS error naming a file, or a full disk (naming what the command writes) print one
line `crosslayer CMD: error: ...` and exit 2; Ctrl-C prints one line and exits 130 (files are written atomically,
so nothing is left half written); a closed output pipe (`crosslayer info | head -1`) exits quietly.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from crosslayer.commands import demo, evaluation, export, extract, heatmap, index, info, search
from crosslayer.commands.options import CommandUsageError, HelpFormatter, Parser, subcommands
from crosslayer.errors import CrossLayerError

FAMILIES = (demo, info, export, extract, index, search, heatmap, evaluation)
# errors of a whole device rather than of one file: reported as one line even when they carry no file name
_DEVICE_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# the arguments naming what commands write (index directories, output files, caches), named by a device-full error
# that carries no file name, so the user knows which file system filled up
_OUTPUT_ARGUMENTS = ("out", "sheet", "db_dir", "cache", "json")
EXAMPLES = """\
examples:
  crosslayer demo                                       # a pretrained network on bundled photos
  crosslayer index build db --images photos/            # encode a folder into a searchable index
  crosslayer search db query.jpg --top 5 --sheet hits.png
  crosslayer COMMAND --help                             # options and examples of one command
"""


def build_parser() -> Parser:
    from crosslayer import __version__

    parser = Parser(prog="crosslayer", description="Cross-convolutional-layer pooling: images to sign codes, "
                    "searched with masked popcount.", epilog=EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"crosslayer {__version__}")
    parser.add_argument("--cmake-dir", action=PrintAndExit, nargs=0, source="cmake_dir",
                        help="print the folder of crosslayerConfig.cmake (for -Dcrosslayer_DIR=...) and exit")
    commands = subcommands(parser, "command")
    for family in FAMILIES:
        family.register(commands)
    return parser


class PrintAndExit(argparse.Action):
    """An option that prints what a function of the package returns, then exits (like --version)."""

    def __init__(self, option_strings, dest, source: str, **kwargs):
        self.source = source
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import crosslayer

        try:
            print(getattr(crosslayer, self.source)())
        except CrossLayerError as error:
            _fail(parser.prog, error)
        parser.exit()


def _fail(prog: str, message) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _one_line_warning(prog: str):
    """Shows a warning as `crosslayer CMD: warning: ...`: the source line Python adds means nothing to a CLI user."""
    def format_warning(message, category, filename, lineno, line=None):
        return f"{prog}: warning: {message}\n"
    return format_warning


def _quiet_broken_pipe() -> None:
    # Python's recipe (docs, "Note on SIGPIPE"): point stdout at devnull so the interpreter's final flush does not
    # raise again
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(1)


def main(argv=None) -> int:
    """Runs one command; returns its exit status, or raises SystemExit(2) with one line on stderr for bad input."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except CommandUsageError as error:
        _fail(error.prog, error)
    prog = args.prog
    if unknown:
        _fail(prog, f"unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')")
    try:
        library_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning(prog)
        try:  # the format only: a caller's recording of warnings (warnings.catch_warnings(record=True)) still works
            status = args.run(args)
        finally:
            warnings.formatwarning = library_format
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return status
    except BrokenPipeError:
        _quiet_broken_pipe()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except CrossLayerError as error:
        _fail(prog, error)
    except OSError as error:
        if error.filename is not None:
            _fail(prog, f"{error.strerror}: {error.filename}")
        if error.errno in _DEVICE_FULL:
            outputs = _outputs_of(args)
            writing = f" (writing {' or '.join(outputs)})" if outputs else ""
            _fail(prog, f"{error.strerror or error}{writing}")
        raise


def _outputs_of(args) -> list:
    """What the command was asked to write, by its arguments (flags such as search's --json are not paths)."""
    values = [getattr(args, name, None) for name in _OUTPUT_ARGUMENTS]
    return [str(value) for value in values if isinstance(value, (str, os.PathLike)) and str(value)]
