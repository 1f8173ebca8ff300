"""Opening any supported input: :func:`open_image` and the loaders built on it.

Dispatches a path (TIFF, Zarr, ``.npy``, ``.npz``) or an array in memory to its opener;
:func:`load_image` reads it, :func:`open_channel_files` stacks one file per channel.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from musplit.data.io.axes import _check_stack_of, _name, _resolve_axes
from musplit.data.io.backends import _Memmap, _NpzMember
from musplit.data.io.failures import _one_line
from musplit.data.io.source import ImageSource, _ChannelStack
from musplit.data.io.tiff import TIFF_SUFFIXES, _open_tiff
from musplit.data.io.zarr_read import _open_zarr, _zarr_node_source
from musplit.errors import InputError
from musplit.files import ZARR_MARKERS as _ZARR_MARKERS

logger = logging.getLogger(__name__)

_SUPPORTED = ".tif/.tiff (also OME-TIFF, BigTIFF), .zarr (v2/v3, OME-Zarr), .npy, .npz"


def open_image(
    path_or_array: Any,
    axes: str | None = None,
    *,
    level: int = 0,
    key: str | Sequence[str] | None = None,
    series: int | None = None,
    stack_of: str = "channels",
) -> ImageSource:
    """Open an image lazily; no pixels are read.

    Parameters
    ----------
    path_or_array : path-like, numpy.ndarray, zarr.Array or ImageSource
        A ``.tif``/``.tiff`` file (plain, ImageJ hyperstack, OME-TIFF, BigTIFF), a Zarr store
        (v2 or v3 array; OME-Zarr multiscale group, NGFF 0.4 or 0.5; group with one array per
        channel), a ``.npy`` or ``.npz`` file, or an array in memory.
    axes : str, optional
        Axes of the stored data (see :func:`parse_axes`); they override file metadata. When not
        given they come from the metadata, else from an unambiguous guess (module doc).
    level : int
        Pyramid level of an OME-Zarr group or a pyramidal OME-TIFF (0 = full resolution).
    key : str or sequence of str, optional
        Member of a ``.npz`` file; array or group path inside a Zarr group; for a group with one
        array per channel, the arrays to stack, in order (all arrays, natural name order, when
        None).
    series : int, optional
        Image series of a TIFF file (TIFF only). Default: the first full-resolution series
        (reduced-resolution images and thumbnails are skipped, module doc); which one was read,
        out of how many, is logged at INFO and kept in :attr:`ImageSource.series_index`.
    stack_of : {"channels", "frames"}
        What the planes of a file without axes metadata are when its layout alone would make
        them channels: a ``(3, H, W)`` or ``(4, H, W)`` array written by ``tifffile.imwrite``
        is stored as separate sample planes (read as ``CYX``, the default: training data and
        targets are channel stacks) and is read as frames (``SYX``) with ``"frames"`` (a
        superimposed input, ``musplit predict``). Either way :attr:`ImageSource.axes_origin`
        is ``"guessed"``; axes given or found in metadata are never changed.

    Returns
    -------
    ImageSource
        Canonical view ``(N, H, W, C)``.

    Raises
    ------
    InputError
        Missing, empty, unknown, damaged or unsupported input, or axes that do not fit.
    """
    if isinstance(path_or_array, ImageSource):
        return path_or_array
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or level < 0:
        raise InputError(f"level must be a non-negative integer, got {level!r}")
    if series is not None and (
        not isinstance(series, (int, np.integer)) or isinstance(series, bool) or series < 0
    ):
        raise InputError(f"series must be a non-negative integer, got {series!r}")
    _check_stack_of(stack_of)
    if isinstance(path_or_array, (str, os.PathLike)):
        path = Path(path_or_array).expanduser()
        return _open_path(path, axes, int(level), key, None if series is None else int(series),
                          stack_of)
    if series is not None and isinstance(path_or_array, (zarr.Array, np.ndarray)):
        raise InputError(
            f"series={series} was given but the input is an array in memory (series is for "
            "TIFF files)"
        )
    if isinstance(path_or_array, zarr.Array):
        return _zarr_node_source(path_or_array, None, "the input Zarr array", axes, level, key)
    if isinstance(path_or_array, np.ndarray):
        if level:
            raise InputError(f"level {level} does not exist in the input array (it has 1 level)")
        arr = path_or_array
        if arr.ndim < 2:
            raise InputError(f"the input array has shape {arr.shape}; an image needs Y and X")
        found, origin = _resolve_axes(axes, None, arr.shape, None)
        return ImageSource(arr, found, axes_origin=origin)
    raise InputError(f"expected a file path or a numpy array, got {type(path_or_array).__name__}")


def _open_path(
    path: Path, axes: str | None, level: int, key: Any, series: int | None = None,
    stack_of: str = "channels",
) -> ImageSource:
    name = str(path)
    if not path.exists():
        raise InputError(f"{name} does not exist")
    is_tiff = path.is_file() and path.suffix.lower() in TIFF_SUFFIXES
    if series is not None and not is_tiff:
        kind = "a Zarr store or directory" if path.is_dir() else "not a TIFF file"
        raise InputError(
            f"series={series} was given but {name} is {kind} (series is for TIFF files; "
            "use level= or key= for Zarr)"
        )
    if path.is_dir():
        if any((path / m).exists() for m in _ZARR_MARKERS):
            return _open_zarr(path, axes, level, key)
        if path.suffix.lower() == ".zarr":
            raise InputError(f"{name} is not a Zarr store (no zarr.json, .zgroup or .zarray)")
        raise InputError(f"{name} is a directory, not an image; musplit reads {_SUPPORTED}")
    if path.stat().st_size == 0:
        raise InputError(f"{name} is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        if key is not None:
            raise InputError(
                f"key={key!r} was given but {name} is a TIFF file (key is for Zarr/npz)"
            )
        return _open_tiff(path, axes, level, series, stack_of)
    if level:
        raise InputError(f"level {level} does not exist in {name} (it has 1 level)")
    if suffix == ".npy":
        if key is not None:
            raise InputError(f"key={key!r} was given but {name} holds a single array")
        try:
            data = _Memmap(path, "npy")
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{name} is not a readable .npy file ({_one_line(exc)})") from None
        found, origin = _resolve_axes(axes, None, data.shape, path)
        return ImageSource(data, found, path=path, axes_origin=origin, lazy=True)
    if suffix == ".npz":
        return _open_npz(path, axes, key)
    raise InputError(
        f"{name} has an unknown file type {suffix or '(no extension)'!r}; "
        f"musplit reads {_SUPPORTED}"
    )


def _open_npz(path: Path, axes: str | None, key: Any) -> ImageSource:
    name = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{name} is not a readable .npz file ({_one_line(exc)})") from None
    if key is None:
        if len(keys) != 1:
            raise InputError(
                f"{name} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); pass key= to "
                "choose one"
            )
        key = keys[0]
    if not isinstance(key, str) or key not in keys:
        raise InputError(f"{name} has no array {key!r} (it has: {', '.join(keys) or 'none'})")
    try:
        data = _NpzMember(path, key)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{name} is not a readable .npz file ({_one_line(exc)})") from None
    found, origin = _resolve_axes(axes, None, data.shape, path)
    return ImageSource(data, found, path=path, name=f"{name}[{key}]", axes_origin=origin, lazy=True)


def load_image(
    path_or_array: Any,
    axes: str | None = None,
    channels: Any = None,
    frames: Any = None,
    **kw: Any,
) -> np.ndarray:
    """Read an image (or some of its frames and channels) as float32 ``(N, H, W, C)``.

    ``kw`` goes to :func:`open_image` (``level``, ``key``, ``series``). See
    :meth:`ImageSource.read`.
    """
    source = open_image(path_or_array, axes, **kw)
    try:
        return source.read(frames, channels)
    finally:
        if source is not path_or_array:
            source.close()


def open_channel_files(
    paths: Sequence[str | os.PathLike], axes: str | None = None, **kw: Any
) -> ImageSource:
    """Open one single-channel file per channel as one lazy ``(N, H, W, len(paths))`` source.

    Parameters
    ----------
    paths : sequence of path-like
        One file per channel, in channel order, each ``(N, H, W)`` (or ``(H, W)``) with the same
        N, H and W (e.g. Hagen et al.'s actin and mitochondria stacks,
        docs/data.md, "Real datasets").
    axes : str, optional
        Axes of every file (when they lack metadata).
    **kw
        Passed to :func:`open_image` for every file (``level``, ``series``, ``key``,
        ``stack_of``: ``"frames"`` unless given, since each file holds one channel).

    Returns
    -------
    ImageSource
        Channel names are the file names without extension.
    """
    if isinstance(paths, (str, os.PathLike)) or not paths:
        raise InputError("one file per channel needs a list of at least one file")
    kw.setdefault("stack_of", "frames")  # each file is one channel: its planes are frames
    parts = [open_image(p, axes, **kw) for p in paths]
    names = [Path(p).name.split(".")[0] for p in paths]
    return _ChannelStack(parts, " + ".join(str(p) for p in paths), names)


def load_channel_files(paths: Sequence[str | os.PathLike], axes: str | None = None) -> np.ndarray:
    """Read one single-channel file per channel as float32 ``(N, H, W, len(paths))``."""
    source = open_channel_files(paths, axes)
    try:
        return source.read()
    finally:
        source.close()


def check_image_size(
    height: int, width: int, patch: int, path: str | os.PathLike | None = None
) -> None:
    """Refuse frames smaller than the training patch.

    Raises
    ------
    InputError
        ``"image HxW in FILE is smaller than the patch size P"``.
    """
    if height < patch or width < patch:
        raise InputError(
            f"image {height}x{width} in {_name(path)} is smaller than the patch size {patch}"
        )
