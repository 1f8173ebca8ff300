"""Reading and writing microscopy images: TIFF, OME-TIFF, Zarr, OME-Zarr and NumPy.

Every reader returns an :class:`ImageSource`: a lazily read N-D image together with its axes
string (letters from ``STCZYX``, see :func:`parse_axes`). Whatever the order on disk, a source is
seen through one canonical view, ``(N, H, W, C)`` (axes ``"SYXC"``), and only the frames and
channels asked for are read (docs/data.md, "Files and axes"):

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

A TIFF without axes metadata has a layout instead: ``tifffile.imwrite`` stores a ``(3, H, W)``
or ``(4, H, W)`` array as separate sample planes (RGB), which are read as channels (``CYX``) by
default and as frames (``SYX``) with ``stack_of="frames"``, the reading ``musplit predict`` uses
for its superimposed input (and every file of :func:`open_channel_files`). Both are guesses
(:attr:`ImageSource.axes_origin` ``"guessed"``); a refusal that depends on them says which axes
were read and that ``--axes`` says otherwise (:attr:`ImageSource.axes_note`).

Writers (:func:`write_tiff`, :func:`write_zarr`, :class:`ZarrWriter`) store ``(N, H, W, C)``
data as OME-TIFF (or an ImageJ hyperstack) and OME-Zarr 0.5 with axes ``TCYX``, channel names and
pixel sizes, so Fiji and napari open them. They write to a hidden temporary name in the target
directory and rename it into place at the end, so a crash never leaves a half-written output;
they refuse an existing output unless ``overwrite=True`` and never write onto a protected input.

Every user mistake raises :class:`musplit.errors.InputError` with one line naming the file and
the problem.

The package is split by job: :mod:`.axes` (axes strings), :mod:`.source` (:class:`ImageSource`),
:mod:`.backends` (lazy arrays), :mod:`.failures` (read errors), :mod:`.tiff` and
:mod:`.zarr_read` (openers), :mod:`.readers` (:func:`open_image` and loaders), :mod:`.stats`
(:func:`channel_statistics`), :mod:`.pavia`, :mod:`.writers` (:func:`write_tiff`) and
:mod:`.zarr_writer` (:class:`ZarrWriter`, :func:`write_zarr`). Atomic writes and output checks
are :mod:`musplit.files`. Every name importable from ``musplit.data.io`` before the split still is.
"""

from __future__ import annotations

# Private names are re-exported where other modules import them from here (musplit.cli,
# musplit.predict); the "X as X" form marks a re-export.
from musplit.data.io.axes import AXES_LETTERS, CANONICAL_AXES, parse_axes
from musplit.data.io.pavia import PAVIA_ATN_CHANNELS, load_pavia_atn
from musplit.data.io.readers import (
    check_image_size,
    load_channel_files,
    load_image,
    open_channel_files,
    open_image,
)
from musplit.data.io.source import ImageSource
from musplit.data.io.stats import channel_statistics
from musplit.data.io.tiff import TIFF_SUFFIXES as TIFF_SUFFIXES
from musplit.data.io.writers import _canonical_array as _canonical_array
from musplit.data.io.writers import _check_pixel_size as _check_pixel_size
from musplit.data.io.writers import write_tiff
from musplit.data.io.zarr_read import _natural_key as _natural_key
from musplit.data.io.zarr_writer import ZarrWriter, write_zarr
from musplit.files import ZARR_MARKERS, check_output, move_into_place, temp_path

# The old private names of what moved to musplit.files.
_ZARR_MARKERS = ZARR_MARKERS
_check_output = check_output
_temp_path = temp_path
_move_into_place = move_into_place

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
