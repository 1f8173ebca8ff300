"""Axes strings: their grammar, axes read from file metadata, and the unambiguous guesses.

Letters come from ``STCZYX``; the canonical view of every image is ``SYXC`` (``(N, H, W, C)``).
Which shapes are guessed, and when the caller must say, is tabulated in :mod:`musplit.data.io`.
Also here: the length units of pixel sizes found in metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from musplit.errors import InputError

logger = logging.getLogger(__name__)

AXES_LETTERS = "STCZYX"
CANONICAL_AXES = "SYXC"

# Length units -> micrometres, for pixel sizes found in OME-XML, ImageJ and OME-Zarr metadata.
_TO_MICROMETRE = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
}  # fmt: skip


def _name(path: str | os.PathLike | None) -> str:
    """How a file is named in messages: as the user spelled it."""
    return "the input array" if path is None else str(path)


def parse_axes(
    axes: str, ndim: int, path: str | os.PathLike | None = None, *, shape: tuple | None = None
) -> str:
    """Validate an axes string and return it in upper case.

    Parameters
    ----------
    axes : str
        One letter per array dimension, from ``STCZYX`` (case-insensitive), each at most once,
        with both ``Y`` and ``X``; e.g. ``"YX"``, ``"SYX"``, ``"SYXC"``, ``"STCYX"``.
    ndim : int
        Number of dimensions of the array the axes describe.
    path : path-like, optional
        The file the array comes from, named in error messages.
    shape : tuple of int, optional
        The array's shape, quoted in error messages.

    Returns
    -------
    str
        The validated axes, upper case.

    Raises
    ------
    InputError
        When the axes do not follow the grammar or do not match ``ndim``.
    """
    where = _name(path)
    if not isinstance(axes, str) or not axes:
        raise InputError(f"axes for {where} must be a non-empty string such as 'SYX', got {axes!r}")
    up = axes.upper()
    bad = sorted({a for a in up if a not in AXES_LETTERS})
    if bad:
        raise InputError(
            f"axes {axes!r} for {where} contain {''.join(bad)!r}; use letters from {AXES_LETTERS}"
        )
    repeated = sorted({a for a in up if up.count(a) > 1})
    if repeated:
        raise InputError(f"axes {axes!r} for {where} repeat {''.join(repeated)!r}")
    if "Y" not in up or "X" not in up:
        raise InputError(f"axes {axes!r} for {where} must contain both Y and X")
    if len(up) != ndim:
        got = f"shape {tuple(shape)}" if shape is not None else f"{ndim} dimensions"
        raise InputError(
            f"axes {axes!r} for {where} have {len(up)} letters but the image has {got}"
        )
    return up


def _guess_axes(shape: tuple, path: str | os.PathLike | None) -> str:
    """Axes for an image without metadata, only where the answer is unambiguous (module doc)."""
    shape = tuple(int(s) for s in shape)
    where = f"{_name(path)} has shape {shape} and no axes metadata"
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[2] <= 4 < min(shape[0], shape[1]):
            raise InputError(
                f"{where}: it could be SYX (frames) or YXC (colour channels); pass --axes YXC "
                "or --axes SYX (axes= in Python)"
            )
        return "SYX"
    if len(shape) == 4 and shape[3] <= 8 < min(shape[1], shape[2]):
        return "SYXC"
    raise InputError(
        f"{where}; pass --axes (axes= in Python) with one letter per dimension from "
        f"{AXES_LETTERS}, e.g. --axes SCYX for frames x channels x rows x columns"
    )


def _axes_from_names(names: Sequence[Any] | None) -> str | None:
    """Axes from per-dimension names (Zarr ``dimension_names``, NGFF ``axes``), else None."""
    if not names:
        return None
    long_names = {"time": "T", "channel": "C", "sample": "S"}
    letters = []
    for item in names:
        if isinstance(item, dict):  # NGFF >= 0.4: {"name": "c", "type": "channel"}
            name = str(item.get("name", ""))
            kind = str(item.get("type", "")).lower()
        else:
            name, kind = str(item) if item is not None else "", ""
        letter = name.upper() if len(name) == 1 else long_names.get(name.lower(), "")
        if letter not in AXES_LETTERS or not letter:
            letter = {"time": "T", "channel": "C"}.get(kind, "")
        if not letter:
            return None
        letters.append(letter)
    axes = "".join(letters)
    if len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        return None
    return axes


def _axes_from_tifffile(series_axes: str) -> str | None:
    """Our axes from tifffile's series axes, or None when they do not say enough.

    tifffile's ``S`` means samples per pixel (RGB and extra samples): for us a channel axis.
    ``Q`` (unknown) and ``I`` (image sequence) are page-stack axes: one of them in front, with no
    other sample axis, is our S. Any other letter (or two channel axes) means "no metadata".
    """
    out = []
    for a in series_axes:
        if a in "TZCYX":
            out.append(a)
        elif a == "S":
            out.append("C")
        else:
            out.append("?")
    axes = "".join(out)
    if axes.count("?") == 1 and axes[0] == "?" and "T" not in axes:
        axes = "S" + axes[1:]
    if "?" in axes or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        return None
    return axes


#: What a stack without axes metadata holds, for :func:`musplit.data.io.open_image`'s
#: ``stack_of``: training data and targets are channel stacks, a superimposed input is frames.
STACK_OF = ("channels", "frames")


def _check_stack_of(stack_of: str) -> str:
    if stack_of not in STACK_OF:
        raise InputError(f"stack_of must be one of {STACK_OF}, got {stack_of!r}")
    return stack_of


def _resolve_axes(
    given: str | None,
    meta: str | None,
    shape: tuple,
    path: str | os.PathLike | None,
    *,
    guess: str | None = None,
) -> tuple[str, str]:
    """Pick the axes (given > metadata > guess) and say where they came from.

    ``guess`` is the opener's own guess (e.g. from a TIFF's sample layout) when the file has no
    axes metadata; without one, :func:`_guess_axes` guesses from the shape.
    """
    if given is not None:
        given = parse_axes(given, len(shape), path, shape=tuple(shape))
        if meta is not None and meta != given:
            logger.info(
                "%s: using the given axes %s instead of %s from metadata", path, given, meta
            )
        return given, "given"
    if meta is not None and len(meta) == len(shape):
        return meta, "metadata"
    if guess is None or len(guess) != len(shape):
        guess = _guess_axes(tuple(shape), path)
    logger.info("%s: no axes metadata; assuming %s for shape %s (--axes says otherwise)",
                _name(path), guess, tuple(shape))
    return guess, "guessed"


def axes_note(axes: str, origin: str) -> str:
    """How a message says where axes came from: ``"read as axes 'CYX' (guessed: no axes in
    the file)"``, ``"axes 'TCYX' from the file's metadata"`` or ``"axes 'SYX' as given"``."""
    if origin == "guessed":
        return f"read as axes {axes!r} (guessed: no axes in the file)"
    if origin == "metadata":
        return f"axes {axes!r} from the file's metadata"
    return f"axes {axes!r} as given"


def frames_instead(axes: str) -> str | None:
    """The axes that read a channel axis as frames (``CYX`` -> ``SYX``), when there is no
    other sample axis; else None."""
    if "C" not in axes or any(a in axes for a in "STZ"):
        return None
    return axes.replace("C", "S")
