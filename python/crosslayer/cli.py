"""The command line lives in `crosslayer.commands`; this name stays importable for code that used it."""

from crosslayer.commands import build_parser, main

__all__ = ["build_parser", "main"]
