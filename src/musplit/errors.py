"""Errors that mean "the user gave us something we cannot use".

The CLI turns any :class:`MusplitError` into one line on stderr and exit status 2; everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MusplitError(Exception):
    """A user-facing error: bad input, bad configuration, missing file."""


class InputError(MusplitError, ValueError):
    """An input array or file is unusable (shape, axes, channels, values, format)."""


class ConfigError(MusplitError, ValueError):
    """A configuration is invalid or inconsistent."""


class CheckpointError(MusplitError):
    """A checkpoint is missing, unreadable, unsafe or does not match its model."""
