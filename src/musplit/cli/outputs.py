"""What the commands write and print besides their main result: output-path checks, small
text/JSON files written atomically, and metric tables.

Output locations are checked before any work (:func:`check_outputs`,
:func:`check_prediction_space`, :func:`prepare_run_dir`): an existing output, an unwritable
folder, a file used as a folder or a disk too full is one line, exit status 2, before a model
is loaded or a step is trained.

This is the one place the command line reaches private names of other modules:
``musplit.predict._file_kind``, ``musplit.predict._sibling`` and
``musplit.data.io._check_output`` (and the public ``musplit.predict.refuse_existing``). They
are imported when first called, because ``musplit.predict`` loads torch and
``musplit.data.io`` loads tifffile and zarr, which ``musplit --help`` should not wait for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np

from musplit import runtime
from musplit.errors import InputError
from musplit.evaluation import write_metrics
from musplit.files import atomic_write, check_free_space, check_writable, output_errors


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


def check_outputs(paths, overwrite: bool, protect, kind: str) -> None:
    """:func:`check_output` of each of ``paths`` (a result and its siblings), before any work;
    an existing one is refused (unless ``overwrite``) before anything else is looked at."""
    refuse_existing(paths, overwrite)
    for p in paths:
        check_output(p, True, protect, kind)


def check_prediction_space(out_path, src, splitter, samples: int | None, with_std: bool
                           ) -> None:
    """Refuse a prediction of the image ``src`` whose files clearly cannot fit on the disk of
    ``out_path``, and warn when the space is tight (:func:`musplit.files.check_free_space`):
    float32 ``frames x H x W x channels`` for the mean, as much again for the std when it is
    written (``with_std`` and more than one sample)."""
    c = splitter.stats.n_channels if splitter.stats is not None else 2
    std = with_std and (samples or splitter.config.predict.samples) > 1
    need = runtime.prediction_file_bytes(src.n_frames, src.height, src.width, n_channels=c,
                                         n_files=2 if std else 1)
    check_free_space(out_path, need, "the prediction and its std" if std else "the prediction")


#: What ``musplit train`` writes into its run folder (replaced with ``--overwrite``), and
#: those of them that hold what a run learnt.
RUN_FILES = ("best.ckpt", "last.ckpt", "resume.ckpt", "config.yaml", "split.json",
             "init_report.json", "logs")
_TRAINED = ("best.ckpt", "last.ckpt", "resume.ckpt", "logs/metrics.csv")


def prepare_run_dir(run_dir, *, overwrite: bool, resume: bool) -> Path:
    """Check ``musplit train``'s run folder before any work, and clear it for --overwrite.

    It must be a folder (or not exist yet) that takes new files. Unless ``resume``, a folder
    that holds a trained run (checkpoints or a training log) or files of its own (anything
    not hidden that a run does not write) is refused; a run that stopped before its first
    step left only its config and split, which the new run rewrites. With ``overwrite`` the
    previous run's files (:data:`RUN_FILES`) are deleted instead, so that no stale
    checkpoint or log line of it survives into the new run; other files are left alone.
    """
    run_dir = Path(run_dir).expanduser()
    if resume and overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: "
                         "give one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir} is a file, not a run folder")
    check_writable(run_dir, folder=True)
    if resume or not run_dir.is_dir():
        return run_dir
    held = [n for n in _TRAINED if (run_dir / n).exists()]
    held += sorted(p.name for p in run_dir.iterdir()
                   if p.name not in RUN_FILES and not p.name.startswith("."))
    if not held:
        return run_dir
    if not overwrite:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise InputError(f"--out {run_dir} already holds {shown}: choose another --out, "
                         "--resume to continue an interrupted run, or --overwrite to replace "
                         "the run there")
    for name in RUN_FILES:
        p = run_dir / name
        with output_errors(p):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    return run_dir


# -- small files -----------------------------------------------------------------------------
def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary name in the same folder, then rename over ``path``; a
    failure (a full disk) is one line naming ``path``."""
    with output_errors(path):
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


__all__ = ["RUN_FILES", "check_output", "check_outputs", "check_prediction_space",
           "echo_metrics", "file_kind", "prepare_run_dir", "refuse_existing", "sibling",
           "write_json", "write_text"]
