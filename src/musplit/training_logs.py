"""The training logs of a run folder: ``logs/metrics.csv``, kept whole across resumes
(docs/checkpoints.md, "Run folder"), and the optional TensorBoard log.

Lightning's own CSV logger deletes an existing ``metrics.csv`` when it starts, so a resumed
run used to lose every row logged before the interruption, and a resume that ended before
logging anything left no file at all. :class:`HistoryCSVLogger` only ever appends: it reads the
header of an existing file and adds rows under it; a new column rewrites the file with every
earlier row kept (temporary name, then rename). A run that logs nothing leaves the file as it
was, byte for byte.

A run killed between two checkpoints may have logged steps that the resumed run trains again.
Each ``resume.ckpt`` records how many rows the log held when it was written;
:func:`set_aside_rows_after` moves the rows beyond that into ``logs/metrics-interrupted-*.csv``
(kept, not deleted) before the resumed run appends its own, so that ``metrics.csv`` holds each
step once.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from musplit.errors import InputError
from musplit.files import atomic_write

__all__ = ["LOGGERS", "HistoryCSVLogger", "check_logger", "make_loggers", "set_aside_rows_after"]

#: ``--logger`` choices: the CSV log is always written; ``tensorboard`` adds a TensorBoard log.
LOGGERS = ("csv", "tensorboard")

METRICS = "metrics.csv"


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (both empty when it does not exist)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _csv_text(keys: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_csv(path: Path, keys: list[str], rows: list[dict[str, Any]]) -> None:
    """Write a whole CSV file (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(_csv_text(keys, rows), newline="")


class HistoryCSVLogger(Logger):
    """Log metrics to ``<run>/logs/metrics.csv``, appending to what an earlier (interrupted)
    part of the run logged; nothing is ever deleted.

    Rows are kept in memory and written every ``flush_every`` logged steps, at every
    :meth:`save` (before each ``resume.ckpt``) and at the end.
    """

    def __init__(self, run_dir: str | os.PathLike, flush_every: int = 100):
        super().__init__()
        self.log_dir_path = Path(run_dir) / "logs"
        self.path = self.log_dir_path / METRICS
        self.flush_every = max(1, int(flush_every))
        self._pending: list[dict[str, Any]] = []
        self._keys: list[str] | None = None  # the file's header, read on the first write
        self._rows: int | None = None  # rows in the file, counted on the first need

    # -- Lightning's Logger interface ---------------------------------------------------
    @property
    def name(self) -> str:
        return "logs"

    @property
    def version(self) -> str:
        return ""

    @property
    def root_dir(self) -> str:
        return str(self.log_dir_path)

    @property
    def log_dir(self) -> str:
        return str(self.log_dir_path)

    @property
    def save_dir(self) -> str:
        return str(self.log_dir_path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing to do: the run's settings are in ``config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self._pending)
        self._pending.append(row)
        if len(self._pending) >= self.flush_every:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write the rows logged since the last call (none: the file is not touched)."""
        if not self._pending:
            return
        if self._keys is None:
            self._keys, old = _read(self.path)
            self._rows = len(old)
        new_keys = sorted(set().union(*self._pending) - set(self._keys))
        if new_keys or not self.path.is_file():
            # A new column: the whole file again, every earlier row kept under the new header.
            keys = sorted({*self._keys, *new_keys})
            _, old = _read(self.path)
            _write_csv(self.path, keys, old + self._pending)
            self._keys = keys
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerows(self._pending)
        self._rows = (self._rows or 0) + len(self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    @property
    def rows_written(self) -> int:
        """Rows in ``metrics.csv`` now (written by this run or an earlier part of it)."""
        if self._rows is None:
            self._keys, old = _read(self.path)
            self._rows = len(old)
        return self._rows


def set_aside_rows_after(run_dir: str | os.PathLike, keep: int, step: int) -> Path | None:
    """Keep the first ``keep`` rows of ``<run>/logs/metrics.csv`` and move the rest (logged by
    an interrupted run after its last ``resume.ckpt``, at ``step``) into
    ``logs/metrics-interrupted-step<step>.csv``; return that file, or None when there was
    nothing to move. The moved rows are written before ``metrics.csv`` is shortened, each
    file under a temporary name first, so a crash loses nothing."""
    path = Path(run_dir) / "logs" / METRICS
    keys, rows = _read(path)
    if len(rows) <= keep:
        return None
    side = path.with_name(f"metrics-interrupted-step{step}.csv")
    n = 1
    while side.exists():
        n += 1
        side = path.with_name(f"metrics-interrupted-step{step}-{n}.csv")
    _write_csv(side, keys, rows[keep:])
    _write_csv(path, keys, rows[:keep])
    return side


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def check_logger(kind: str) -> None:
    """Refuse an unknown ``--logger`` or a TensorBoard log without the package, in one line."""
    if kind not in LOGGERS:
        raise InputError(f"unknown logger {kind!r}; choose one of: {', '.join(LOGGERS)}")
    if kind == "tensorboard" and not _tensorboard_available():
        raise InputError("--logger tensorboard needs the tensorboard package, which is not "
                         "installed: pip install tensorboard (or use the default --logger csv)")


def make_loggers(run_dir: str | os.PathLike, kind: str = "csv", *,
                 flush_every: int = 100) -> list[Logger]:
    """The loggers of a run: :class:`HistoryCSVLogger` always (first), and a TensorBoard log in
    ``<run>/logs/tensorboard`` for ``kind="tensorboard"``."""
    check_logger(kind)
    loggers: list[Logger] = [HistoryCSVLogger(run_dir, flush_every=flush_every)]
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(Path(run_dir), name="logs", version="tensorboard",
                                         default_hp_metric=False))
    return loggers
