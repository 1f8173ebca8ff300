"""ImageSource: a lazily read N-D image with an axes string, seen as ``(N, H, W, C)`` frames.

Also the request checks (frames, channels, region) and :class:`_ChannelStack`, several
single-channel sources seen as one multi-channel source.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from musplit.data.io.axes import CANONICAL_AXES, _name, axes_note, parse_axes
from musplit.data.io.failures import _codec_error, _one_line, _tifffile_errors
from musplit.errors import InputError

logger = logging.getLogger(__name__)

# Reads are split into blocks of at most this many bytes (in the stored dtype) so that reading
# many frames never holds a second full-size copy next to the float32 output.
_BLOCK_BYTES = 256 * 2**20


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


def _channel_list(
    channels: Any, n: int, names: list[str] | None, name: str, note: str = ""
) -> list[int]:
    """Channel indices (ints, or names when the source has channel names), validated;
    ``note`` ends the out-of-range message (how the axes were found, when guessed)."""
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
                    f"(it has {n} channel{'s' if n != 1 else ''}: 0..{n - 1}){note}"
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


def _canonical_dim(axis: int, doc: str) -> property:
    """A read-only property: one element of ``self._canonical`` (``(N, H, W, C)``)."""
    return property(lambda self: self._canonical[axis], doc=doc)


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
    axes_from_layout : bool
        The "metadata" are a TIFF's page layout, not axes (a plain page stack: its pages are
        frames); :attr:`axes_guessed` is then True as for guessed axes.
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
        axes_from_layout: bool = False,
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
        self.axes_from_layout = bool(axes_from_layout)
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

    n_frames = _canonical_dim(0, "N: the number of canonical frames.")
    height = _canonical_dim(1, "H: the frame height.")
    width = _canonical_dim(2, "W: the frame width.")
    n_channels = _canonical_dim(3, "C: the number of channels.")

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
        idx, chans, ys, xs = self._request(frames, channels, region)
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

    def _request(
        self, frames: Any, channels: Any, region: Any
    ) -> tuple[np.ndarray, list[int], slice, slice]:
        """The checked arguments of :meth:`read`: frame indices, channel indices, rows, columns."""
        n, height, width, n_ch = self._canonical
        idx = _frame_list(frames, n, self.name)
        chans = _channel_list(channels, n_ch, self.channel_names, self.name, self._guess_note())
        ys, xs = _region(region, height, width, self.name)
        return idx, chans, ys, xs

    @property
    def axes_guessed(self) -> bool:
        """True when the file says nothing about its axes: they were guessed from the shape,
        or read from a TIFF's page layout."""
        return self.axes_origin == "guessed" or self.axes_from_layout

    @property
    def axes_note(self) -> str:
        """Where the axes came from, for messages: ``"read as axes 'CYX' (guessed: no axes in
        the file)"``, ``"axes 'TCYX' from the file's metadata"`` or ``"axes 'SYX' as given"``."""
        return axes_note(self.axes, "guessed" if self.axes_guessed else self.axes_origin)

    def _guess_note(self) -> str:
        """How a missing channel ends its message: ``"; read as axes 'SYX' (guessed: ...)"``
        when the guess found no channel axis (the file's planes may be channels), else ``""``.
        """
        if not self.axes_guessed or "C" in self.axes:
            return ""
        alt = self.axes.replace("S", "C", 1) if "S" in self.axes else None
        example = f" (e.g. --axes {alt})" if alt else ""
        return f"; {self.axes_note}: pass --axes{example} if the file holds channels"

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
                    f"{p.name} has {p.n_channels} channels ({p.axes_note}); one file (or "
                    "array) per channel needs single-channel images (--axes reads it otherwise)"
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
        self.axes_from_layout = first.axes_from_layout
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
        idx, chans, ys, xs = self._request(frames, channels, region)
        if not chans:
            return np.empty((len(idx), ys.stop - ys.start, xs.stop - xs.start, 0), np.float32)
        # Each part checks its own pixels, so a NaN message names the file that holds it.
        return np.concatenate(
            [self.parts[c].read(idx, None, region, check_finite=check_finite) for c in chans],
            axis=-1,
        )

    def _guess_note(self) -> str:
        return ""  # the channels are the files, whatever their axes

    def close(self) -> None:
        for p in self.parts:
            p.close()
