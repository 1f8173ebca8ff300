"""Checks around noise models: finite inputs, what a fit saw, and whether data lie in the range
a model was fitted on (docs/noise_models.md, "Checks").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from musplit.errors import InputError

__all__ = ["FitReport", "RangeReport", "check_finite", "check_range"]

log = logging.getLogger(__name__)


def check_finite(arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` as a float array; :class:`InputError` when it is empty or holds NaN/Inf."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu":
        raise InputError(f"{what} must hold real numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise InputError(f"{what} is empty")
    if a.dtype.kind == "f":
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise InputError(f"{what} has {bad} NaN or Inf value(s) out of {a.size}; a noise "
                             "model needs finite intensities")
    return a


@dataclass(frozen=True)
class FitReport:
    """What :func:`musplit.noise.fit_noise_model` used and found.

    ``n_pairs`` (observation, signal) pairs were available, ``n_used`` of them were kept after the
    percentile clip (``n_clipped`` dropped as outside it) and subsampling; ``empty_bins`` lists
    the indices of the ``n_bins`` equal-width signal bins over the fitted range that held no pair
    (the model interpolates there). ``nll`` is the final mean negative log-likelihood per pair,
    in the units of log(1/intensity).
    """

    n_pairs: int
    n_used: int
    n_clipped: int
    n_bins: int
    empty_bins: tuple[int, ...]
    signal_range: tuple[float, float]
    observation_range: tuple[float, float]
    iterations: int
    nll: float

    def summary(self) -> str:
        """One line: pairs, range, empty bins, final NLL."""
        empty = (f"{len(self.empty_bins)} of {self.n_bins} signal bins empty"
                 if self.empty_bins else f"no empty signal bin (of {self.n_bins})")
        return (f"{self.n_used:,} of {self.n_pairs:,} pixel pairs used ({self.n_clipped:,} "
                f"outside the percentile clip), signal range [{self.signal_range[0]:.6g}, "
                f"{self.signal_range[1]:.6g}], {empty}, {self.iterations} iterations, final "
                f"NLL {self.nll:.4f}")


@dataclass(frozen=True)
class RangeReport:
    """Where data lie relative to a noise model's fitted range (:func:`check_range`)."""

    data_range: tuple[float, float]
    fitted_range: tuple[float, float]
    below: float
    above: float
    ok: bool
    message: str


def check_range(model, data, *, kind: str = "observation", max_outside: float = 0.01,
                min_span: float = 0.25, warn: bool = True) -> RangeReport:
    """Compare the intensity range of ``data`` with the range ``model`` was fitted on.

    Parameters
    ----------
    model : GaussianMixtureNoiseModel
    data : array-like
        Raw intensities in the units of the fit (any shape).
    kind : {"observation", "signal"}
        ``data`` are noisy observations (compared with the observations of the fit, when the
        model records them; else with its signal range) or signals (clean estimates,
        predictions; compared with ``[min_signal, max_signal]``).
    max_outside : float
        Fraction of pixels outside the fitted range above which the report is not ok.
    min_span : float
        The report is not ok when the data's range is narrower than this fraction of the fitted
        one (e.g. normalised data against a model fitted in raw units).
    warn : bool
        Log a warning with the numbers when the report is not ok.
    """
    if kind not in ("observation", "signal"):
        raise InputError(f"kind must be 'observation' or 'signal', got {kind!r}")
    a = check_finite(data, "data").astype(np.float64, copy=False)
    lo, hi = (model.min_signal, model.max_signal)
    if kind == "observation" and model.observation_range is not None:
        lo, hi = model.observation_range
    dlo, dhi = float(a.min()), float(a.max())
    below = float(np.count_nonzero(a < lo)) / a.size
    above = float(np.count_nonzero(a > hi)) / a.size
    narrow = (dhi - dlo) < min_span * (hi - lo)
    ok = below + above <= max_outside and not narrow
    name = f" '{model.channel_name}'" if model.channel_name is not None else ""
    msg = (f"{kind}s range [{dlo:.6g}, {dhi:.6g}] vs the fitted {kind} range [{lo:.6g}, "
           f"{hi:.6g}] of noise model{name}: {100 * (below + above):.2f}% of the pixels outside "
           f"({100 * below:.2f}% below, {100 * above:.2f}% above)")
    if narrow:
        msg += (f"; the data span only {100 * (dhi - dlo) / (hi - lo):.1f}% of the fitted range "
                "(other intensity units?)")
    if not ok:
        msg += ("; outside the range the model keeps the mixture shape of the nearest end: refit "
                "on data like these or check that both are raw intensities")
        if warn:
            log.warning("%s", msg)
    return RangeReport((dlo, dhi), (float(lo), float(hi)), below, above, ok, msg)
