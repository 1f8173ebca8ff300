"""Flags the commands share: the image-selection options and comma-separated integers."""

from __future__ import annotations

import click

from musplit.errors import InputError


def int_list(value: str | None, name: str) -> list[int] | None:
    """``"2,3"`` -> ``[2, 3]`` (None stays None); a bad value is an
    :class:`~musplit.errors.InputError` naming the flag ``name``."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got '{value}'") from None


def image_options(what: str):
    """Decorator adding ``--axes``, ``--series`` and ``--level`` for the image ``what``
    (``"INPUT"``, ``"--target"``), in that order."""
    options = [
        click.option("--axes", default=None, help=f"Axes of {what} (default: metadata)."),
        click.option("--series", type=click.IntRange(min=0), default=None,
                     help=f"Image series of a TIFF {what} (default: the first full-resolution "
                          "one)."),
        click.option("--level", type=click.IntRange(min=0), default=0, show_default=True,
                     help=f"Pyramid level of {what} (0 = full resolution)."),
    ]

    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return decorate


__all__ = ["image_options", "int_list"]
