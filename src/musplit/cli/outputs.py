"""What the commands write and print besides their main result: output-path checks, small
text/JSON files written atomically, and metric tables.

This is the one place the command line reaches private names of other modules:
``musplit.predict._file_kind``, ``musplit.predict._sibling`` and
``musplit.data.io._check_output`` (and the public ``musplit.predict.refuse_existing``). They
are imported when first called, because ``musplit.predict`` loads torch and
``musplit.data.io`` loads tifffile and zarr, which ``musplit --help`` should not wait for.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from musplit.evaluation import write_metrics
from musplit.files import atomic_write


# -- output paths (private names of musplit.predict and musplit.data.io) --------------------
def file_kind(path) -> str:
    """``"tiff"`` or ``"zarr"`` from an output path's suffix (``musplit.predict._file_kind``)."""
    from musplit.predict import _file_kind

    return _file_kind(path)


def sibling(path, tag: str) -> Path:
    """``path`` with ``tag`` added to its stem, e.g. the ``_std`` file next to an output
    (``musplit.predict._sibling``)."""
    from musplit.predict import _sibling

    return _sibling(path, tag)


def refuse_existing(paths, overwrite: bool) -> None:
    """Refuse outputs that exist unless ``overwrite`` (``musplit.predict.refuse_existing``)."""
    from musplit.predict import refuse_existing as refuse

    refuse(paths, overwrite)


def check_output(path, overwrite: bool, protect, kind: str) -> Path:
    """Validate an output path before any work: refuse an existing output (unless
    ``overwrite``) and any of the inputs ``protect`` (``musplit.data.io._check_output``)."""
    from musplit.data.io import _check_output

    return _check_output(path, overwrite, protect, kind)


# -- small files -----------------------------------------------------------------------------
def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary name in the same folder, then rename over ``path``
    (:func:`musplit.files.atomic_write`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: Path, data) -> Path:
    """:func:`write_text` of ``data`` as indented JSON (numpy scalars and arrays included)."""
    return write_text(path, json.dumps(data, indent=1, default=_jsonable))


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# -- metrics ---------------------------------------------------------------------------------
def echo_metrics(res: dict, out_path: Path | None) -> None:
    """Print the metric table of :func:`musplit.evaluation.evaluate_arrays`'s result ``res``;
    with ``out_path`` also write it as .json (and .csv) and say so."""
    click.echo(res["table"])
    if out_path is not None:
        for p in write_metrics(res, out_path):
            click.echo(f"wrote {p}")


__all__ = ["check_output", "echo_metrics", "file_kind", "refuse_existing", "sibling",
           "write_json", "write_text"]
