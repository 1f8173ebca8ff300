"""Reading and writing microscopy images: TIFF, OME-TIFF, Zarr, OME-Zarr and NumPy.

Every reader returns an :class:`ImageSource`: a lazily read N-D image together with its axes
string (letters from ``STCZYX``, see :func:`parse_axes`). Whatever the order on disk, a source is
seen through one canonical view, ``(N, H, W, C)`` (axes ``"SYXC"``), and only the frames and
channels asked for are read (spec/usplit.md 5.1 and 7; spec/ecosystem.md DATA-1, -3 to -6):

- a TIFF whose pixels are stored contiguously is memory-mapped; any other TIFF (compressed, tiled,
  interleaved) is read page by page, and only the pages of the requested frames;
- a Zarr array is sliced, so only the chunks holding the requested frames are read;
- ``.npy`` files are memory-mapped; a ``.npz`` member is read once, on first use.

TIFF files: every compression tifffile decodes with ``imagecodecs`` is read (LZW, Deflate, Zstd,
PackBits, LZMA, JPEG, JPEG 2000, JPEG XL, PNG, LERC, ... with or without a predictor); a file whose
codec is missing or unknown is refused when opened, with the compression named and the fix
(``pip install imagecodecs``), and a file whose pixel data do not decode is reported as damaged.
Any byte order and any integer or float pixel type is read. A file with several image series
(OME-TIFF with several images, a thumbnail next to the image) shows one series: ``series=`` picks
it; by default the first full-resolution one (series marked as reduced-resolution, named like a
thumbnail, or a single plane 8x smaller in Y and X than another series are skipped). ``level=``
picks a pyramid level (SubIFDs) of that series. :attr:`ImageSource.series_index` and
:attr:`ImageSource.level` record what was read.

Canonicalisation: S, T and Z are sample axes (several become one, the first one major, so the
frames of an ImageJ ``TZCYX`` hyperstack run ``t0z0, t0z1, ..., t1z0, ...``): musplit splits 2-D
images, so the Z planes of a stack are read as separate 2-D frames (logged at INFO); a Z axis of
length 1 is dropped. A missing S or C becomes a length-1 axis. What is read is float32 and finite;
integer pixels are converted, booleans and complex numbers are refused.

Axes come, in this order, from the caller, from file metadata (ImageJ, OME-XML, OME-Zarr
``multiscales``, Zarr v3 ``dimension_names``), or from an unambiguous guess:

============  =========  ====================================================================
dimensions    guessed    when
============  =========  ====================================================================
2             ``YX``     always
3             ``SYX``    unless the last axis has at most 4 elements and the others more
                         (an RGB-like ``YXC`` image: ambiguous, the caller must say)
4             ``SYXC``   when the last axis has at most 8 elements and Y, X more
other         --         never: the caller must pass the axes (``--axes`` on the command line)
============  =========  ====================================================================

Writers (:func:`write_tiff`, :func:`write_zarr`, :class:`ZarrWriter`) store ``(N, H, W, C)``
data as OME-TIFF (or an ImageJ hyperstack) and OME-Zarr 0.5 with axes ``TCYX``, channel names and
pixel sizes, so Fiji and napari open them. They write to a hidden temporary name in the target
directory and rename it into place at the end, so a crash never leaves a half-written output;
they refuse an existing output unless ``overwrite=True`` and never write onto a protected input.

Every user mistake raises :class:`musplit.errors.InputError` with one line naming the file and
the problem.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import threading
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from musplit.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "AXES_LETTERS",
    "CANONICAL_AXES",
    "PAVIA_ATN_CHANNELS",
    "ImageSource",
    "ZarrWriter",
    "channel_statistics",
    "check_image_size",
    "load_channel_files",
    "load_image",
    "load_pavia_atn",
    "open_channel_files",
    "open_image",
    "parse_axes",
    "write_tiff",
    "write_zarr",
]

AXES_LETTERS = "STCZYX"
CANONICAL_AXES = "SYXC"

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_SUPPORTED = ".tif/.tiff (also OME-TIFF, BigTIFF), .zarr (v2/v3, OME-Zarr), .npy, .npz"

#: Channel map of the PaviaATN file (spec/usplit.md 7.1).
PAVIA_ATN_CHANNELS = {"nucleus": 0, "cell_cycle": 1, "actin": 2, "tubulin": 3}

# Reads are split into blocks of at most this many bytes (in the stored dtype) so that reading
# many frames never holds a second full-size copy next to the float32 output.
_BLOCK_BYTES = 256 * 2**20

# Length units -> micrometres, for pixel sizes found in OME-XML, ImageJ and OME-Zarr metadata.
_TO_MICROMETRE = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Axes
# --------------------------------------------------------------------------------------------


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
    hint = "pass the axes (e.g. axes='SCYX', or --axes SCYX on the command line)"
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[2] <= 4 < min(shape[0], shape[1]):
            raise InputError(
                f"{_name(path)} has shape {shape} and no axes metadata: it could be SYX or YXC "
                f"(colour); {hint}"
            )
        return "SYX"
    if len(shape) == 4 and shape[3] <= 8 < min(shape[1], shape[2]):
        return "SYXC"
    raise InputError(f"{_name(path)} has shape {shape} and no axes metadata; {hint}")


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


# --------------------------------------------------------------------------------------------
# Lazy array back ends: objects with .shape, .dtype and basic indexing by a full tuple of
# ints and slices, returning numpy arrays. They pickle without their data, so an ImageSource
# can be sent to DataLoader worker processes.
# --------------------------------------------------------------------------------------------


class _Memmap:
    """A read-only memory map of a ``.npy`` file or of a contiguous TIFF series."""

    series = 0

    def __init__(self, path: Path, kind: str, level: int = 0, series: int = 0):
        self.path, self.kind, self.level, self.series = path, kind, level, series
        self._open()

    def _open(self) -> None:
        if self.kind == "npy":
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        else:
            self._array = tifffile.memmap(self.path, series=self.series, level=self.level, mode="r")
        self.shape, self.dtype = tuple(self._array.shape), self._array.dtype

    def __getitem__(self, index: tuple) -> np.ndarray:
        return np.asarray(self._array[index])

    def __getstate__(self) -> dict:
        return {"path": self.path, "kind": self.kind, "level": self.level, "series": self.series}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()


class _TiffPages:
    """A TIFF series read page by page: only the pages that hold the requested indices.

    The series shape is ``lead + page_shape``; page ``k`` holds the element ``unravel(k, lead)``
    of the leading axes. The file is opened once per process (a handle shared across a fork
    would share its file position).
    """

    def __init__(
        self,
        path: Path,
        level: int,
        shape: tuple,
        dtype: np.dtype,
        page_shape: tuple,
        series: int = 0,
    ):
        self.path, self.level, self.series = path, level, series
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.page_shape = tuple(page_shape)
        self.lead = self.shape[: len(self.shape) - len(self.page_shape)]
        self._tif: tifffile.TiffFile | None = None
        self._pid = -1

    def _file(self) -> tifffile.TiffFile:
        if self._tif is None or self._pid != os.getpid():
            self._tif = tifffile.TiffFile(self.path)
            self._pid = os.getpid()
        return self._tif

    def __getitem__(self, index: tuple) -> np.ndarray:
        nl = len(self.lead)
        lists, squeeze = [], []
        for ix, n in zip(index[:nl], self.lead, strict=True):
            if isinstance(ix, slice):
                lists.append(np.arange(n)[ix])
                squeeze.append(slice(None))
            else:
                lists.append(np.array([ix]))
                squeeze.append(0)
        grid = np.meshgrid(*lists, indexing="ij") if lists else []
        pages = np.ravel_multi_index(grid, self.lead).ravel() if lists else np.array([0])
        with _tifffile_errors() as errors:
            data = self._file().asarray(key=pages.tolist(), series=self.series, level=self.level)
        if errors:
            raise InputError(f"{self.path} looks truncated or corrupt: {errors[0]}")
        data = data.reshape(tuple(len(x) for x in lists) + self.page_shape)
        return data[tuple(squeeze) + tuple(index[nl:])]

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tif"], state["_pid"] = None, -1
        return state


class _WholeTiff:
    """Fallback for TIFF layouts that cannot be read page by page: read once, on first use."""

    def __init__(self, path: Path, level: int, shape: tuple, dtype: np.dtype, series: int = 0):
        self.path, self.level, self.series = path, level, series
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._data: np.ndarray | None = None

    def __getitem__(self, index: tuple) -> np.ndarray:
        if self._data is None:
            logger.warning(
                "%s: this TIFF layout cannot be read lazily; reading it whole", self.path
            )
            with _tifffile_errors() as errors:
                self._data = tifffile.imread(self.path, series=self.series, level=self.level)
            if errors:
                raise InputError(f"{self.path} looks truncated or corrupt: {errors[0]}")
            self._data = self._data.reshape(self.shape)
        return self._data[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}


class _NpzMember:
    """One array of a ``.npz`` archive: shape and dtype from its header, data on first use."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._data: np.ndarray | None = None

    def __getitem__(self, index: tuple) -> np.ndarray:
        if self._data is None:
            with np.load(self.path, allow_pickle=False) as npz:
                self._data = npz[self.key]
        return self._data[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}


class _RecordErrors(logging.Handler):
    """Collects tifffile's ERROR records of this thread (tifffile logs, not raises, on most
    damage: a truncated file silently loses its last pages otherwise)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    handler = _RecordErrors()
    log = logging.getLogger("tifffile")
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


# tifffile's words for a codec it cannot use: "<COMPRESSION.LZW: 5> requires the 'imagecodecs'
# package", "<COMPRESSION.X: n> not supported", "65535 is not a known COMPRESSION", and the same
# for predictors.
_CODEC_WORDS = re.compile(
    r"imagecodecs|(COMPRESSION|PREDICTOR)\b.*\b(not supported|not implemented)"
    r"|is not a known (COMPRESSION|PREDICTOR)"
)
_CODEC_NAME = re.compile(
    r"<(COMPRESSION|PREDICTOR)\.(\w+): (\d+)>|(\d+) is not a known (COMPRESSION|PREDICTOR)"
)


def _codec_error(name: str, detail: str) -> InputError | None:
    """The one-line error for a TIFF codec that tifffile cannot use here, or None when
    ``detail`` (an exception's text) is about something else (damaged data, ...)."""
    if not _CODEC_WORDS.search(detail):
        return None
    found = _CODEC_NAME.search(detail)
    if found and found.group(1):
        what = f"{found.group(1).lower()} {found.group(2)} (TIFF code {found.group(3)})"
    elif found:
        what = f"an unknown {found.group(5).lower()} (TIFF code {found.group(4)})"
    else:
        what = "a compression"
    if "imagecodecs" in detail:
        return InputError(
            f"{name} uses {what}, which needs the imagecodecs package to decode: "
            "pip install imagecodecs"
        )
    return InputError(
        f"{name} uses {what}, which the installed tifffile {tifffile.__version__} and "
        "imagecodecs cannot decode: pip install imagecodecs (or a newer one: pip install -U "
        "imagecodecs), or save the image uncompressed or LZW-compressed"
    )


def _check_codecs(page: Any, name: str) -> None:
    """Refuse, before any pixel is read, a page whose pixel type, compression or predictor this
    installation cannot decode (tifffile resolves the codec; nothing is decoded)."""
    if page.dtype is None:
        raise InputError(
            f"{name} has a pixel type tifffile cannot read ({page.bitspersample}-bit, "
            f"SampleFormat {int(page.sampleformat)})"
        )
    comp = int(page.compression)
    if comp != 1:
        try:
            tifffile.TIFF.DECOMPRESSORS[comp]
        except KeyError as exc:
            raise _codec_error(name, str(exc)) or InputError(
                f"{name} uses compression {comp}, which tifffile cannot decode"
            ) from None
    pred = int(getattr(page, "predictor", 1) or 1)
    if pred != 1 and comp not in tifffile.TIFF.IMAGE_COMPRESSIONS:
        try:
            tifffile.TIFF.UNPREDICTORS[pred]
        except KeyError as exc:
            raise _codec_error(name, str(exc)) or InputError(
                f"{name} uses predictor {pred}, which tifffile cannot decode"
            ) from None


# --------------------------------------------------------------------------------------------
# ImageSource
# --------------------------------------------------------------------------------------------


def _check_dtype(dtype: np.dtype, name: str) -> None:
    kind = np.dtype(dtype).kind
    if kind == "b":
        raise InputError(f"{name} holds boolean pixels (a mask?); musplit needs intensity images")
    if kind == "c":
        raise InputError(f"{name} holds complex pixels; musplit needs real intensity images")
    if kind not in "iuf":
        raise InputError(f"{name} has pixel type {np.dtype(dtype)}, which is not a number type")


def _frame_list(frames: Any, n: int, name: str) -> np.ndarray:
    """Frame indices as an int array, validated against ``n`` frames."""
    if frames is None:
        return np.arange(n)
    if isinstance(frames, slice):
        return np.arange(n)[frames]
    if isinstance(frames, (int, np.integer)) and not isinstance(frames, bool):
        idx = np.array([frames])
    else:
        try:
            idx = np.asarray(list(frames))
        except TypeError:
            raise InputError(f"frames for {name} must be indices, got {frames!r}") from None
        if idx.size == 0:
            idx = idx.astype(int)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise InputError(f"frames for {name} must be integer indices, got {frames!r}")
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise InputError(
            f"frame {int(bad[0])} does not exist in {name} (it has {n} frames: 0..{n - 1})"
        )
    return idx.astype(np.int64)


def _channel_list(channels: Any, n: int, names: list[str] | None, name: str) -> list[int]:
    """Channel indices (ints, or names when the source has channel names), validated."""
    if channels is None:
        return list(range(n))
    if isinstance(channels, (int, np.integer, str)):
        channels = [channels]
    out = []
    for c in channels:
        if isinstance(c, str):
            if not names or c not in names:
                known = ", ".join(names) if names else "none"
                raise InputError(
                    f"channel {c!r} does not exist in {name} (its channel names: {known})"
                )
            out.append(names.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= c < n:
                raise InputError(
                    f"channel {c} does not exist in {name} "
                    f"(it has {n} channel{'s' if n != 1 else ''}: 0..{n - 1})"
                )
            out.append(int(c))
        else:
            raise InputError(f"channels for {name} must be indices or names, got {c!r}")
    return out


def _region(region: Any, height: int, width: int, name: str) -> tuple[slice, slice]:
    if region is None:
        return slice(0, height), slice(0, width)
    try:
        ys, xs = region
        y = slice(*ys.indices(height)[:2])
        x = slice(*xs.indices(width)[:2])
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"region for {name} must be (slice_y, slice_x), got {region!r}") from None
    if y.stop <= y.start or x.stop <= x.start:
        raise InputError(f"region {region!r} is empty for {name} ({height}x{width})")
    return y, x


class ImageSource:
    """A lazily read N-D image with an axes string, seen as ``(N, H, W, C)`` frames.

    Made by :func:`open_image` (or :func:`open_channel_files`); constructing one reads no pixels.

    Attributes
    ----------
    path : Path or None
        The file (None for an in-memory array).
    name : str
        How the source is named in messages.
    axes : str
        Axes of the data as stored, one letter per dimension of ``shape``. S, T and Z are
        sample axes: their elements are the canonical frames, the first one major.
    shape : tuple of int
        Shape of the data as stored.
    dtype : numpy.dtype
        Pixel type as stored, in native byte order (a big-endian file says ``uint16``, not
        ``>u2``); :meth:`read` returns float32.
    axes_origin : str
        Where ``axes`` came from: ``"given"``, ``"metadata"`` or ``"guessed"``.
    channel_names : list of str or None
        One name per canonical channel when the file records them.
    pixel_size : tuple of float or None
        ``(y, x)`` pixel size in micrometres when the file records it.
    lazy : bool
        True when pixels are read from disk on demand (memory map, pages or chunks).
    series_index : int or None
        The TIFF image series read (see :func:`open_image`); None for other sources.
    level : int
        The pyramid level read (0 = full resolution).
    n_series, n_levels : int
        How many series the file holds and how many levels the series read has.
    """

    def __init__(
        self,
        data: Any,
        axes: str,
        *,
        path: str | os.PathLike | None = None,
        name: str | None = None,
        axes_origin: str = "given",
        channel_names: Sequence[str] | None = None,
        pixel_size: tuple[float, float] | None = None,
        lazy: bool = False,
        series_index: int | None = None,
        level: int = 0,
        n_series: int = 1,
        n_levels: int = 1,
    ):
        self.path = Path(path) if path is not None else None
        self.name = name if name is not None else _name(path)
        self.shape = tuple(int(s) for s in data.shape)
        self.dtype = np.dtype(data.dtype)
        _check_dtype(self.dtype, self.name)
        self.dtype = self.dtype.newbyteorder("=")
        self.axes = parse_axes(axes, len(self.shape), self.name, shape=self.shape)
        if 0 in self.shape:
            raise InputError(f"{self.name} is empty: shape {self.shape} (axes {self.axes})")
        self.axes_origin = axes_origin
        self.lazy = lazy
        self.series_index = series_index
        self.level = int(level)
        self.n_series, self.n_levels = int(n_series), int(n_levels)
        self._data = data
        ax = self.axes
        # Z of length 1 is dropped (index 0); a longer one is a sample axis like S and T.
        self._z_frames = "Z" in ax and self.shape[ax.index("Z")] > 1
        if self._z_frames:
            logger.info(
                "%s: Z planes are read as separate 2-D frames (%d planes, axes %s)",
                self.name,
                self.shape[ax.index("Z")],
                ax,
            )
        self._samples = [i for i, a in enumerate(ax) if a in "ST" or (a == "Z" and self._z_frames)]
        self._sample_shape = tuple(self.shape[i] for i in self._samples)
        n_ch = self.shape[ax.index("C")] if "C" in ax else 1
        self._canonical = (
            math.prod(self._sample_shape),
            self.shape[ax.index("Y")],
            self.shape[ax.index("X")],
            n_ch,
        )
        self.channel_names = _valid_names(channel_names, n_ch, self.name)
        self.pixel_size = pixel_size

    # ---- canonical geometry -----------------------------------------------------------------
    @property
    def canonical_shape(self) -> tuple[int, int, int, int]:
        """``(N, H, W, C)``: the shape of :meth:`read` with no arguments."""
        return self._canonical

    @property
    def n_frames(self) -> int:
        return self._canonical[0]

    @property
    def height(self) -> int:
        return self._canonical[1]

    @property
    def width(self) -> int:
        return self._canonical[2]

    @property
    def n_channels(self) -> int:
        return self._canonical[3]

    @property
    def nbytes_float32(self) -> int:
        """Bytes that reading everything as float32 takes: the RAM estimate of in-memory mode."""
        return 4 * math.prod(self._canonical)

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return (
            f"ImageSource({self.name!r}, axes={self.axes!r}, shape={self.shape}, "
            f"dtype={self.dtype}, canonical={self._canonical}, lazy={self.lazy})"
        )

    # ---- reading ----------------------------------------------------------------------------
    def read(
        self,
        frames: Any = None,
        channels: Any = None,
        region: Any = None,
        *,
        check_finite: bool = True,
    ) -> np.ndarray:
        """Read frames and channels as float32.

        Parameters
        ----------
        frames : int, slice, sequence of int or None
            Canonical frame indices (all when None), returned in the order given.
        channels : int, str, sequence of int/str or None
            Channel indices, or names when :attr:`channel_names` is known (all when None).
        region : (slice, slice), optional
            A ``(rows, columns)`` window of every frame (the whole frame when None).
        check_finite : bool
            Refuse non-finite pixels (default); False returns them as they are (NaN, Inf).

        Returns
        -------
        numpy.ndarray
            float32, shape ``(n, h, w, c)``.

        Raises
        ------
        InputError
            Out-of-range frames or channels, a damaged file, or non-finite pixels in what was
            read (the count is in the message).
        """
        n, height, width, n_ch = self._canonical
        idx = _frame_list(frames, n, self.name)
        chans = _channel_list(channels, n_ch, self.channel_names, self.name)
        ys, xs = _region(region, height, width, self.name)
        h, w = ys.stop - ys.start, xs.stop - xs.start
        out = np.empty((len(idx), h, w, len(chans)), dtype=np.float32)
        if not len(idx) or not chans:
            return out
        c0, c1 = min(chans), max(chans) + 1
        pick = np.asarray(chans) - c0
        frame_bytes = h * w * (c1 - c0) * self.dtype.itemsize
        step = max(1, _BLOCK_BYTES // max(frame_bytes, 1))
        bad = 0
        pos = 0
        for start, stop in _runs(idx, step if len(self._samples) <= 1 else 1):
            block = self._read_block(start, stop, ys, xs, c0, c1)
            part = out[pos : pos + stop - start]
            part[...] = block[..., pick]
            if check_finite:
                bad += part.size - int(np.count_nonzero(np.isfinite(part)))
            pos += stop - start
        if bad:
            raise InputError(
                f"{self.name} has {bad} non-finite pixel values (NaN or Inf, or beyond the "
                f"float32 range) in the {len(idx)} frame(s) read; clean the image first"
            )
        return out

    def frame(self, i: int, channels: Any = None) -> np.ndarray:
        """One frame as float32, shape ``(H, W, c)``."""
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise InputError(f"frame index for {self.name} must be an integer, got {i!r}")
        return self.read([i], channels)[0]

    def _read_block(
        self, start: int, stop: int, ys: slice, xs: slice, c0: int, c1: int
    ) -> np.ndarray:
        """Canonical frames ``start:stop`` as stored dtype, shape ``(n, h, w, c1 - c0)``."""
        index: list[Any] = []
        multi = None
        if len(self._samples) > 1:  # one frame at a time: indices into each sample axis
            multi = iter(np.unravel_index(start, self._sample_shape))
        for i, a in enumerate(self.axes):
            if i in self._samples:
                index.append(int(next(multi)) if multi is not None else slice(start, stop))
            elif a == "Z":
                index.append(0)
            elif a == "Y":
                index.append(ys)
            elif a == "X":
                index.append(xs)
            else:  # C
                index.append(slice(c0, c1))
        try:
            with _tifffile_errors() as errors:
                block = np.asarray(self._data[tuple(index)])
        except InputError:
            raise
        except (TypeError, AttributeError, NameError, IndexError, AssertionError, MemoryError):
            raise  # our own bugs keep their traceback; memory is not the file's fault
        except (ValueError, KeyError, NotImplementedError) as exc:
            # A codec that is missing here is not damage (tifffile raises ValueError for it).
            raise _codec_error(self.name, _one_line(exc)) or InputError(
                f"{self.name} could not be read (damaged file?): {_one_line(exc)}"
            ) from None
        except ImportError as exc:  # a codec's module, looked up only when decoding
            comp = getattr(self._data, "compression", None)
            what = f"compression {comp}" if comp else "a compression"
            raise InputError(
                f"{self.name} uses {what}, whose codec is not installed ({_one_line(exc)}): "
                "pip install imagecodecs"
            ) from None
        except OSError as exc:
            raise InputError(
                f"{self.name} could not be read (I/O error: {_one_line(exc)})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a decoder failing on damaged pixel data
            raise InputError(
                f"{self.name} could not be read (damaged file?): {_one_line(exc)}"
            ) from None
        if errors:
            raise InputError(f"{self.name} looks truncated or corrupt: {errors[0]}")
        kept = [
            ("S" if i in self._samples else a)
            for i, (a, ix) in enumerate(zip(self.axes, index, strict=True))
            if isinstance(ix, slice)
        ]
        block = block.transpose([kept.index(a) for a in CANONICAL_AXES if a in kept])
        if "S" not in kept:
            block = block[None]
        if "C" not in kept:
            block = block[..., None]
        return block

    def close(self) -> None:
        """Release open file handles (reading again reopens them)."""
        closer = getattr(self._data, "close", None)
        if callable(closer) and not isinstance(self._data, np.ndarray):
            closer()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runs(idx: np.ndarray, max_len: int) -> Iterator[tuple[int, int]]:
    """Split frame indices, in request order, into ``[start, stop)`` runs of consecutive
    indices no longer than ``max_len``: one read per run."""
    i = 0
    while i < len(idx):
        j = i + 1
        while j < len(idx) and j - i < max_len and idx[j] == idx[j - 1] + 1:
            j += 1
        yield int(idx[i]), int(idx[j - 1]) + 1
        i = j


def _valid_names(names: Sequence[str] | None, n: int, where: str) -> list[str] | None:
    if names is None:
        return None
    names = [str(x) for x in names]
    if len(names) != n:
        logger.warning(
            "%s: %d channel names recorded for %d channels; ignoring the names",
            where,
            len(names),
            n,
        )
        return None
    return names


class _ChannelStack(ImageSource):
    """Several single-channel sources with equal ``(N, H, W)``, stacked as channels."""

    def __init__(self, parts: list[ImageSource], name: str, channel_names: list[str]):
        first = parts[0]
        for p in parts:
            if p.n_channels != 1:
                raise InputError(
                    f"{p.name} has {p.n_channels} channels; one file (or array) per channel "
                    "needs single-channel images"
                )
            if p.canonical_shape[:3] != first.canonical_shape[:3]:
                raise InputError(
                    f"channel images differ in shape: {p.name} is (N, H, W) = "
                    f"{p.canonical_shape[:3]} but {first.name} is {first.canonical_shape[:3]}"
                )
        self.parts = parts
        self.path = None
        self.name = name
        self.axes = CANONICAL_AXES
        self._canonical = (*first.canonical_shape[:3], len(parts))
        self.shape = self._canonical
        self.dtype = np.result_type(*[p.dtype for p in parts])
        self.axes_origin = first.axes_origin
        self.lazy = all(p.lazy for p in parts)
        self.channel_names = channel_names
        self.pixel_size = first.pixel_size
        self.series_index, self.level = first.series_index, first.level
        self.n_series, self.n_levels = first.n_series, first.n_levels

    def read(
        self,
        frames: Any = None,
        channels: Any = None,
        region: Any = None,
        *,
        check_finite: bool = True,
    ) -> np.ndarray:
        n, height, width, n_ch = self._canonical
        idx = _frame_list(frames, n, self.name)
        chans = _channel_list(channels, n_ch, self.channel_names, self.name)
        ys, xs = _region(region, height, width, self.name)
        if not chans:
            return np.empty((len(idx), ys.stop - ys.start, xs.stop - xs.start, 0), np.float32)
        # Each part checks its own pixels, so a NaN message names the file that holds it.
        return np.concatenate(
            [self.parts[c].read(idx, None, region, check_finite=check_finite) for c in chans],
            axis=-1,
        )

    def close(self) -> None:
        for p in self.parts:
            p.close()


# --------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------


def open_image(
    path_or_array: Any,
    axes: str | None = None,
    *,
    level: int = 0,
    key: str | Sequence[str] | None = None,
    series: int | None = None,
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
    if isinstance(path_or_array, (str, os.PathLike)):
        path = Path(path_or_array).expanduser()
        return _open_path(path, axes, int(level), key, None if series is None else int(series))
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


def _resolve_axes(
    given: str | None, meta: str | None, shape: tuple, path: str | os.PathLike | None
) -> tuple[str, str]:
    """Pick the axes (given > metadata > guess) and say where they came from."""
    if given is not None:
        given = parse_axes(given, len(shape), path, shape=tuple(shape))
        if meta is not None and meta != given:
            logger.info(
                "%s: using the given axes %s instead of %s from metadata", path, given, meta
            )
        return given, "given"
    if meta is not None and len(meta) == len(shape):
        return meta, "metadata"
    guess = _guess_axes(tuple(shape), path)
    logger.info("%s: no axes metadata; assuming %s for shape %s", _name(path), guess, tuple(shape))
    return guess, "guessed"


def _open_path(
    path: Path, axes: str | None, level: int, key: Any, series: int | None = None
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
        return _open_tiff(path, axes, level, series)
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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


# ---- TIFF -----------------------------------------------------------------------------------


_THUMBNAIL_NAMES = {"thumbnail", "macro", "label", "overview", "preview"}


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


def _open_tiff(path: Path, axes: str | None, level: int, series: int | None = None) -> ImageSource:
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
            meta_axes = _axes_from_tifffile(s.axes)
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
    found, origin = _resolve_axes(axes, meta_axes, shape, path)
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


# ---- Zarr -----------------------------------------------------------------------------------


def _open_zarr(path: Path, axes: str | None, level: int, key: Any) -> ImageSource:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds on damaged stores
        raise InputError(f"{path} is not a readable Zarr store ({_one_line(exc)})") from None
    return _zarr_node_source(node, path, str(path), axes, level, key)


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _ome_attrs(attrs: dict) -> dict:
    """The OME-NGFF attributes: under "ome" in 0.5 (Zarr v3), at the top in 0.4 (Zarr v2)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _zarr_node_source(
    node: Any, path: Path | None, name: str, axes: str | None, level: int, key: Any
) -> ImageSource:
    if key is not None:
        if not isinstance(node, zarr.Group):
            raise InputError(f"key={key!r} was given but {name} is a single array")
        keys = [key] if isinstance(key, str) else list(key)
        members = sorted(node.array_keys(), key=_natural_key) + sorted(node.group_keys())
        for k in keys:
            if not isinstance(k, str) or k not in node:
                raise InputError(
                    f"{name} has no array or group {k!r} (it has: {', '.join(members) or 'none'})"
                )
        if isinstance(key, str):
            return _zarr_node_source(node[key], path, f"{name}/{key}", axes, level, None)
        parts = [_zarr_node_source(node[k], path, f"{name}/{k}", axes, level, None) for k in keys]
        return _ChannelStack(parts, name, [str(k) for k in keys])

    if isinstance(node, zarr.Array):
        if level:
            raise InputError(f"level {level} does not exist in {name} (a plain array has 1 level)")
        attrs = dict(node.attrs)
        meta = _axes_from_names(getattr(node.metadata, "dimension_names", None)) or (
            _axes_from_names(attrs.get("_ARRAY_DIMENSIONS"))
        )
        found, origin = _resolve_axes(axes, meta, node.shape, name)
        names = attrs.get("channel_names") if origin == "metadata" else None
        size = attrs.get("pixel_size_um")
        pixel = tuple(float(v) for v in size) if isinstance(size, list) and len(size) == 2 else None
        return ImageSource(
            node,
            found,
            path=path,
            name=name,
            axes_origin=origin,
            channel_names=names,
            pixel_size=pixel,
            lazy=True,
        )

    attrs = dict(node.attrs)
    ome = _ome_attrs(attrs)
    multiscales = ome.get("multiscales")
    if isinstance(multiscales, list) and multiscales:
        return _ome_zarr_source(node, multiscales[0], ome, path, name, axes, level)
    arrays = sorted(node.array_keys(), key=_natural_key)
    if not arrays:
        groups = sorted(node.group_keys())
        more = f"; it has groups {', '.join(groups)}: pass key= to choose one" if groups else ""
        raise InputError(f"{name} contains no arrays{more}")
    if level:
        raise InputError(f"level {level} does not exist in {name} (it has no pyramid)")
    if len(arrays) == 1:
        return _zarr_node_source(node[arrays[0]], path, f"{name}/{arrays[0]}", axes, 0, None)
    parts = [_zarr_node_source(node[k], path, f"{name}/{k}", axes, 0, None) for k in arrays]
    return _ChannelStack(parts, name, arrays)


def _ome_zarr_source(
    group: Any, ms: dict, ome: dict, path: Path | None, name: str, axes: str | None, level: int
) -> ImageSource:
    datasets = ms.get("datasets") or []
    if level >= len(datasets):
        n = len(datasets)
        raise InputError(
            f"level {level} does not exist in {name} (it has {n} level{'s' if n != 1 else ''}: "
            f"0..{n - 1})"
        )
    ds = datasets[level]
    try:
        arr = group[ds["path"]]
    except (KeyError, TypeError):
        raise InputError(f"{name}: multiscales level {level} names a missing array") from None
    if not isinstance(arr, zarr.Array):
        raise InputError(f"{name}: multiscales level {level} is not an array")
    meta_axes = _axes_from_names(ms.get("axes"))
    if meta_axes is None and "axes" in ms:
        logger.warning("%s: cannot interpret OME-Zarr axes %s", name, ms.get("axes"))
    found, origin = _resolve_axes(axes, meta_axes, arr.shape, name)
    names = None
    omero = ome.get("omero") or {}
    if origin == "metadata" and isinstance(omero, dict):
        labels = [c.get("label") for c in omero.get("channels", []) if isinstance(c, dict)]
        names = [str(x) for x in labels] if labels and all(labels) else None
    pixel = None
    if origin == "metadata":
        for t in ds.get("coordinateTransformations", []):
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(found):
                units = [a.get("unit") if isinstance(a, dict) else None for a in ms["axes"]]
                iy, ix = found.index("Y"), found.index("X")
                fy = _TO_MICROMETRE.get(units[iy] or "micrometer")
                fx = _TO_MICROMETRE.get(units[ix] or "micrometer")
                if fy and fx:
                    pixel = (float(t["scale"][iy]) * fy, float(t["scale"][ix]) * fx)
    return ImageSource(
        arr,
        found,
        path=path,
        name=f"{name} (level {level})" if level else name,
        axes_origin=origin,
        channel_names=names,
        pixel_size=pixel,
        lazy=True,
        level=level,
        n_levels=len(datasets),
    )


# ---- convenience loaders --------------------------------------------------------------------


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
        N, H and W (e.g. Hagen et al.'s actin and mitochondria stacks, spec/usplit.md 7.2).
    axes : str, optional
        Axes of every file (when they lack metadata).
    **kw
        Passed to :func:`open_image` for every file (``level``, ``series``, ``key``).

    Returns
    -------
    ImageSource
        Channel names are the file names without extension.
    """
    if isinstance(paths, (str, os.PathLike)) or not paths:
        raise InputError("one file per channel needs a list of at least one file")
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


def load_pavia_atn(
    path: str | os.PathLike, channels: Sequence[int | str] | None = (2, 3), axes: str | None = None
) -> np.ndarray:
    """Read the PaviaATN file (spec/usplit.md 7.1) as float32 ``(N, H, W, len(channels))``.

    Parameters
    ----------
    path : path-like
        ``OptiMEM100x014.tif``: one TIFF, ``(N, 2720, 2720, 4)`` with channels last; N (61 in
        the released file) is read from the file.
    channels : sequence of int or str, optional
        Channel indices or names from :data:`PAVIA_ATN_CHANNELS` (0 nucleus, 1 cell-cycle
        marker, 2 actin, 3 tubulin); the default ``(2, 3)`` is Act vs Tub. None reads all four.
    axes : str, optional
        Override for files whose metadata disagree with the channels-last layout.

    Notes
    -----
    All 61 frames of two channels take 3.6 GB as float32; :func:`open_image` reads lazily.
    """
    source = open_image(path, axes)
    try:
        if source.n_channels != 4:
            raise InputError(
                f"{path} does not look like the PaviaATN file: expected 4 channels, found shape "
                f"{source.shape} with axes {source.axes} ({source.n_channels} channel(s))"
            )
        if (source.height, source.width) != (2720, 2720):
            logger.warning(
                "%s: frames are %dx%d, not the 2720x2720 of PaviaATN",
                path,
                source.height,
                source.width,
            )
        chans = None
        if channels is not None:
            chans = [PAVIA_ATN_CHANNELS.get(c, c) if isinstance(c, str) else c for c in channels]
            unknown = [c for c in chans if isinstance(c, str)]
            if unknown:
                raise InputError(
                    f"channel {unknown[0]!r} does not exist in {path} (PaviaATN channels: "
                    f"{', '.join(PAVIA_ATN_CHANNELS)})"
                )
        return source.read(channels=chans)
    finally:
        source.close()


def _sample_plan(
    n: int, h: int, w: int, max_pixels: int, max_bands: int = 16
) -> tuple[list[int], list[slice]]:
    """Frames and row bands to read so that at most about ``max_pixels`` pixels per channel
    are read: all of it when it fits, else evenly spaced frames, else up to ``max_bands``
    evenly spaced bands of rows of evenly spaced frames."""
    if n * h * w <= max_pixels:
        return list(range(n)), [slice(0, h)]
    if h * w <= max_pixels:
        k = max(1, max_pixels // (h * w))
        return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)}), [slice(0, h)]
    frames = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, 8))})
    rows = max(1, max_pixels // (len(frames) * w))  # rows per frame
    bands = max(1, min(max_bands, rows))
    band = max(1, rows // bands)
    if bands == 1:
        return frames, [slice((h - band) // 2, (h - band) // 2 + band)]  # the central rows
    starts = sorted({int(round(v)) for v in np.linspace(0, h - band, bands)})
    return frames, [slice(y, y + band) for y in starts]


def channel_statistics(source: Any, max_pixels: int = 16 * 2**20) -> list[dict]:
    """Per-channel intensity statistics of an image, from a bounded sample.

    Parameters
    ----------
    source : ImageSource, path-like or array
        The image (anything :func:`open_image` takes).
    max_pixels : int
        At most about this many pixels per channel are read (whole frames evenly spaced over
        the image; for frames larger than this, evenly spaced bands of rows, or one central
        band of a compressed TIFF, whose pages are decoded whole). Everything is read when the
        image is no larger.

    Returns
    -------
    list of dict
        One per channel: ``channel`` (index), ``name`` (channel name, else the index as text),
        ``min``, ``median``, ``p99_9`` (99.9th percentile), ``max`` (of the finite values),
        ``saturation`` (the value counted as saturated, or None), ``saturated`` (fraction of
        the pixels read equal to it), ``zeros`` (fraction equal to 0), ``non_finite`` (fraction
        NaN or Inf), ``pixels`` (pixels read per channel), ``frames`` (frames read),
        ``sampled`` (True when not every pixel was read).

    Notes
    -----
    Saturation: for integer pixel types the type's maximum (255, 65535, ...). A float image has
    no such value, so its channel maximum counts as saturated only when more than 0.1 % of the
    pixels read equal it (a clipped plateau); otherwise ``saturation`` is None and
    ``saturated`` 0. Pixels are read lazily through :meth:`ImageSource.read`, a frame at a time.
    """
    src = open_image(source)
    n, h, w, c = src.canonical_shape
    max_pixels = max(1, int(max_pixels))
    # A page read page by page (compressed TIFF) is decoded whole for any band of its rows:
    # then one central band per frame, not many.
    parts = getattr(src, "parts", [src])
    paged = any(isinstance(getattr(p, "_data", None), (_TiffPages, _WholeTiff)) for p in parts)
    frames, bands = _sample_plan(n, h, w, max_pixels, 1 if paged else 16)
    per_frame = sum(b.stop - b.start for b in bands) * w
    values = np.empty((c, len(frames) * per_frame), dtype=np.float32)
    pos = 0
    for f in frames:
        for band in bands:
            block = src.read([f], None, (band, slice(0, w)), check_finite=False)[0]
            k = block.shape[0] * block.shape[1]
            values[:, pos : pos + k] = block.reshape(k, c).T
            pos += k
    sampled = len(frames) < n or per_frame < h * w
    top = float(np.iinfo(src.dtype).max) if src.dtype.kind in "iu" else None
    out = []
    for ch in range(c):
        v = values[ch, :pos]
        finite = np.isfinite(v)
        n_bad = v.size - int(np.count_nonzero(finite))
        if n_bad:
            v = v[finite]
        entry: dict[str, Any] = {
            "channel": ch,
            "name": src.channel_names[ch] if src.channel_names else str(ch),
            "pixels": int(pos),
            "frames": len(frames),
            "sampled": bool(sampled),
            "non_finite": n_bad / pos if pos else 0.0,
        }
        if v.size == 0:
            nan = float("nan")
            entry.update(min=nan, median=nan, p99_9=nan, max=nan, saturation=None,
                         saturated=0.0, zeros=0.0)  # fmt: skip
            out.append(entry)
            continue
        lo, hi = float(v.min()), float(v.max())
        median, p999 = (float(x) for x in np.percentile(v, [50.0, 99.9]))
        if top is not None:
            sat_value: float | None = top
            sat = int(np.count_nonzero(v == np.float32(top))) / pos
        else:
            sat = int(np.count_nonzero(v == np.float32(hi))) / pos
            sat_value = hi if sat > 0.001 else None
            sat = sat if sat > 0.001 else 0.0
        entry.update(
            min=lo,
            median=median,
            p99_9=p999,
            max=hi,
            saturation=sat_value,
            saturated=sat,
            zeros=int(np.count_nonzero(v == 0)) / pos,
        )
        out.append(entry)
    return out


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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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


def _check_output(
    path: str | os.PathLike, overwrite: bool, protect: Iterable[str | os.PathLike], kind: str
) -> Path:
    """Validate an output path; refuse existing outputs (unless overwrite) and inputs."""
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
            if not any((out / m).exists() for m in _ZARR_MARKERS):
                raise InputError(
                    f"{out} is an existing directory that is not a Zarr store; "
                    "refusing to replace it"
                )
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"cannot write {out}: {out.parent} is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _temp_path(out: Path, tag: str) -> Path:
    # Hidden, in the same directory: the final rename stays on one file system (atomic).
    return out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is replaced only after the new one is
    complete (a directory is moved aside first, then deleted)."""
    if (out.exists() or out.is_symlink()) and (
        tmp.is_dir() or (out.is_dir() and not out.is_symlink())
    ):
        old = _temp_path(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)


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
    """
    if not str(path).lower().endswith(TIFF_SUFFIXES):
        raise InputError(f"{path}: a TIFF output needs a .tif or .tiff extension")
    data = _canonical_array(array, axes)
    n, h, w, c = data.shape
    names = _check_names(channel_names, c, path)
    pixel = _check_pixel_size(pixel_size)
    out = _check_output(path, overwrite, protect, "tiff")
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
    tmp = _temp_path(out, "partial")
    try:
        tifffile.imwrite(tmp, planes(), **kwargs)
        _move_into_place(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info(
        "wrote %s (%s, N=%d, %dx%d, C=%d)", out, "ImageJ" if imagej else "OME-TIFF", n, h, w, c
    )
    return out


class ZarrWriter:
    """Stream an image larger than memory into a Zarr v3 store, block by block, atomically.

    Data go to a hidden temporary directory next to ``path``; :meth:`close` renames it into
    place, :meth:`abort` (or an exception inside ``with``) deletes it.

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
        out = _check_output(path, overwrite, protect, "zarr")
        if chunks is None:
            chunks = (1, min(h, 512), min(w, 512), 1 if ome else c)
        chunks = tuple(max(1, min(int(k), s)) for k, s in zip(chunks, canonical, strict=True))
        tmp = _temp_path(out, "partial")
        try:
            if ome:
                group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
                scale = [1.0, 1.0, *(pixel if pixel else (1.0, 1.0))]
                space = {"type": "space", **({"unit": "micrometer"} if pixel else {})}
                group.attrs["ome"] = {
                    "version": "0.5",
                    "multiscales": [
                        {
                            "name": out.stem,
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
            else:
                group = None
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
        if self.ome:
            self._array[fs, cs, ys, xs] = data.transpose(0, 3, 1, 2)
        else:
            self._array[fs, ys, xs, cs] = data

    def close(self) -> Path:
        """Finish the metadata and move the store into place; returns its path."""
        if not self._open:
            return self.path
        if self.ome:
            ome = dict(self._group.attrs["ome"])
            channels = []
            for i in range(self.canonical_shape[3]):
                lo = float(self._lo[i]) if np.isfinite(self._lo[i]) else 0.0
                hi = float(self._hi[i]) if np.isfinite(self._hi[i]) else 1.0
                label = self.channel_names[i] if self.channel_names else f"channel {i}"
                channels.append(
                    {
                        "label": label,
                        "active": True,
                        "color": _COLOURS[i % 6],
                        "window": {"min": lo, "max": hi, "start": lo, "end": hi},
                    }
                )
            ome["omero"] = {"channels": channels, "rdefs": {"model": "color"}}
            self._group.attrs["ome"] = ome
        self._open = False
        try:
            if self.path.exists() and not self._overwrite:
                raise InputError(
                    f"{self.path} appeared while writing; the output is left in {self._tmp}"
                )
            _move_into_place(self._tmp, self.path)
        except InputError:
            raise
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


_COLOURS = ("FF00FF", "00FF00", "00FFFF", "FFFF00", "FF0000", "0000FF")


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
