"""Writing ``(N, H, W, C)`` images as OME-TIFF or ImageJ hyperstacks, atomically.

Also the checks every writer shares: an array in any axes order seen as ``(N, H, W, C)``,
channel names and pixel sizes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from musplit.data.io.axes import parse_axes
from musplit.data.io.source import _check_dtype
from musplit.data.io.tiff import TIFF_SUFFIXES
from musplit.errors import InputError
from musplit.files import atomic_write, check_output, output_errors

logger = logging.getLogger(__name__)

def _canonical_array(array: Any, axes: str, what: str = "the output array") -> np.ndarray:
    """A numpy ``(N, H, W, C)`` view (copy only when S and T must merge) of an array in
    ``axes`` order, dtype unchanged."""
    arr = np.asarray(array)
    _check_dtype(arr.dtype, what)
    axes = parse_axes(axes, arr.ndim, what, shape=arr.shape)
    if "Z" in axes:
        if arr.shape[axes.index("Z")] != 1:
            raise InputError(
                f"{what} has a Z axis of length {arr.shape[axes.index('Z')]}: 3-D stacks are "
                "not supported"
            )
        arr = arr.take(0, axis=axes.index("Z"))
        axes = axes.replace("Z", "")
    samples = [i for i, a in enumerate(axes) if a in "ST"]
    order = (
        samples + [axes.index("Y"), axes.index("X")] + ([axes.index("C")] if "C" in axes else [])
    )
    arr = arr.transpose(order)
    n = math.prod(arr.shape[: len(samples)])
    c = arr.shape[-1] if "C" in axes else 1
    return arr.reshape(n, arr.shape[len(samples)], arr.shape[len(samples) + 1], c)


def _check_names(channel_names: Sequence[str] | None, n: int, path: Any) -> list[str] | None:
    if channel_names is None:
        return None
    if isinstance(channel_names, str):
        channel_names = [channel_names]
    names = [str(x) for x in channel_names]
    if len(names) != n:
        raise InputError(f"{path}: {len(names)} channel names given for {n} channel(s): {names}")
    return names


def _check_pixel_size(pixel_size: Any) -> tuple[float, float] | None:
    if pixel_size is None:
        return None
    try:
        py, px = (float(v) for v in pixel_size)
    except (TypeError, ValueError):
        raise InputError(f"pixel_size must be (y, x) in micrometres, got {pixel_size!r}") from None
    if not (py > 0 and px > 0 and math.isfinite(py) and math.isfinite(px)):
        raise InputError(f"pixel_size must be positive, got {pixel_size!r}")
    return py, px


def write_tiff(
    path: str | os.PathLike,
    array: Any,
    axes: str = "SYXC",
    channel_names: Sequence[str] | None = None,
    overwrite: bool = False,
    metadata: dict | None = None,
    *,
    protect: Iterable[str | os.PathLike] = (),
    imagej: bool = False,
    pixel_size: tuple[float, float] | None = None,
    compression: str | None = None,
    bigtiff: bool | None = None,
) -> Path:
    """Write an image as OME-TIFF (default) or ImageJ hyperstack, atomically.

    The file holds axes ``TCYX`` (frames as T), channel names (OME ``Channel/@Name``; ImageJ
    slice labels) and the pixel size, so :func:`open_image`, Fiji and napari read them back.

    Parameters
    ----------
    path : path-like
        Output file, ``.tif``/``.tiff`` (``.ome.tif`` recommended for OME-TIFF).
    array : array-like
        The image, laid out as ``axes`` (default ``(N, H, W, C)``).
    axes : str
        Axes of ``array`` (see :func:`parse_axes`).
    channel_names : sequence of str, optional
        One name per channel.
    overwrite : bool
        Replace an existing file (otherwise refused).
    metadata : dict, optional
        Extra tifffile metadata (e.g. OME ``Description``), merged over musplit's.
    protect : iterable of path-like
        Input paths that must never be written to (pass the inputs of the run).
    imagej : bool
        Write an ImageJ hyperstack instead of OME-TIFF (uint8, uint16 and float32 only; other
        types are converted to float32).
    pixel_size : (float, float), optional
        ``(y, x)`` pixel size in micrometres.
    compression : str, optional
        tifffile compression, e.g. ``"zlib"`` (uncompressed files can be memory-mapped).
    bigtiff : bool, optional
        Force BigTIFF; by default chosen when the data exceed ~4 GB.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        A bad array, names or pixel size; an output that exists (without ``overwrite``), is
        an input or cannot be created; an :class:`OSError` while writing (a full disk), after
        the temporary file was removed.
    """
    if not str(path).lower().endswith(TIFF_SUFFIXES):
        raise InputError(f"{path}: a TIFF output needs a .tif or .tiff extension")
    data = _canonical_array(array, axes)
    n, h, w, c = data.shape
    names = _check_names(channel_names, c, path)
    pixel = _check_pixel_size(pixel_size)
    out = check_output(path, overwrite, protect, "tiff")
    dtype = data.dtype
    if imagej and dtype not in (np.uint8, np.uint16, np.float32):
        logger.info("%s: ImageJ stores %s as float32", out, dtype)
        dtype = np.dtype(np.float32)

    def planes() -> Iterator[np.ndarray]:
        # One plane at a time, T major then C: no transposed copy of the whole image.
        for t in range(n):
            for ch in range(c):
                yield np.ascontiguousarray(data[t, :, :, ch], dtype=dtype)

    kwargs: dict[str, Any] = {
        "shape": (n, c, h, w),
        "dtype": dtype,
        "photometric": "minisblack",
        "compression": compression,
    }
    if imagej:
        md: dict[str, Any] = {"axes": "TCYX"}
        if names:
            md["Labels"] = names * n
        if pixel:
            md["unit"] = "um"
            kwargs["resolution"] = (1.0 / pixel[1], 1.0 / pixel[0])
        kwargs["imagej"] = True
    else:
        md = {"axes": "TCYX"}
        if names:
            md["Channel"] = {"Name": names}
        if pixel:
            md.update(
                PhysicalSizeY=pixel[0],
                PhysicalSizeYUnit="µm",
                PhysicalSizeX=pixel[1],
                PhysicalSizeXUnit="µm",
            )
        kwargs["ome"] = True
        kwargs["bigtiff"] = bigtiff
    md.update(metadata or {})
    kwargs["metadata"] = md
    # A full disk mid-write: the temporary is removed, and the error is one line naming out.
    with output_errors(out), atomic_write(out) as tmp:
        tifffile.imwrite(tmp, planes(), **kwargs)
    logger.info(
        "wrote %s (%s, N=%d, %dx%d, C=%d)", out, "ImageJ" if imagej else "OME-TIFF", n, h, w, c
    )
    return out
