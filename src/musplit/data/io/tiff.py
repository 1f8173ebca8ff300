"""Opening TIFF files (plain, ImageJ hyperstack, OME-TIFF, BigTIFF, pyramids) as ImageSources.

Picks the image series (thumbnails and reduced-resolution series skipped) and pyramid level,
refuses a codec that is not installed before any pixel is read, checks the file is not
truncated, chooses the lazy back end, and reads channel names and pixel sizes from OME-XML,
ImageJ metadata or resolution tags.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from musplit.data.io.axes import (
    _TO_MICROMETRE,
    _axes_from_tifffile,
    _resolve_axes,
    frames_instead,
)
from musplit.data.io.backends import _Memmap, _TiffPages, _WholeTiff
from musplit.data.io.failures import _check_codecs, _one_line, _tifffile_errors
from musplit.data.io.source import ImageSource
from musplit.errors import InputError

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")

_THUMBNAIL_NAMES = {"thumbnail", "macro", "label", "overview", "preview"}

# tifffile series kinds that carry no axes metadata: their axes are tifffile's reading of the
# page layout ("shaped" is what tifffile.imwrite writes without metadata).
_NO_AXES_KINDS = {"shaped", "generic", "uniform"}


def _layout_guess(series_axes: str, kind: str, stack_of: str) -> tuple[str | None, str | None]:
    """``(metadata axes, guess)`` of a series: a file without axes metadata whose samples are
    stored as separate planes (how tifffile.imwrite stores a ``(3, H, W)`` or ``(4, H, W)``
    array) has no axes, only a layout; its planes are channels or, with
    ``stack_of="frames"``, frames (module doc of :mod:`musplit.data.io`)."""
    axes = _axes_from_tifffile(series_axes)
    if axes is None or kind not in _NO_AXES_KINDS or "S" not in series_axes:
        return axes, None
    if series_axes.index("S") > series_axes.index("Y"):  # interleaved samples: colour
        return axes, None
    if stack_of == "frames":
        return None, frames_instead(axes) or axes
    return None, axes


def _is_thumbnail(series: Any, all_series: Sequence[Any]) -> bool:
    """A series that is not a full-resolution image: tifffile marks it reduced-resolution
    (NewSubfileType bit 0), it is named like a slide scanner's extra image, or it is a single
    plane at least 8x smaller in Y and in X than another series."""
    page = series.keyframe
    if page is None:
        return False
    if getattr(page, "is_reduced", False):
        return True
    if str(getattr(series, "name", "") or "").strip().lower() in _THUMBNAIL_NAMES:
        return True
    if len(series.pages) == 1:
        h, w = int(page.imagelength), int(page.imagewidth)
        for other in all_series:
            key = other.keyframe
            if other is series or key is None:
                continue
            if int(key.imagelength) >= 8 * h and int(key.imagewidth) >= 8 * w:
                return True
    return False


def _pick_series(all_series: Sequence[Any], series: int | None, name: str) -> int:
    """The series index to read: the one asked for, else the first full-resolution one."""
    n = len(all_series)
    if series is not None:
        if series >= n:
            raise InputError(
                f"series {series} does not exist in {name} (it has {n} series: "
                f"{'0' if n == 1 else f'0..{n - 1}'})"
            )
        if n > 1:
            logger.info("%s holds %d image series; reading series %d", name, n, series)
        return series
    full = [i for i, s in enumerate(all_series) if not _is_thumbnail(s, all_series)]
    pick = full[0] if full else 0
    if n > 1:
        skipped = [i for i in range(n) if i not in full]
        logger.info(
            "%s holds %d image series; reading series %d (shape %s)%s; series= (--series) "
            "picks another",
            name,
            n,
            pick,
            tuple(all_series[pick].shape),
            f", skipping reduced-resolution/thumbnail series {skipped}" if skipped else "",
        )
    return pick


def _open_tiff(
    path: Path, axes: str | None, level: int, series: int | None = None,
    stack_of: str = "channels",
) -> ImageSource:
    name = str(path)
    size = path.stat().st_size
    with _tifffile_errors() as errors:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on bad files
            raise InputError(f"{name} is not a readable TIFF file ({_one_line(exc)})") from None
        try:
            all_series = tif.series
            if not all_series:
                raise InputError(f"{name} contains no images")
            index = _pick_series(all_series, series, name)
            full = all_series[index]
            n_levels = len(full.levels)
            if level >= n_levels:
                where = f"series {index} of {name}" if len(all_series) > 1 else name
                raise InputError(
                    f"level {level} does not exist in {where} (it has {n_levels} level"
                    f"{'s' if n_levels != 1 else ''}: 0..{n_levels - 1})"
                )
            s = full.levels[level]
            _check_codecs(s.keyframe, name)
            try:
                compression = tifffile.COMPRESSION(int(s.keyframe.compression)).name
            except ValueError:
                compression = str(int(s.keyframe.compression))
            shape, dtype, offset = tuple(s.shape), np.dtype(s.dtype), s.dataoffset
            page_shape = tuple(s.keyframe.shape)
            n_pages = len(s)
            ends: list[int] = []
            if offset is None and n_pages:
                # Not contiguous: check that the last page's data lie inside the file (a
                # contiguous series is checked against its data offset below).
                last = s.pages[-1]
                ends = [
                    o + c
                    for o, c in zip(
                        getattr(last, "dataoffsets", ()),
                        getattr(last, "databytecounts", ()),
                        strict=False,
                    )
                ]
            meta_axes, layout = _layout_guess(s.axes, str(full.kind), stack_of)
            channel_names, pixel_size = _tiff_metadata(tif, full, s, index, name)
        except InputError:
            tif.close()
            raise
        except Exception as exc:  # noqa: BLE001
            tif.close()
            raise InputError(f"{name} is not a readable TIFF file ({_one_line(exc)})") from None
        tif.close()
    if errors:
        raise InputError(f"{name} looks truncated or corrupt: {errors[0]}")
    if (offset is not None and offset + math.prod(shape) * dtype.itemsize > size) or (
        ends and max(ends) > size
    ):
        raise InputError(f"{name} is truncated: its pixel data run past the end of the file")

    data: Any = None
    if offset is not None:
        # Contiguous pixels: a memory map reads only the pages that are touched.
        try:
            mm = _Memmap(path, "tiff", level, index)
            if mm.shape == shape:
                data = mm
        except (ValueError, OSError):
            data = None
    if data is None:
        lead = shape[: len(shape) - len(page_shape)]
        if shape[len(lead) :] == page_shape and math.prod(lead) == n_pages:
            data = _TiffPages(path, level, shape, dtype, page_shape, index)
        else:
            data = _WholeTiff(path, level, shape, dtype, index)
        data.compression = compression  # named if a codec turns out to be missing
    found, origin = _resolve_axes(axes, meta_axes, shape, path, guess=layout)
    # tifffile's unknown page axes (Q, I) read as frames: the layout's reading, not metadata
    from_layout = origin == "metadata" and full.kind in _NO_AXES_KINDS and (
        "Q" in s.axes or "I" in s.axes)
    if origin != "metadata":
        channel_names = None  # names were recorded for the metadata's axes, not these
    parts = []
    if len(all_series) > 1:
        parts.append(f"series {index}")
    if level:
        parts.append(f"level {level}")
    return ImageSource(
        data,
        found,
        path=path,
        name=f"{name} ({', '.join(parts)})" if parts else name,
        axes_origin=origin,
        channel_names=channel_names,
        pixel_size=pixel_size,
        lazy=not isinstance(data, _WholeTiff),
        series_index=index,
        level=level,
        n_series=len(all_series),
        n_levels=n_levels,
        axes_from_layout=from_layout,
    )


def _ome_image(root: ET.Element, tif: tifffile.TiffFile, series: Any, index: int) -> Any:
    """The OME ``Image`` element that describes tifffile's series ``index``, or None.

    tifffile makes one series per ``Image`` that has pixel data, in document order; when some
    images were skipped, the image whose first ``TiffData`` IFD is the series' first page is it.
    """
    images = [im for im in root.findall("{*}Image") if im.find("{*}Pixels") is not None]
    if len(images) == len(tif.series):
        return images[index]
    try:
        first = int(series.pages[0].index)
    except (AttributeError, IndexError, TypeError):
        return None
    for im in images:
        data = im.find("{*}Pixels/{*}TiffData")
        if data is not None and int(data.get("IFD", "0")) == first:
            return im
    return None


def _tiff_metadata(
    tif: tifffile.TiffFile, full: Any, series: Any, index: int, name: str
) -> tuple[list[str] | None, tuple[float, float] | None]:
    """Channel names and (y, x) pixel size in micrometres from OME-XML, ImageJ or plain TIFF
    resolution tags, for series ``index`` (``full``) at the pyramid level ``series``."""
    names: list[str] | None = None
    pixel: tuple[float, float] | None = None
    axes = _axes_from_tifffile(series.axes) or ""
    n_c = series.shape[axes.index("C")] if "C" in axes else 1
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            image = _ome_image(root, tif, full, index)
            pixels = image.find("{*}Pixels") if image is not None else None
            if pixels is not None:
                found = [ch.get("Name") for ch in pixels.findall("{*}Channel")]
                if found and all(found):
                    names = [str(x) for x in found]
                py, px = pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeX")
                uy = pixels.get("PhysicalSizeYUnit", "µm")
                ux = pixels.get("PhysicalSizeXUnit", "µm")
                if py and px and uy in _TO_MICROMETRE and ux in _TO_MICROMETRE:
                    pixel = (float(py) * _TO_MICROMETRE[uy], float(px) * _TO_MICROMETRE[ux])
        except (ET.ParseError, ValueError) as exc:
            logger.warning("%s: unreadable OME-XML metadata (%s); ignoring it", name, exc)
        if pixel is not None and series is not full:
            # OME-XML gives the full-resolution size; a pyramid level is coarser.
            ky, kx = full.keyframe, series.keyframe
            pixel = (
                pixel[0] * int(ky.imagelength) / int(kx.imagelength),
                pixel[1] * int(ky.imagewidth) / int(kx.imagewidth),
            )
    elif tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        labels = meta.get("Labels")
        if isinstance(labels, list) and labels and len(labels) % n_c == 0:
            names = [str(x) for x in labels[:n_c]]
        unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
        if unit in _TO_MICROMETRE:
            pixel = _resolution(series.keyframe, _TO_MICROMETRE[unit])
    else:
        # A plain TIFF: resolution tags count only with a metric unit (inches are
        # almost always a writer's 72 dpi default, not a microscope's pixel size).
        try:
            unit = int(series.keyframe.tags["ResolutionUnit"].value)
        except (KeyError, TypeError, ValueError):
            unit = 0
        if unit == 3:  # centimetre
            pixel = _resolution(series.keyframe, 1e4)
    if names is not None and len(names) != n_c:
        names = None
    return names, pixel


def _resolution(page: Any, to_micrometre: float) -> tuple[float, float] | None:
    """(y, x) pixel size from a page's X/YResolution (pixels per unit) in micrometres."""
    try:
        tags = page.tags
        xr, yr = tags["XResolution"].value, tags["YResolution"].value
        px, py = xr[1] / xr[0], yr[1] / yr[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    if not (px > 0 and py > 0 and math.isfinite(px) and math.isfinite(py)):
        return None
    return (py * to_micrometre, px * to_micrometre)
