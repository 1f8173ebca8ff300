"""Calibrated uncertainty: fit the posterior-sample std to the errors it should predict
(MicroSplit; docs/microsplit.md, "Calibration" and "Calibration in musplit").

Per channel, on validation data in normalised target units:

1. **Bins.** ``K + 1`` evenly spaced edges from the channel's smallest to its largest predicted
   std ``σ̂`` (``K = 15`` by default, :data:`DEFAULT_BINS`). Bin ``k`` holds
   ``edges[k] <= σ̂ < edges[k + 1]``; the last bin also holds ``σ̂ = edges[K]``, so the largest
   pixel is not dropped.
2. **Per bin** (``n_k`` pixels): ``RMV_k = sqrt(mean σ̂²)``, ``RMSE_k = sqrt(mean e²)`` with
   ``e = μ̂ − y`` (the sign of ``e`` does not matter: ``|μ̂ − y|`` gives the same numbers).
   An empty bin has no RMV or RMSE (NaN in the arrays, None in :meth:`Calibration.to_dict`).
3. **Sparse tails.** With ``F_k`` the fraction of pixels in bins ``0..k`` (``F_{-1} = 0``), bin
   ``k`` is kept when ``F_k > q_start`` and ``F_{k-1} < q_end`` (defaults 1e-5 and 0.99999):
   leading bins that together hold at most ``q_start`` of the pixels and trailing bins that hold
   at most ``1 − q_end`` are dropped. At least one non-empty bin is always kept.
4. **Fit.** Ordinary least squares, every kept non-empty bin with equal weight,
   ``RMSE_k ≈ a · RMV_k + b``. With fewer than two such bins, or all their RMVs equal (a constant
   std), the fit is a scale only: ``a = RMSE / RMV`` over the kept pixels, ``b = 0``.
5. **Apply.** ``σ_cal = max(a σ̂ + b, 0)`` (:func:`calibrated_std`).

**Calibration error** (ENCE, Levi et al.): ``(1/K') Σ_k |RMV_k − RMSE_k| / RMV_k`` over the
``K'`` kept, non-empty bins with ``RMV_k > 0`` (a bin whose std is all 0 has no relative gap).
It is 0 for a perfectly calibrated std. :attr:`Calibration.ence_before` is that of the raw std
``σ̂``; :attr:`Calibration.ence_after` rebins the calibrated std ``σ_cal`` (new edges from its
own min and max) and computes it again, on the same pixels. The count-weighted variant
``Σ_k n_k |RMV_k − RMSE_k| / RMV_k / Σ_k n_k`` over the same bins is kept beside it
(``ence_weighted_*``). Numbers on the calibration data themselves are in-sample; compute them
on a held-out split with :func:`bin_errors` and :func:`calibration_error`.

:func:`calibrate` predicts validation images with a :class:`~musplit.splitter.Splitter` and fits;
:func:`save_calibrated` writes a checkpoint that carries the result, which prediction then
applies (:mod:`musplit.predict.calibrated`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from musplit.data.io import ImageSource
from musplit.errors import InputError
from musplit.predict.calibrated import affine_std, check_calibration

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BINS", "DEFAULT_SAMPLES", "Bins", "Calibration", "bin_errors",
           "calibrate", "calibrated_std", "calibration_error", "fit_calibration", "fit_line",
           "save_calibrated"]

#: Bins per channel (CAREamics' default; the authors' evaluations used 30 and 50).
DEFAULT_BINS = 15
#: Posterior samples for the std that is calibrated (the MicroSplit notebooks' 50).
DEFAULT_SAMPLES = 50
#: Tail fractions below / above which bins are dropped.
Q_START, Q_END = 1e-5, 0.99999


@dataclass
class Bins:
    """One channel's pixels binned by predicted std.

    Attributes
    ----------
    edges : ndarray, shape (K + 1,)
        Bin edges, in the std's units.
    rmv, rmse : ndarray, shape (K,)
        Root mean variance ``sqrt(mean σ²)`` and root mean squared error per bin; NaN for an
        empty bin.
    counts : ndarray of int64, shape (K,)
        Pixels per bin.
    kept : ndarray of bool, shape (K,)
        Bins inside the trimmed range and not empty: the ones fitted and scored.
    """

    edges: np.ndarray
    rmv: np.ndarray
    rmse: np.ndarray
    counts: np.ndarray
    kept: np.ndarray

    def to_dict(self) -> dict:
        return {"edges": _floats(self.edges), "rmv": _floats(self.rmv),
                "rmse": _floats(self.rmse), "counts": [int(v) for v in self.counts],
                "kept": [bool(v) for v in self.kept]}

    @classmethod
    def from_dict(cls, d: dict) -> Bins:
        def arr(key, dtype=np.float64):
            return np.array([np.nan if v is None else v for v in d[key]], dtype=dtype)

        return cls(arr("edges"), arr("rmv"), arr("rmse"), arr("counts", np.int64),
                   arr("kept", bool))


@dataclass
class Calibration:
    """A per-channel affine calibration of the predicted std, ``σ_cal = max(a σ̂ + b, 0)``.

    Attributes
    ----------
    a, b : list of float
        Scale and offset per channel; ``b`` in normalised target units (:attr:`units`).
    channel_names : list of str
    before, after : list of Bins
        Per channel: the raw std's bins (the fit's data) and the calibrated std's bins.
    ence_before, ence_after : list of float
        Calibration error (ENCE) per channel before and after (NaN when no bin can be scored).
    ence_weighted_before, ence_weighted_after : list of float
        The count-weighted variant.
    n_bins : int
    samples : int or None
        Posterior samples of the std that was fitted.
    pixels : int
        Pixels per channel the fit used.
    units : str
        ``"normalised"``: target units ``(t - m_k) / s_k`` of the training statistics.
    """

    a: list[float]
    b: list[float]
    channel_names: list[str] = field(default_factory=list)
    before: list[Bins] = field(default_factory=list)
    after: list[Bins] = field(default_factory=list)
    ence_before: list[float] = field(default_factory=list)
    ence_after: list[float] = field(default_factory=list)
    ence_weighted_before: list[float] = field(default_factory=list)
    ence_weighted_after: list[float] = field(default_factory=list)
    n_bins: int = DEFAULT_BINS
    samples: int | None = None
    pixels: int = 0
    units: str = "normalised"

    @property
    def n_channels(self) -> int:
        return len(self.a)

    def to_dict(self) -> dict:
        """Plain JSON-like data (lists, floats, None for NaN): what a checkpoint stores."""
        d = asdict(self)
        d["before"] = [b.to_dict() for b in self.before]
        d["after"] = [b.to_dict() for b in self.after]
        for k in ("a", "b", "ence_before", "ence_after", "ence_weighted_before",
                  "ence_weighted_after"):
            d[k] = _floats(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """The inverse of :meth:`to_dict`; a damaged table is a
        :class:`~musplit.errors.CheckpointError`."""
        a, b = check_calibration(d, len(d.get("a") or ()) or 1, "the calibration")
        def nan(v):
            return float("nan") if v is None else float(v)

        return cls(
            a=a, b=b, channel_names=list(d.get("channel_names") or []),
            before=[Bins.from_dict(x) for x in d.get("before") or []],
            after=[Bins.from_dict(x) for x in d.get("after") or []],
            **{k: [nan(v) for v in d.get(k) or []] for k in (
                "ence_before", "ence_after", "ence_weighted_before", "ence_weighted_after")},
            n_bins=int(d.get("n_bins", DEFAULT_BINS)),
            samples=None if d.get("samples") is None else int(d["samples"]),
            pixels=int(d.get("pixels", 0)), units=str(d.get("units", "normalised")))

    def table(self) -> str:
        """One line per channel: a, b, kept bins and ENCE before -> after."""
        lines = [f"{'channel':<14}{'a':>10}{'b':>10}{'bins':>7}{'ENCE before':>13}"
                 f"{'ENCE after':>12}"]
        for k in range(self.n_channels):
            name = self.channel_names[k] if k < len(self.channel_names) else f"ch{k}"
            kept = int(self.before[k].kept.sum()) if k < len(self.before) else 0
            lines.append(f"{name:<14}{self.a[k]:>10.4g}{self.b[k]:>10.4g}{kept:>7d}"
                         f"{self.ence_before[k]:>13.4f}{self.ence_after[k]:>12.4f}")
        lines.append(f"(b and the bins in normalised target units; {self.pixels} pixels per "
                     f"channel, {self.n_bins} bins, {self.samples} samples)")
        return "\n".join(lines)


def _floats(values) -> list:
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


# ---------------------------------------------------------------------------------------------
# Binning, fit, error
# ---------------------------------------------------------------------------------------------
def _check_pairs(std, error) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(std)
    error = np.asarray(error)
    if std.shape != error.shape:
        raise InputError(f"the std {std.shape} and the errors {error.shape} differ in shape")
    if std.ndim < 1 or std.size == 0:
        raise InputError("no pixels to calibrate (the std is empty)")
    for what, v in (("std", std), ("errors", error)):
        if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
            raise InputError(f"the {what} must be real numbers, got dtype {v.dtype}")
        bad = ~np.isfinite(v)
        if bad.any():
            raise InputError(f"the {what} hold {int(bad.sum())} NaN or infinite value(s); "
                             "calibration needs finite numbers everywhere")
    if (std < 0).any():
        raise InputError("the std holds negative values; a standard deviation is >= 0")
    return std, error


def bin_errors(std, error, n_bins: int = DEFAULT_BINS, *, q_start: float = Q_START,
               q_end: float = Q_END) -> Bins:
    """Bin one channel's pixels by predicted std (the rules of :mod:`musplit.calibration`).

    Parameters
    ----------
    std, error : array-like, same shape
        Predicted std and the error ``μ̂ − y`` (or ``|μ̂ − y|``) of the same pixels, finite.
    n_bins : int
        ``K >= 1``.
    q_start, q_end : float
        Tail fractions, ``0 <= q_start < q_end <= 1``.
    """
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise InputError(f"the number of bins must be an integer >= 1, got {n_bins!r}")
    if not 0 <= q_start < q_end <= 1:
        raise InputError(f"the tail fractions must satisfy 0 <= q_start < q_end <= 1, got "
                         f"{q_start!r} and {q_end!r}")
    std, error = _check_pairs(std, error)
    s = std.reshape(-1).astype(np.float64)
    e = error.reshape(-1).astype(np.float64)
    lo, hi = float(s.min()), float(s.max())
    edges = np.linspace(lo, hi, n_bins + 1)
    # Inner edges only: a value equal to the top edge falls into the last bin, not past it.
    idx = np.searchsorted(edges[1:-1], s, side="right")
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    var = np.bincount(idx, weights=s * s, minlength=n_bins)
    sq = np.bincount(idx, weights=e * e, minlength=n_bins)
    full = counts > 0
    rmv = np.full(n_bins, np.nan)
    rmse = np.full(n_bins, np.nan)
    rmv[full] = np.sqrt(var[full] / counts[full])
    rmse[full] = np.sqrt(sq[full] / counts[full])
    frac = np.cumsum(counts) / counts.sum()
    before = np.concatenate([[0.0], frac[:-1]])
    kept = full & (frac > q_start) & (before < q_end)
    if not kept.any():  # tails so wide nothing is left: keep the fullest bin
        kept[int(np.argmax(counts))] = True
    return Bins(edges, rmv, rmse, counts, kept)


def fit_line(bins: Bins) -> tuple[float, float]:
    """``(a, b)`` of ``RMSE ≈ a RMV + b`` over the kept bins, unweighted least squares; a
    scale only (``b = 0``) with fewer than two distinct RMVs."""
    x, y = bins.rmv[bins.kept], bins.rmse[bins.kept]
    if len(x) >= 2 and np.ptp(x) > 1e-12 * max(1.0, float(np.abs(x).max())):
        a, b = np.polyfit(x, y, 1)
        return float(a), float(b)
    n = bins.counts[bins.kept].astype(np.float64)
    mv = float(np.sum(n * x * x))
    if mv <= 0:
        raise InputError("the predicted std is 0 in every pixel, so there is nothing to scale: "
                         "predict with more than one posterior sample from a model that "
                         "samples (an HVAE or LadderVAE, not a deterministic HAE)")
    return float(np.sqrt(np.sum(n * y * y) / mv)), 0.0


def calibration_error(bins: Bins, weighted: bool = False) -> float:
    """ENCE ``(1/K') Σ |RMV_k − RMSE_k| / RMV_k`` over kept bins with ``RMV_k > 0``; with
    ``weighted`` each bin counts ``n_k`` times. NaN when no bin qualifies."""
    ok = bins.kept & (np.nan_to_num(bins.rmv) > 0)
    if not ok.any():
        return float("nan")
    gap = np.abs(bins.rmv[ok] - bins.rmse[ok]) / bins.rmv[ok]
    w = bins.counts[ok].astype(np.float64) if weighted else np.ones(int(ok.sum()))
    return float(np.sum(w * gap) / np.sum(w))


def fit_calibration(std, error, *, n_bins: int = DEFAULT_BINS,
                    channel_names: Sequence[str] | None = None, samples: int | None = None,
                    q_start: float = Q_START, q_end: float = Q_END) -> Calibration:
    """Fit ``σ_cal = max(a σ̂ + b, 0)`` per channel and score it before and after.

    Parameters
    ----------
    std : array-like, shape (..., C)
        Predicted posterior std, normalised target units, channels last.
    error : array-like, shape (..., C)
        ``μ̂ − y`` (or its absolute value) for the same pixels and units.
    n_bins, q_start, q_end
        As for :func:`bin_errors`.
    channel_names : sequence of str, optional
    samples : int, optional
        Posterior samples behind ``std`` (recorded; prediction warns when it uses others).

    Raises
    ------
    InputError
        Shapes that differ, NaN/Inf, negative std, a std that is 0 everywhere.
    """
    std, error = _check_pairs(std, error)
    c = std.shape[-1]
    names = list(channel_names) if channel_names else [f"ch{k}" for k in range(c)]
    if len(names) != c:
        raise InputError(f"{len(names)} channel names for {c} channels")
    cal = Calibration(a=[], b=[], channel_names=names, n_bins=int(n_bins), samples=samples,
                      pixels=int(std[..., 0].size))
    for k in range(c):
        s, e = std[..., k], error[..., k]
        try:
            before = bin_errors(s, e, n_bins, q_start=q_start, q_end=q_end)
            a, b = fit_line(before)
        except InputError as err:
            raise InputError(f"channel {names[k]}: {err}") from None
        if a <= 0:
            log.warning("channel %s: the fitted scale a = %.3g is not positive (the error does "
                        "not grow with the std); the calibrated std is close to a constant",
                        names[k], a)
        after = bin_errors(affine_std(s[..., None], [a], [b])[..., 0], e, n_bins,
                           q_start=q_start, q_end=q_end)
        cal.a.append(a)
        cal.b.append(b)
        cal.before.append(before)
        cal.after.append(after)
        cal.ence_before.append(calibration_error(before))
        cal.ence_after.append(calibration_error(after))
        cal.ence_weighted_before.append(calibration_error(before, weighted=True))
        cal.ence_weighted_after.append(calibration_error(after, weighted=True))
    return cal


def calibrated_std(std, calibration: Calibration | dict, target_std: Sequence[float] | None = None
                   ) -> np.ndarray:
    """``max(a_k std + b_k, 0)`` per channel (last axis), float32.

    ``std`` is in normalised target units, unless ``target_std`` (the training statistics'
    ``s_k``, :attr:`NormStats.target_std`) is given: then it is in intensity units and the
    offset becomes ``b_k s_k``.
    """
    d = calibration.to_dict() if isinstance(calibration, Calibration) else calibration
    std = np.asarray(std)
    n = len(d.get("a") or ()) if isinstance(d, dict) else 0
    if std.ndim == 0 or std.shape[-1] != n:
        raise InputError(f"the std has shape {std.shape} but the calibration is for {n} "
                         "channel(s), channels last")
    a, b = check_calibration(d, n, "the calibration")
    off = np.asarray(b, dtype=np.float64)
    if target_std is not None:
        off = off * np.asarray(target_std, dtype=np.float64)
    return affine_std(std, a, off)


# ---------------------------------------------------------------------------------------------
# With a model
# ---------------------------------------------------------------------------------------------
def calibrate(splitter, images, targets, *, samples: int = DEFAULT_SAMPLES,
              n_bins: int = DEFAULT_BINS, seed: int = 0, batch_size: int | None = None,
              padding: str | None = None, grid: int | None = None,
              precision: str | None = None, brightness: str | None = None,
              progress: bool = False) -> Calibration:
    """Predict validation images and fit the calibration of their std.

    Parameters
    ----------
    splitter : musplit.Splitter
    images : ndarray, shape (H, W) or (N, H, W), or ImageSource
        Superimposed validation inputs, intensity units (as for ``Splitter.predict``).
    targets : ndarray, shape (N, H, W, C)
        Their ground-truth channels, intensity units: clipped at the training clip value and
        normalised with the training statistics, as the evaluation does.
    samples : int
        Posterior samples (>= 2); predict later with the same number.
    n_bins : int
        Bins per channel.
    seed, batch_size, padding, grid, precision, brightness, progress
        As for ``Splitter.predict``.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 2:
        raise InputError(f"calibration needs a std from at least 2 posterior samples, got "
                         f"samples={samples!r}")
    t = np.asarray(targets)
    if not np.issubdtype(t.dtype, np.number):
        raise InputError(f"the targets must be numbers, got dtype {t.dtype}")
    if t.ndim == 3:
        t = t[None]
    splitter._need_stats()
    if isinstance(images, ImageSource):
        if images.n_channels != 1:
            raise InputError(f"{images.name} has {images.n_channels} channels "
                             f"({images.axes_note}); the input is one superimposed channel")
        images = images.read()[..., 0]
    shape = np.shape(images)
    frames = (1, *shape) if len(shape) == 2 else tuple(shape)
    if t.ndim != 4 or t.shape[:3] != frames or t.shape[-1] != splitter.stats.n_channels:
        raise InputError(f"the targets {t.shape} do not match the images {tuple(shape)}: give "
                         f"{splitter.stats.n_channels} target channels (N, H, W, C) for the "
                         "same frames and size")
    if not np.isfinite(t).all():
        raise InputError("the targets hold NaN or infinite values")
    pred = splitter.predict(images, padding=padding, grid=grid, samples=int(samples),
                            batch_size=batch_size, seed=seed, precision=precision,
                            normalized=True, progress=progress, brightness=brightness,
                            raw_std=True)
    stats = splitter.stats
    y = stats.normalize_target(stats.clip(t.astype(np.float32)))
    return fit_calibration(pred.std, pred.mean - y, n_bins=n_bins,
                           channel_names=pred.channel_names, samples=int(samples))


def save_calibrated(checkpoint: str | os.PathLike, calibration: Calibration,
                    out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a copy of ``checkpoint`` that carries ``calibration`` (``extra["calibration"]``).

    Everything else is copied as it is: weights, config, statistics, provenance and the
    weights hash, which still matches (the new file is loaded and verified before it is
    renamed into place). ``out`` may be ``checkpoint`` itself only with ``overwrite``.

    Raises
    ------
    InputError
        ``out`` exists (or is the input) without ``overwrite``, is unwritable, or the
        calibration's channels do not match the model's.
    CheckpointError
        ``checkpoint`` is missing, unsafe or damaged.
    """
    import torch

    from musplit.checkpoints.format import load_checkpoint
    from musplit.files import atomic_write, check_output, output_errors

    src, dst = Path(checkpoint), Path(out).expanduser()
    same = dst.exists() and src.exists() and os.path.samefile(src, dst)
    if (same or dst.resolve() == src.resolve()) and not overwrite:
        raise InputError(f"{dst} is the input checkpoint; write the calibrated model to another "
                         "file, or pass --overwrite (overwrite=True) to add the calibration to "
                         "it in place")
    payload = load_checkpoint(src)
    check_output(dst, overwrite, [] if same else [src], "tiff")
    n = len((payload.get("stats") or {}).get("target_std") or []) or calibration.n_channels
    if calibration.n_channels != n:
        raise InputError(f"the calibration has {calibration.n_channels} channels but the model "
                         f"in {src} predicts {n}")
    extra = payload.get("extra")
    payload["extra"] = {**(extra if isinstance(extra, dict) else {}),
                        "calibration": calibration.to_dict()}
    with output_errors(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(dst, "tmp") as tmp:
            torch.save(payload, tmp)
            load_checkpoint(tmp)  # the copy reads back and its weights hash holds
    return dst
