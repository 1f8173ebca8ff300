"""Atomic writes and output checks: the one copy of "write to a temporary name, then rename".

Every musplit output (images, splits, manifests, predictions) is written to a hidden temporary
name in the target directory and renamed into place only when complete, so a crash never
leaves a half-written file; an existing output is refused unless the caller asks to overwrite,
and an output never replaces one of the run's inputs.

This module sits at the bottom of the layer order: it imports only the standard library and
:mod:`musplit.errors`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from musplit.errors import InputError

__all__ = [
    "ZARR_MARKERS",
    "atomic_write",
    "check_output",
    "move_into_place",
    "refuse_existing",
    "sibling",
    "temp_path",
]

#: Files whose presence makes a directory a Zarr store (v3, v2 group, v2 array).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def check_output(
    path: str | os.PathLike, overwrite: bool, protect: Iterable[str | os.PathLike], kind: str
) -> Path:
    """Validate an output path; refuse existing outputs (unless overwrite) and inputs.

    Parameters
    ----------
    path : path-like
        The output to be written.
    overwrite : bool
        Allow replacing an existing output.
    protect : path-like or iterable of path-like
        Inputs of the run: the output may not be, hold or lie inside any of them.
    kind : {"tiff", "zarr"}
        What is written: a TIFF never replaces a directory; a Zarr store replaces only a
        directory that is a Zarr store.

    Returns
    -------
    Path
        The output path (user-expanded); its parent directory exists.
    """
    out = Path(path).expanduser()
    out_abs = out.resolve()
    if isinstance(protect, (str, os.PathLike)):
        protect = [protect]
    for p in protect or ():
        if p is None:
            continue
        p_abs = Path(p).expanduser().resolve()
        same = out_abs == p_abs or (
            out.exists() and p_abs.exists() and os.path.samefile(out, p_abs)
        )
        if same or p_abs in out_abs.parents or out_abs in p_abs.parents:
            raise InputError(f"refusing to write {out}: it is, holds or lies inside the input {p}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise InputError(
                f"{out} already exists; choose another output path or overwrite it "
                "(overwrite=True, --overwrite)"
            )
        if out.is_dir() and not out.is_symlink():
            if kind == "tiff":
                raise InputError(f"{out} is a directory; refusing to replace it with a TIFF file")
            if not any((out / m).exists() for m in ZARR_MARKERS):
                raise InputError(
                    f"{out} is an existing directory that is not a Zarr store; "
                    "refusing to replace it"
                )
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"cannot write {out}: {out.parent} is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def temp_path(out: Path, tag: str) -> Path:
    """A hidden, unique name next to ``out``: ``.<name>.<tag>-<8 hex digits>``."""
    # In the same directory: the final rename stays on one file system (atomic).
    return out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is replaced only after the new one is
    complete (a directory is moved aside first, then deleted)."""
    if (out.exists() or out.is_symlink()) and (
        tmp.is_dir() or (out.is_dir() and not out.is_symlink())
    ):
        old = temp_path(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree, quietly (cleanup of temporary names)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, tag: str = "partial") -> Iterator[Path]:
    """Write ``path`` through a temporary name: yields that name, renames it into place when
    the block ends, and deletes it (file or directory) when the block raises.

    Checks nothing about ``path`` itself; call :func:`check_output` (or
    :func:`refuse_existing`) first where an existing output must be refused.

    Examples
    --------
    >>> with atomic_write("split.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    out = Path(path)
    tmp = temp_path(out, tag)
    try:
        yield tmp
        move_into_place(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """:class:`InputError` for the first of ``paths`` that exists, unless ``overwrite``."""
    if overwrite:
        return
    for p in map(Path, paths):
        if p.exists() or p.is_symlink():
            raise InputError(f"{p} already exists; choose another output path or overwrite it "
                             "(overwrite=True, --overwrite)")


def sibling(path: str | os.PathLike, tag: str) -> Path:
    """``pred.ome.tif`` -> ``pred_std.ome.tif``; ``pred.zarr`` -> ``pred_std.zarr``."""
    p = Path(path)
    name = p.name.rstrip("/\\")
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
        if low.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + tag + name[-len(suffix):])
    raise InputError(f"{path}: a prediction is saved as .tif/.tiff or .zarr")
