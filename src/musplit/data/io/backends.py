"""Lazy array back ends of :class:`~musplit.data.io.ImageSource`.

Objects with ``.shape``, ``.dtype`` and basic indexing by a full tuple of ints and slices,
returning numpy arrays: a memory map (``.npy``, contiguous TIFF), a TIFF read page by page, a
TIFF read whole on first use, and a ``.npz`` member. They pickle without their data, so an
ImageSource can be sent to DataLoader worker processes.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from musplit.data.io.failures import _tifffile_errors
from musplit.errors import InputError

logger = logging.getLogger(__name__)

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
