"""The calibrated std of a prediction: ``max(a_k * std + b_k, 0)`` per channel (docs/microsplit.md,
"Calibration in musplit").

A calibration (fitted by :mod:`musplit.calibration`, stored in a checkpoint's
``extra["calibration"]``) holds one scale ``a_k`` and one offset ``b_k`` per channel, the offset
in normalised target units. Prediction applies it to the posterior-sample std it returns, in the
units it returns: in intensity units the offset is ``b_k * s_k`` (``s_k`` the training target
std), times the brightness rescaling when the image was rescaled to the training brightness.
This module holds only that arithmetic and the check of the stored numbers; the fit lives
above the prediction layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from musplit.data.normalize import NormStats
from musplit.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["StdCalibration", "affine_std", "check_calibration", "std_calibration", "std_offsets",
           "warn_samples"]


def check_calibration(calibration, n_channels: int, where: str = "the checkpoint"
                      ) -> tuple[list[float], list[float]]:
    """The per-channel ``(a, b)`` of a stored calibration, checked.

    Parameters
    ----------
    calibration : mapping
        ``Calibration.to_dict()``: at least ``a``, ``b`` (one finite number per channel) and
        ``units == "normalised"``.
    n_channels : int
        Channels the model predicts.
    where : str
        Names the file in the error message.

    Raises
    ------
    CheckpointError
        Anything else: a damaged or foreign calibration is refused, not applied.
    """
    if not isinstance(calibration, Mapping):
        raise CheckpointError(f"{where}: its calibration is not a table of numbers")
    a, b = calibration.get("a"), calibration.get("b")
    ok = all(isinstance(v, (list, tuple)) and len(v) == n_channels
             and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
             for v in (a, b))
    if not ok:
        raise CheckpointError(
            f"{where}: its calibration does not hold one finite scale a and offset b for each "
            f"of the model's {n_channels} channels; calibrate it again (musplit calibrate)")
    if calibration.get("units", "normalised") != "normalised":
        raise CheckpointError(f"{where}: its calibration is in {calibration.get('units')!r} "
                              "units; musplit stores it in normalised target units")
    return [float(x) for x in a], [float(x) for x in b]


def std_offsets(b, stats: NormStats, *, normalized: bool, out_scale: float = 1.0
                ) -> np.ndarray:
    """The offsets ``b_k`` (normalised target units) in the units of a returned std:
    unchanged for ``normalized`` output, else ``b_k * s_k * out_scale``."""
    b = np.asarray(b, dtype=np.float64)
    if normalized:
        return b
    return b * np.asarray(stats.target_std, dtype=np.float64) * float(out_scale)


def affine_std(std: np.ndarray, a, offset, *, out: np.ndarray | None = None) -> np.ndarray:
    """``max(a_k * std + offset_k, 0)`` along the last axis (channels), float32.

    ``out=std`` computes it in place (the prediction's own array).
    """
    std = np.asarray(std)
    a = np.asarray(a, dtype=np.float32)
    offset = np.asarray(offset, dtype=np.float32)
    if out is None:
        out = np.empty(std.shape, dtype=np.float32)
    np.multiply(std, a, out=out, casting="unsafe")
    out += offset
    np.maximum(out, 0, out=out)
    return out


def warn_samples(calibration: Mapping, samples: int) -> None:
    """Warn when the std is computed from another number of samples than the calibration was
    fitted on: the sample std (``ddof = 0``) shrinks with fewer samples."""
    fitted = calibration.get("samples")
    if fitted and int(fitted) != int(samples):
        log.warning("the calibration was fitted on the std of %d samples, this prediction uses "
                    "%d: the calibrated std is exact only for %d (--samples %d)", fitted,
                    samples, fitted, fitted)


@dataclass
class StdCalibration:
    """What a prediction call applies to its std: the scales, the offsets in the output's
    units, and the record of both for the prediction's metadata."""

    a: np.ndarray
    offset: np.ndarray
    meta: dict

    def apply(self, std: np.ndarray) -> np.ndarray:
        """Calibrate ``std`` (``(..., C)``, the output's units) in place."""
        return affine_std(std, self.a, self.offset, out=std)


def std_calibration(calibration: Mapping | None, stats: NormStats, samples: int, *,
                    normalized: bool, out_scale: float = 1.0) -> StdCalibration | None:
    """The calibration a prediction call applies, or None (no calibration, or one sample:
    no std to calibrate).

    The metadata say ``std_calibrated``, the scales ``a``, the offsets ``b`` (normalised target
    units) and ``offset`` (the output's units), so that a saved std says what it is.
    """
    if calibration is None or samples < 2:
        return None
    a, b = check_calibration(calibration, stats.n_channels, "the calibration")
    warn_samples(calibration, samples)
    offset = std_offsets(b, stats, normalized=normalized, out_scale=out_scale)
    meta = {"a": a, "b": b, "offset": [float(v) for v in offset],
            "offset_units": "normalised" if normalized else "intensity",
            "fitted_samples": calibration.get("samples"),
            "ence_before": calibration.get("ence_before"),
            "ence_after": calibration.get("ence_after")}
    log.info("std calibrated per channel: a = %s, b = %s (normalised units)",
             ", ".join(f"{v:.4g}" for v in a), ", ".join(f"{v:.4g}" for v in b))
    return StdCalibration(np.asarray(a, dtype=np.float32), offset.astype(np.float32), meta)
