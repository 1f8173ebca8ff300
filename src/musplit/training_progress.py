"""Training progress: one line of progress over the whole run, in steps, with an ETA
(docs/checkpoints.md, "Run folder").

Lightning's own bar counts batches of one epoch ("12/80", a new bar each epoch, "101/?" after a
resume) and draws validation bars with cursor-movement codes that end up in a log file as
``\\x1b[A``. :class:`StepProgress` counts optimiser steps against the run's total
(``max_steps``, or what ``max_epochs`` gives), from the step a resumed run starts at:

- on a terminal, one tqdm bar ``step 120/250`` with the rate and the time left, the last
  loss and ``val_psnr`` beside it; validation shows no bar of its own;
- anywhere else (stderr redirected to a file, a pipe, a notebook log), plain lines every 5 %
  of the run or every minute, whichever comes first, and one line per validation: no carriage
  return, no escape code.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar

__all__ = ["StepProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; ``"?"`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class StepProgress(ProgressBar):
    """Progress of a training run in optimiser steps over the whole run (see the module
    docstring).

    Parameters
    ----------
    stream : file-like, optional
        Where to write (default: ``sys.stderr`` at the time of writing). A bar is drawn only
        when it is a terminal (``isatty()``).
    every_fraction : float
        Plain-line mode: a line every this share of the run's steps ...
    every_seconds : float
        ... or after this many seconds, whichever comes first.
    """

    def __init__(self, stream: TextIO | None = None, every_fraction: float = 0.05,
                 every_seconds: float = 60.0):
        super().__init__()
        self._stream = stream
        self.every_fraction = every_fraction
        self.every_seconds = every_seconds
        self._enabled = True
        self._bar = None
        self.total: int | None = None
        self.start_step = 0
        self._t0 = 0.0
        self._last_step = 0
        self._last_time = 0.0

    # -- ProgressBar interface -------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        text = kwargs.get("sep", " ").join(str(a) for a in args)
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._line(text)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except (ValueError, OSError):  # a closed stream
            return False

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _metrics(self, trainer) -> str:
        m = trainer.progress_bar_metrics
        parts = []
        loss = _number(m.get("loss"))
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        psnr = _number(m.get("val_psnr"))
        if psnr is not None:
            parts.append(f"val_psnr {psnr:.2f} dB")
        return ", ".join(parts)

    def _rate_eta(self, step: int) -> tuple[float, float]:
        done = step - self.start_step
        elapsed = time.monotonic() - self._t0
        rate = done / elapsed if done > 0 and elapsed > 0 else math.nan
        left = (self.total - step) / rate if self.total is not None and rate > 0 else math.nan
        return rate, left

    def _status(self, trainer, step: int) -> str:
        rate, left = self._rate_eta(step)
        pct = f" ({100 * step / self.total:.0f}%)" if self.total else ""
        speed = f"{rate:.2f} steps/s" if math.isfinite(rate) else "? steps/s"
        metrics = self._metrics(trainer)
        return (f"step {step}/{self.total if self.total else '?'}{pct}"
                f"{', ' + metrics if metrics else ''}, {speed}, ETA {format_duration(left)}")

    # -- hooks -----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        total = trainer.estimated_stepping_batches
        self.total = int(total) if math.isfinite(total) else None
        self.start_step = self._last_step = int(trainer.global_step)
        self._t0 = self._last_time = time.monotonic()
        if self.is_terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.start_step, desc="training",
                             unit="step", file=self.stream, dynamic_ncols=True, leave=True,
                             bar_format="{desc}: step {n_fmt}/{total_fmt} {percentage:3.0f}%|"
                                        "{bar}| [{elapsed}<{remaining}, {rate_fmt}]{postfix}")
        else:
            where = f", resuming at step {self.start_step}" if self.start_step else ""
            self._line(f"training: {self.total if self.total else '?'} steps{where}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled:
            return
        step = int(trainer.global_step)
        if self._bar is not None:
            if step > self._bar.n:
                self._bar.update(step - self._bar.n)
            metrics = self._metrics(trainer)
            if metrics:
                self._bar.set_postfix_str(metrics, refresh=False)
            return
        if self.total is None or step == self._last_step:
            return
        every = max(1, math.ceil(self.total * self.every_fraction))
        now = time.monotonic()
        if (step - self._last_step >= every or now - self._last_time >= self.every_seconds
                or step >= self.total):
            self._line(self._status(trainer, step))
            self._last_step, self._last_time = step, now

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        psnr = _number(trainer.callback_metrics.get("val_psnr"))
        text = f"val_psnr {psnr:.2f} dB" if psnr is not None else "no val_psnr"
        if self._bar is not None:
            self._bar.set_postfix_str(self._metrics(trainer), refresh=True)
        else:
            self._line(f"validation at step {trainer.global_step}: {text}")

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        step = int(trainer.global_step)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elapsed = time.monotonic() - self._t0
        self._line(f"training: {step - self.start_step} steps in {format_duration(elapsed)}, "
                   f"at step {step} of {self.total if self.total else '?'}")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
