"""Flags the commands share: the image-selection options, comma-separated integers and ranges."""

from __future__ import annotations

import math

import click

from musplit.errors import InputError


def int_list(value: str | None, name: str, *, unique: bool | None = None) -> list[int] | None:
    """``"2,3"`` -> ``[2, 3]`` (None stays None); a bad value is an
    :class:`~musplit.errors.InputError` naming the flag ``name``.

    Refused: an empty value, an empty item (``"1,,2"``, ``"1,"``), anything but integers, and,
    with ``unique`` (default: when ``name`` is a channel list, ``--...channels``), a repeated
    value (``"0,0"``).
    """
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not value.strip() or "" in items:
        what = "is empty" if not value.strip() else "has an empty item"
        raise InputError(f"{name} '{value}' {what}; give comma-separated integers such as 0,1")
    try:
        out = [int(v) for v in items]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got '{value}'") from None
    if unique is None:
        unique = name.endswith("channels")
    repeated = sorted({v for v in out if out.count(v) > 1})
    if unique and repeated:
        raise InputError(f"{name} {value} names channel{'s' if len(repeated) > 1 else ''} "
                         f"{', '.join(map(str, repeated))} more than once; each channel once")
    return out


def range_list(value: str | None, name: str) -> list[list[float]] | None:
    """``"0.2:0.8,0.1:0.9"`` -> ``[[0.2, 0.8], [0.1, 0.9]]`` (None stays None): one ``lo:hi``
    per channel. A bad value is an :class:`~musplit.errors.InputError` naming the flag
    ``name``: an empty value or item, an item that is not two numbers joined by ``:``, or a
    range outside ``0 <= lo <= hi``."""
    if value is None:
        return None
    example = f"give one lo:hi per channel, e.g. {name} 0.2:0.8,0.2:0.8"
    items = [v.strip() for v in value.split(",")]
    if not value.strip() or "" in items:
        what = "is empty" if not value.strip() else "has an empty item"
        raise InputError(f"{name} '{value}' {what}; {example}")
    out = []
    for item in items:
        parts = item.split(":")
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise InputError(f"{name}: '{item}' is not lo:hi (two numbers joined by ':'); "
                             f"{example}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise InputError(f"{name}: the range {item} must satisfy 0 <= lo <= hi")
        out.append([lo, hi])
    return out


def check_channels(chans: list[int], src, name: str) -> None:
    """Refuse channel indices that ``src`` (an ImageSource) does not have, naming the flag
    ``name``, the channels that exist and how the axes were found."""
    n = src.n_channels
    bad = [c for c in chans if not 0 <= c < n]
    if bad:
        exist = "channel 0 only" if n == 1 else f"channels 0..{n - 1}"
        raise InputError(
            f"{name} {','.join(map(str, chans))}: channel {bad[0]} does not exist in {src.name}, "
            f"which has {exist} ({src.axes_note}; --axes reads it otherwise)")


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


__all__ = ["check_channels", "image_options", "int_list", "range_list"]
