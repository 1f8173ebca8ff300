"""Checks before a run is resumed (docs/design.md, "Resuming a run").

``train(..., resume=True)`` reads ``resume.ckpt`` first, before anything in the run folder is
written: a file that is not a musplit trainer state (a crafted pickle, a truncated copy) is
refused in one line; a config that changes a setting the run was built with is refused by name
(:func:`musplit.config.resume.resumed_config`); and a run that has already reached its
``max_steps`` (or ``max_epochs``) says so and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from musplit.checkpoints.format import torch_load_safely
from musplit.config import Config
from musplit.config.resume import resumed_config
from musplit.errors import CheckpointError, ConfigError

__all__ = ["LOG_ROWS_KEY", "check_resume", "logged_rows", "nothing_left", "open_resume"]

#: Key of the trainer state that records how many rows ``logs/metrics.csv`` held when it was
#: written (see :func:`musplit.training_logs.set_aside_rows_after`).
LOG_ROWS_KEY = "musplit_metrics_rows"


def open_resume(path: str | Path) -> dict:
    """The trainer state in ``path`` (weights-only loading), checked to be one musplit wrote.

    Raises
    ------
    CheckpointError
        Unreadable, unsafe or not a musplit trainer state; one line naming the file.
    """
    state = torch_load_safely(path, what="resume checkpoint")
    if not (isinstance(state, dict) and isinstance(state.get("musplit"), dict)
            and "global_step" in state and "state_dict" in state):
        raise CheckpointError(
            f"resume checkpoint {path} is not a valid musplit resume checkpoint (no trainer "
            "state written by musplit train); it was not used")
    return state


def check_resume(state: dict, config: Config, where: str | Path) -> None:
    """Refuse ``config`` where it changes a setting the resumed run was built with.

    Raises
    ------
    ConfigError
        One line naming each such setting with both values.
    """
    stored = state["musplit"].get("config")
    if not stored:
        return
    try:
        run_config = Config.validated(stored, source=f"config in {where}")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    resumed_config(run_config, config.model_dump(mode="json"), where=str(where))


def nothing_left(state: dict, config: Config, run_dir: str | Path) -> str | None:
    """The line to show when the run in ``state`` is already as long as ``config`` asks
    (nothing to train), else None."""
    tc = config.train
    step, epoch = int(state.get("global_step", 0)), int(state.get("epoch", 0))
    if tc.max_steps is not None and step >= tc.max_steps:
        limit, flag = f"max_steps is {tc.max_steps}", "--max-steps"
    elif tc.max_epochs is not None and epoch >= tc.max_epochs:
        limit, flag = f"max_epochs is {tc.max_epochs}", "--max-epochs"
    else:
        return None
    return (f"nothing to train: the run in {run_dir} is already at step {step} (epoch {epoch}) "
            f"and {limit}; give a larger {flag} to train longer (nothing was changed)")


def logged_rows(state: dict) -> int | None:
    """The rows ``logs/metrics.csv`` held when ``state`` was written (None: not recorded)."""
    rows = state.get(LOG_ROWS_KEY)
    return int(rows) if isinstance(rows, int) else None
