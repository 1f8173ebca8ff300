"""What the Split and Train widgets share: their run/cancel row, progress bar and status line,
and how a worker's failure becomes the one line the user sees (docs/napari.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton

from musplit.errors import MusplitError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failed:
    """What a worker returns for a user mistake: the one line to show. (A returned exception
    would be raised by napari's worker, and an exception raised becomes a traceback.)"""

    message: str


def failure_message(exc: Exception, what: str) -> str:
    """The one line for a failure: a user mistake's own message, or for a bug its type and
    message (the traceback goes to the log)."""
    if isinstance(exc, MusplitError):
        return str(exc)
    log.error("%s failed", what, exc_info=exc)
    return f"{what} failed: {type(exc).__name__}: {exc}"


def run_controls(run_label: str, cancel_label: str, on_run, on_cancel):
    """(run button, cancel button, their row, progress bar, status label); Cancel starts
    disabled."""
    run = QPushButton(run_label)
    run.clicked.connect(on_run)
    cancel = QPushButton(cancel_label)
    cancel.setEnabled(False)
    cancel.clicked.connect(on_cancel)
    row = QHBoxLayout()
    row.addWidget(run)
    row.addWidget(cancel)
    status = QLabel("")
    status.setWordWrap(True)
    return run, cancel, row, QProgressBar(), status
