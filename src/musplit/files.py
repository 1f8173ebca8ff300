"""Atomic writes and output checks: the one copy of "write to a temporary name, then rename".

Every musplit output (images, splits, manifests, predictions) is written to a hidden temporary
name in the target directory and renamed into place only when complete, so a crash never
leaves a half-written file; an existing output is refused unless the caller asks to overwrite,
and an output never replaces one of the run's inputs.

Output locations are checked before any work (:func:`check_output`, :func:`check_writable`,
:func:`check_free_space`): a folder that takes no new file, a file used as a folder or a disk
too full is one :class:`~musplit.errors.InputError` line, not a traceback after hours. A
process killed while writing (``kill -9``) leaves its hidden temporary behind; the next write
of the same output removes such leftovers when they are older than this process
(:func:`remove_stale_temporaries`).

This module sits at the bottom of the layer order: it imports only the standard library and
:mod:`musplit.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from musplit.errors import InputError

__all__ = [
    "RUN_STARTED",
    "OutputWriteError",
    "ZARR_MARKERS",
    "atomic_write",
    "check_free_space",
    "check_output",
    "check_writable",
    "move_into_place",
    "output_errors",
    "refuse_existing",
    "remove_stale_temporaries",
    "sibling",
    "temp_path",
]

log = logging.getLogger(__name__)

#: Files whose presence makes a directory a Zarr store (v3, v2 group, v2 array).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")

#: When this process started using musplit (``time.time()`` at import): a temporary left
#: behind by an interrupted write is stale only when it is older than this, so a concurrent
#: writer's temporary is never touched.
RUN_STARTED = time.time()

#: Tags of the temporary names musplit writes next to an output (:func:`temp_path`; ``tmp``
#: with a process id in the checkpoint and text writers, ``old`` for a replaced output).
_TEMP_TAGS = ("partial", "tmp", "old")
_TEMP_SUFFIX = re.compile(r"[0-9a-f]{8}|[0-9]+")


class OutputWriteError(InputError, OSError):
    """Writing an output failed (a full disk, a folder that went read-only): one line naming
    the output, exit status 2 on the command line. Still an :class:`OSError`, for callers
    that catch those."""


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
    check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write {out}: cannot create {out.parent} "
                         f"({_reason(e)})") from None
    return out


def _nearest_existing(path: Path) -> Path:
    """``path``'s nearest ancestor (``path`` excluded) that exists (or is a link)."""
    anc = path.parent
    while not (anc.exists() or anc.is_symlink()) and anc.parent != anc:
        anc = anc.parent
    return anc


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output ``path`` that cannot be created.

    The nearest existing ancestor of ``path`` must be a folder in which a file can really be
    created: a probe file is created and removed there (``os.access`` alone misses read-only
    mounts, ACLs and file systems such as /proc). Creates nothing else. With ``folder``,
    ``path`` is a folder that outputs go into: it counts as its own nearest ancestor.

    Raises
    ------
    InputError
        One line naming ``path`` and why: a file used as a folder, or a folder that takes no
        new file (with the system's reason).
    """
    out = Path(path).expanduser()
    anc = out if folder and out.exists() else _nearest_existing(out)
    if not anc.is_dir():
        what = "a file, not a folder" if anc.is_file() else "not a folder"
        raise InputError(f"cannot write {out}: {anc} is {what}")
    probe = anc / f".musplit-write-test-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as e:
        raise InputError(f"cannot write {out}: no file can be created in {anc} "
                         f"({_reason(e)})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_free_space(path: str | os.PathLike, need: int, what: str = "the output") -> None:
    """Refuse an output that clearly cannot fit on its disk; warn when the space is tight.

    ``need`` is the estimated size in bytes of everything written at ``path`` (and beside it:
    the temporaries live in the same folder). :class:`InputError` when the free space of the
    nearest existing ancestor is below ``need``; a warning when it is below ``2 * need``.
    Where the free space cannot be told, nothing is checked.
    """
    out = Path(path).expanduser()
    anc = _nearest_existing(out)
    try:
        free = shutil.disk_usage(anc).free
    except OSError:
        return
    if free < need:
        raise InputError(f"not enough free space for {out}: {what} needs about {_size(need)}, "
                         f"but {anc} has {_size(free)} free")
    if free < 2 * need:
        log.warning("%s: %s needs about %s and only %s are free on %s; the disk may fill up",
                    out, what, _size(need), _size(free), anc)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an :class:`OSError` raised while writing ``path`` (disk full, a folder that went
    read-only) into one :class:`OutputWriteError` line naming ``path``; an OSError about
    another file (an input read on the way) passes unchanged."""
    out = Path(path)
    try:
        yield
    except OSError as e:
        names = [str(n) for n in (e.filename, e.filename2) if n is not None]
        mine = (str(out), str(out.parent / f".{out.name}."))
        if names and not any(n.startswith(mine) for n in names):
            raise
        if isinstance(e, InputError):
            raise
        raise OutputWriteError(f"cannot write {out}: {_reason(e)}") from e


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` or, for a folder, of anything inside it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def remove_stale_temporaries(path: str | os.PathLike, started: float | None = None
                             ) -> list[Path]:
    """Delete what interrupted writes of ``path`` left behind; return what was deleted.

    A process killed while writing ``x.tif`` leaves ``.x.tif.partial-<8 hex>`` (a folder for a
    Zarr store; ``.x.tif.tmp-<pid>`` from the checkpoint writer). Such a temporary **of this
    very output** is removed when nothing in it changed since ``started`` (default
    :data:`RUN_STARTED`, when this process began): a newer one may belong to a writer that
    is still running and is left alone, as are other outputs' temporaries. ``.x.tif.old-*``
    (an output being replaced) is removed only while ``x.tif`` itself exists.
    """
    out = Path(path)
    started = RUN_STARTED if started is None else started
    prefix = f".{out.name}."
    try:
        entries = [e.name for e in os.scandir(out.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for name in entries:
        tag, dash, suffix = name[len(prefix):].partition("-")
        if tag not in _TEMP_TAGS or not dash or not _TEMP_SUFFIX.fullmatch(suffix):
            continue
        if tag == "old" and not out.exists():
            continue  # the only copy of the previous output
        leftover = out.parent / name
        try:
            if _newest_mtime(leftover) >= started:
                continue
        except OSError:
            continue
        _remove(leftover)
        removed.append(leftover)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write of %s: %s",
                 len(removed), out, ", ".join(p.name for p in removed))
    return removed


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
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)  # the previous output stays where it was
            raise
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
    :func:`refuse_existing`) first where an existing output must be refused. Temporaries of
    ``path`` that an interrupted earlier write left behind are removed first
    (:func:`remove_stale_temporaries`).

    Examples
    --------
    >>> with atomic_write("split.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    out = Path(path)
    remove_stale_temporaries(out)
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
