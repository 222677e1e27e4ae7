"""The one error base of crosslayer.

Every error that bad input, a bad file or a mismatch can cause derives from `CrossLayerError`: the command line prints
it as one line, and callers can catch the whole family at once. Anything else escaping crosslayer is a bug.
Most subclasses also derive from `ValueError` (or `RuntimeError`) so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class CrossLayerError(Exception):
    """Base of every error crosslayer raises on purpose: bad arguments, files, images, mismatched encoders."""


class UsageError(CrossLayerError, ValueError):
    """An argument (of a function or on the command line) is not what was expected; the message names it."""


class FormatError(CrossLayerError, ValueError):
    """A file is not of the expected format, is of an unreadable version, or is damaged (checksum, size, shape)."""
