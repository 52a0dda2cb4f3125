"""Errors the library raises for conditions a user can act on; recipes turn them into one line and exit status 2."""
from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """A loss or the weights became NaN or infinite (a diverged run); nothing non-finite is saved."""


class FileFormatError(ValueError):
    """A file is truncated, corrupt, not of the expected kind, or holds pickled code; the message names it."""
