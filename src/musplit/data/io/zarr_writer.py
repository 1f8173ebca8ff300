"""Writing OME-Zarr 0.5 (or plain Zarr v3) stores, block by block or whole, atomically."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from musplit.data.io.axes import CANONICAL_AXES, parse_axes
from musplit.data.io.source import _check_dtype
from musplit.data.io.writers import _canonical_array, _check_names, _check_pixel_size
from musplit.errors import InputError
from musplit.files import (
    check_output,
    move_into_place,
    output_errors,
    remove_stale_temporaries,
    temp_path,
)

logger = logging.getLogger(__name__)

class ZarrWriter:
    """Stream an image larger than memory into a Zarr v3 store, block by block, atomically.

    Data go to a hidden temporary directory next to ``path``; :meth:`close` renames it into
    place, :meth:`abort` (or an exception inside ``with``) deletes it. Temporaries an
    interrupted earlier write of ``path`` left behind are removed when writing starts
    (:func:`musplit.files.remove_stale_temporaries`). An :class:`OSError` while writing (a
    full disk) deletes the temporary and is one :class:`InputError` line naming ``path``.

    Layout: with ``ome=True`` (default) an OME-Zarr 0.5 image group whose array ``"0"`` has
    axes ``TCYX`` (frames as T), channel names as ``omero`` channel labels (with display windows
    from the data written) and the pixel size as a scale transformation; with ``ome=False`` a
    plain ``(N, H, W, C)`` array with ``dimension_names`` ``s, y, x, c``.

    Examples
    --------
    >>> with ZarrWriter.create("out.zarr", (10, 512, 512, 2)) as w:  # doctest: +SKIP
    ...     for i in range(10):
    ...         w.write((slice(i, i + 1), slice(None), slice(None), slice(None)), block)
    """

    def __init__(
        self,
        out: Path,
        tmp: Path,
        array: Any,
        group: Any,
        axes: str,
        shape: tuple,
        canonical: tuple,
        names: list[str] | None,
        ome: bool,
        overwrite: bool,
    ):
        self.path, self._tmp, self._array, self._group = out, tmp, array, group
        self.axes, self.shape, self.canonical_shape = axes, shape, canonical
        self.channel_names, self.ome, self._overwrite = names, ome, overwrite
        c = canonical[3]
        self._lo = np.full(c, np.inf)
        self._hi = np.full(c, -np.inf)
        self._open = True

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        shape: Sequence[int],
        axes: str = "SYXC",
        channel_names: Sequence[str] | None = None,
        chunks: Sequence[int] | None = None,
        dtype: Any = "float32",
        *,
        overwrite: bool = False,
        protect: Iterable[str | os.PathLike] = (),
        ome: bool = True,
        pixel_size: tuple[float, float] | None = None,
    ) -> ZarrWriter:
        """Start writing.

        Parameters
        ----------
        path : path-like
            Output store (a directory, e.g. ``pred.zarr``).
        shape : sequence of int
            Shape of the full image in ``axes`` order.
        axes : str
            Axes of ``shape``, of :meth:`write` regions and blocks; at most one of S and T, and
            Z (if present) of length 1.
        channel_names : sequence of str, optional
            One name per channel.
        chunks : sequence of int, optional
            Chunk size as ``(frames, height, width, channels)``; default
            ``(1, min(H, 512), min(W, 512), 1)`` for OME (one channel per chunk, as viewers read),
            all channels per chunk otherwise.
        dtype : dtype
            Stored pixel type.
        overwrite, protect
            As for :func:`write_tiff`.
        ome : bool
            OME-Zarr 0.5 image group (True) or plain array (False).
        pixel_size : (float, float), optional
            ``(y, x)`` in micrometres.
        """
        shape = tuple(int(s) for s in shape)
        axes = parse_axes(axes, len(shape), path, shape=shape)
        if "S" in axes and "T" in axes:
            raise InputError(f"{path}: a writer takes at most one of the S and T axes ({axes})")
        if "Z" in axes and shape[axes.index("Z")] != 1:
            raise InputError(f"{path}: 3-D stacks are not supported (Z = {shape[axes.index('Z')]})")
        if any(s < 1 for s in shape):
            raise InputError(f"{path}: every axis needs at least one element, got shape {shape}")
        dt = np.dtype(dtype)
        _check_dtype(dt, str(path))
        get = dict(zip(axes, shape, strict=True)).get
        canonical = (get("S", get("T", 1)), get("Y"), get("X"), get("C", 1))
        n, h, w, c = canonical
        names = _check_names(channel_names, c, path)
        pixel = _check_pixel_size(pixel_size)
        out = check_output(path, overwrite, protect, "zarr")
        if chunks is None:
            chunks = (1, min(h, 512), min(w, 512), 1 if ome else c)
        chunks = tuple(max(1, min(int(k), s)) for k, s in zip(chunks, canonical, strict=True))
        remove_stale_temporaries(out)
        tmp = temp_path(out, "partial")
        try:
            with output_errors(out):
                array, group = _new_store(tmp, out.stem, ome, canonical, chunks, dt, names,
                                          pixel)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(out, tmp, array, group, axes, shape, canonical, names, ome, overwrite)

    def write(self, region: Sequence[slice] | None, block: Any) -> None:
        """Write ``block`` at ``region``.

        Parameters
        ----------
        region : sequence of slice or None
            One slice per axis of ``axes`` (None: the whole image).
        block : array-like
            Data of exactly the region's extent, in ``axes`` order.
        """
        if not self._open:
            raise RuntimeError(f"{self.path}: writer already closed")
        if region is None:
            region = [slice(None)] * len(self.axes)
        if len(region) != len(self.axes):
            raise ValueError(f"region needs {len(self.axes)} slices for axes {self.axes}")
        norm = {}
        for a, s, size in zip(self.axes, region, self.shape, strict=True):
            if not isinstance(s, slice) or s.step not in (None, 1):
                raise ValueError(f"region entries must be step-1 slices, got {s!r}")
            start, stop, _ = s.indices(size)
            norm["S" if a == "T" else a] = slice(start, stop)
        block = np.asarray(block)
        extent = tuple(norm[a].stop - norm[a].start for a in self.axes.replace("T", "S"))
        if block.shape != extent:
            raise ValueError(f"block shape {block.shape} does not match region extent {extent}")
        data = _canonical_array(block, self.axes, f"block for {self.path}")
        fs, ys, xs = norm.get("S", slice(0, 1)), norm["Y"], norm["X"]
        cs = norm.get("C", slice(0, 1))
        if data.size:
            # Display window per channel for viewers; fmin/fmax skip NaN and copy nothing.
            with np.errstate(invalid="ignore"):
                lo = np.fmin.reduce(data, axis=(0, 1, 2)).astype(np.float64)
                hi = np.fmax.reduce(data, axis=(0, 1, 2)).astype(np.float64)
            self._lo[cs] = np.fmin(self._lo[cs], np.where(np.isfinite(lo), lo, np.nan))
            self._hi[cs] = np.fmax(self._hi[cs], np.where(np.isfinite(hi), hi, np.nan))
        try:
            with output_errors(self.path):
                if self.ome:
                    self._array[fs, cs, ys, xs] = data.transpose(0, 3, 1, 2)
                else:
                    self._array[fs, ys, xs, cs] = data
        except InputError:  # a full disk: nothing half-written stays behind
            self.abort()
            raise

    def close(self) -> Path:
        """Finish the metadata and move the store into place; returns its path."""
        if not self._open:
            return self.path
        try:
            with output_errors(self.path):
                if self.ome:
                    self._set_omero()
        except InputError:  # a full disk: nothing half-written stays behind
            self.abort()
            raise
        self._open = False
        if self.path.exists() and not self._overwrite:
            raise InputError(
                f"{self.path} appeared while writing; the output is left in {self._tmp}"
            )
        try:
            with output_errors(self.path):
                move_into_place(self._tmp, self.path)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        logger.info(
            "wrote %s (%s, canonical shape %s)",
            self.path,
            "OME-Zarr 0.5" if self.ome else "Zarr v3",
            self.canonical_shape,
        )
        return self.path

    def _set_omero(self) -> None:
        """The ``omero`` channel list: labels, colours and display windows from the data."""
        _set_display(self._group, self._lo, self._hi, self.channel_names)

    def abort(self) -> None:
        """Drop everything written; the output path is untouched."""
        self._open = False
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ZarrWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _new_store(tmp: Path, name: str, ome: bool, canonical: tuple, chunks: tuple, dt: Any,
               names: list[str] | None, pixel: tuple[float, float] | None) -> tuple[Any, Any]:
    """Create the empty store at ``tmp``; returns ``(array, group)`` (group None unless
    ``ome``)."""
    n, h, w, c = canonical
    if ome:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        scale = [1.0, 1.0, *(pixel if pixel else (1.0, 1.0))]
        space = {"type": "space", **({"unit": "micrometer"} if pixel else {})}
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": [
                        {"name": "t", "type": "time"},
                        {"name": "c", "type": "channel"},
                        {"name": "y", **space},
                        {"name": "x", **space},
                    ],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": scale}
                            ],
                        }
                    ],
                }
            ],
        }
        array = group.create_array(
            "0",
            shape=(n, c, h, w),
            dtype=dt,
            fill_value=0,
            chunks=(chunks[0], chunks[3], chunks[1], chunks[2]),
            dimension_names=["t", "c", "y", "x"],
        )
        return array, group
    attrs: dict[str, Any] = {}
    if names:
        attrs["channel_names"] = names
    if pixel:
        attrs["pixel_size_um"] = list(pixel)
    array = zarr.create_array(
        str(tmp),
        shape=canonical,
        dtype=dt,
        fill_value=0,
        chunks=chunks,
        dimension_names=["s", "y", "x", "c"],
        attributes=attrs,
        zarr_format=3,
    )
    return array, None


_COLOURS = ("FF00FF", "00FF00", "00FFFF", "FFFF00", "FF0000", "0000FF")


def _set_display(group: Any, lo: np.ndarray, hi: np.ndarray, names: Sequence[str] | None
                 ) -> None:
    """Write the ``omero`` channel list of an OME-Zarr image group: labels, colours and the
    display window ``[lo, hi]`` of each channel (0..1 where a channel held no finite value)."""
    ome = dict(group.attrs["ome"])
    channels = []
    for i in range(len(lo)):
        a = float(lo[i]) if np.isfinite(lo[i]) else 0.0
        b = float(hi[i]) if np.isfinite(hi[i]) else 1.0
        label = names[i] if names else f"channel {i}"
        channels.append({"label": label, "active": True, "color": _COLOURS[i % 6],
                         "window": {"min": a, "max": b, "start": a, "end": b}})
    ome["omero"] = {"channels": channels, "rdefs": {"model": "color"}}
    group.attrs["ome"] = ome


# -- one store written by many processes (musplit.predict.distributed) ---------------------
# The store is created once, then each process writes whole chunks of its own region straight
# into it (no two processes write the same chunk), and the display windows are set once at the
# end from the value ranges the writes returned. The caller keeps the store under a temporary
# name and moves it into place (musplit.files.move_into_place) when every region is written.
def create_ome_store(path: str | os.PathLike, shape: Sequence[int], chunks: Sequence[int],
                     channel_names: Sequence[str] | None = None, *, name: str | None = None,
                     pixel_size: tuple[float, float] | None = None,
                     dtype: Any = "float32") -> Path:
    """Create an empty OME-Zarr 0.5 image at ``path`` (which must not exist), laid out as
    :class:`ZarrWriter` lays it out: ``shape`` and ``chunks`` are ``(N, H, W, C)``, ``name``
    is the image's name in the metadata (default: the store's stem)."""
    out = Path(path)
    canonical = tuple(int(v) for v in shape)
    if len(canonical) != 4 or any(v < 1 for v in canonical):
        raise InputError(f"{out}: shape must be (N, H, W, C) with every axis >= 1, got {shape}")
    chunks = tuple(max(1, min(int(k), v)) for k, v in zip(chunks, canonical, strict=True))
    names = _check_names(channel_names, canonical[3], out)
    with output_errors(out):
        _new_store(out, name or out.stem, True, canonical, chunks, np.dtype(dtype), names,
                   _check_pixel_size(pixel_size))
    return out


def write_ome_region(path: str | os.PathLike, frame: int, ys: slice, xs: slice,
                     block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write ``block`` ``(h, w, C)`` at ``frame, ys, xs`` of the OME-Zarr image at ``path``;
    returns the per-channel ``(min, max)`` of its finite values (NaN where there are none),
    for :func:`finish_ome_store`."""
    out = Path(path)
    data = np.asarray(block, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduce(data, axis=(0, 1)).astype(np.float64)
        hi = np.fmax.reduce(data, axis=(0, 1)).astype(np.float64)
    with output_errors(out):
        array = zarr.open_array(str(out / "0"), mode="r+")
        array[int(frame), :, ys, xs] = data.transpose(2, 0, 1)
    return np.where(np.isfinite(lo), lo, np.nan), np.where(np.isfinite(hi), hi, np.nan)


def finish_ome_store(path: str | os.PathLike, lo: np.ndarray, hi: np.ndarray,
                     channel_names: Sequence[str] | None) -> None:
    """Set the display windows of the OME-Zarr image at ``path`` from the per-channel value
    range of everything written into it (the ``(min, max)`` of :func:`write_ome_region`
    combined with ``fmin``/``fmax``)."""
    out = Path(path)
    with output_errors(out):
        _set_display(zarr.open_group(str(out), mode="r+"), np.asarray(lo, dtype=np.float64),
                     np.asarray(hi, dtype=np.float64), channel_names)


def write_zarr(
    path: str | os.PathLike,
    array: Any,
    axes: str = "SYXC",
    channel_names: Sequence[str] | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | None = None,
    ome: bool = True,
    *,
    protect: Iterable[str | os.PathLike] = (),
    pixel_size: tuple[float, float] | None = None,
) -> Path:
    """Write an in-memory image as OME-Zarr 0.5 (or a plain Zarr v3 array), atomically.

    Parameters are those of :meth:`ZarrWriter.create`; ``array`` is laid out as ``axes``
    (default ``(N, H, W, C)``). Returns the store's path.
    """
    arr = np.asarray(array)
    axes = parse_axes(axes, arr.ndim, "the output array", shape=arr.shape)
    data = _canonical_array(arr, axes)
    writer = ZarrWriter.create(
        path,
        data.shape,
        CANONICAL_AXES,
        channel_names,
        chunks,
        data.dtype,
        overwrite=overwrite,
        protect=protect,
        ome=ome,
        pixel_size=pixel_size,
    )
    with writer:
        writer.write(None, data)
    return writer.path
