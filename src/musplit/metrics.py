"""Image quality metrics as the paper computes them (docs/evaluation.md).

The per-frame functions take 2-D frames ``(H, W)``: the ground truth first, the prediction
second. They are computed in float64. The paper's "PSNR" is the range-invariant PSNR of CARE
(Weigert et al., Nature Methods 2018), invariant to a positive affine change of the prediction.
MicroSSIM and MicroMS3IM (:func:`micro_ssim`, from the ``microssim`` package) are fitted on a
whole set of frames of one channel and then scored per frame (docs/evaluation.md, "MicroSSIM").
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable

import numpy as np

from musplit.errors import InputError

__all__ = ["range_invariant_psnr", "psnr", "ssim", "rmse", "micro_ssim", "evaluate", "METRICS",
           "SET_METRICS", "DEFAULT_METRICS"]


def _pair(target, prediction) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(target, dtype=np.float64)
    p = np.asarray(prediction, dtype=np.float64)
    if g.ndim != 2 or p.ndim != 2:
        raise InputError(f"metrics take 2-D frames, got {g.shape} and {p.shape}")
    if g.shape != p.shape:
        raise InputError(f"target {g.shape} and prediction {p.shape} differ in shape")
    if not (np.isfinite(g).all() and np.isfinite(p).all()):
        raise InputError("target or prediction contains NaN or Inf")
    return g, p


def range_invariant_psnr(target, prediction) -> float:
    """Range-invariant PSNR in dB (docs/evaluation.md, "RI-PSNR").

    The ground truth is standardised (unbiased std), the prediction centred and scaled by the
    least-squares factor onto it; the peak is the standardised ground truth's range.

    Parameters
    ----------
    target, prediction : array_like, shape (H, W)

    Returns
    -------
    float
        ``20 log10(range / sqrt(MSE))``; ``inf`` for a perfect affine match.
    """
    g, p = _pair(target, prediction)
    g = g.ravel()
    p = p.ravel()
    sd = g.std(ddof=1)
    if sd == 0:
        raise InputError("range-invariant PSNR is undefined for a constant target frame")
    gs = (g - g.mean()) / sd
    r = (g.max() - g.min()) / sd
    p0 = p - p.mean()
    denom = np.dot(p0, p0)
    a = np.dot(gs, p0) / denom if denom > 0 else 0.0
    mse = np.mean((gs - a * p0) ** 2)
    return math.inf if mse == 0 else float(20 * np.log10(r / np.sqrt(mse)))


def psnr(target, prediction, data_range: float | None = None) -> float:
    """Plain PSNR in dB with the target's range as peak (docs/evaluation.md,
    "PSNR, SSIM and RMSE")."""
    g, p = _pair(target, prediction)
    rng = float(g.max() - g.min()) if data_range is None else float(data_range)
    mse = np.mean((g - p) ** 2)
    return math.inf if mse == 0 else float(20 * np.log10(rng / np.sqrt(mse)))


def ssim(target, prediction, data_range: float | None = None) -> float:
    """SSIM with scikit-image's defaults (7x7 uniform window, K1 0.01, K2 0.03, sample
    covariance) and ``data_range = max - min`` of the target frame (docs/evaluation.md, "PSNR, SSIM
    and RMSE")."""
    from skimage.metrics import structural_similarity

    g, p = _pair(target, prediction)
    rng = float(g.max() - g.min()) if data_range is None else float(data_range)
    return float(structural_similarity(g, p, data_range=rng))


def rmse(target, prediction) -> float:
    """Root mean squared error."""
    g, p = _pair(target, prediction)
    return float(np.sqrt(np.mean((g - p) ** 2)))


#: Shortest frame side MicroSSIM scores: the package's ``score`` uses an 11-tap Gaussian window.
MICROSSIM_MIN_SIDE = 11
#: Shortest frame side MicroMS3IM scores: torchmetrics' 5-scale MS-SSIM with an 11-px window
#: needs ``side // 16 > 10``.
MICROMS3IM_MIN_SIDE = 176
#: The line given instead of MicroSSIM and MicroMS3IM where the package is not installed.
MISSING_NOTE = ("MicroSSIM and MicroMS3IM not computed: they need the microssim package "
                "(Python >= 3.11; pip install microssim)")


def micro_ssim(targets, predictions, *, multiscale: bool = True) -> dict:
    """MicroSSIM and MicroMS3IM of a set of frames of one channel, from the ``microssim``
    package (docs/evaluation.md, "MicroSSIM").

    One :class:`microssim.MicroSSIM` is fitted on all the frames together (the background
    offsets of truth and prediction, the truth's scale and one range-invariant factor α), then
    every frame is scored with it; MicroMS3IM is scored with the same fitted parameters, as the
    package does. Before the fit the prediction is multiplied by one positive factor (the
    truth's standard deviation over the set divided by the prediction's): the scores do not
    depend on such a factor, which α absorbs, but the package's search for α starts at α = 1
    and does not move when the prediction is orders of magnitude brighter than the truth.

    Parameters
    ----------
    targets, predictions : array_like, shape (N, H, W)
        All the frames of one channel: ground truth and prediction.
    multiscale : bool
        Also MicroMS3IM (frames of at least :data:`MICROMS3IM_MIN_SIDE` px on each side).

    Returns
    -------
    dict
        ``"microssim"`` and ``"microms3im"``: one value per frame, each present only where it
        was computed; ``"fit"``: the fitted parameters in the inputs' units (``offset_gt``,
        ``offset_pred``, ``max_val``, ``ri_factor``, ``bg_percentile``); ``"notes"``: one line
        per metric not computed, saying why. Without the package, only ``"notes"``.
    """
    g = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if g.ndim != 3 or g.shape != p.shape:
        raise InputError(f"MicroSSIM takes two (N, H, W) stacks of one shape, got {g.shape} "
                         f"and {p.shape}")
    if not (np.isfinite(g).all() and np.isfinite(p).all()):
        raise InputError("target or prediction contains NaN or Inf")
    try:
        from microssim import MicroMS3IM, MicroSSIM
    except ImportError:
        return {"notes": [MISSING_NOTE]}
    h, w = g.shape[1:]
    if min(h, w) < MICROSSIM_MIN_SIDE:
        return {"notes": [f"MicroSSIM and MicroMS3IM not computed: frames of {h} x {w} px are "
                          f"smaller than the {MICROSSIM_MIN_SIDE} px its window needs"]}
    if g.max() <= np.percentile(g, 3):
        raise InputError("MicroSSIM is undefined for a target with no signal above its "
                         "background (3rd percentile) over the whole set")
    sd = p.std()
    k = float(g.std() / sd) if sd > 0 else 1.0
    p = p * k
    # The package prints a progress bar over the frames while fitting, and takes the square
    # root of variance products that rounding can make slightly negative, for an SSIM
    # component it does not use in the score: neither is for the user.
    with contextlib.redirect_stderr(io.StringIO()), np.errstate(invalid="ignore"):
        fitted = MicroSSIM().fit(g, p)
        scores = [float(fitted.score(a, b)) for a, b in zip(g, p, strict=True)]
    params = {n: v if n == "bg_percentile" else float(v)
              for n, v in fitted.get_parameters().items()}
    out: dict = {"microssim": scores,
                 "fit": {**params, "offset_pred": params["offset_pred"] / k,
                         "ri_factor": params["ri_factor"] * k},
                 "notes": []}
    if not multiscale:
        return out
    if min(h, w) < MICROMS3IM_MIN_SIDE:
        out["notes"].append(f"MicroMS3IM not computed: frames of {h} x {w} px are smaller than "
                            f"the {MICROMS3IM_MIN_SIDE} px its five scales need")
        return out
    ms = MicroMS3IM(**{n: v for n, v in params.items()})
    out["microms3im"] = [float(ms.score(a, b)) for a, b in zip(g, p, strict=True)]
    return out


METRICS: dict[str, Callable[..., float]] = {
    "ri_psnr": range_invariant_psnr,
    "psnr": psnr,
    "ssim": ssim,
    "rmse": rmse,
}
#: Metrics fitted on all the frames of a channel together (:func:`micro_ssim`).
SET_METRICS = ("microssim", "microms3im")
DEFAULT_METRICS = ("ri_psnr", "psnr", "ssim", "microssim", "microms3im", "rmse")


def _set_metrics(t: np.ndarray, p: np.ndarray, wanted, names) -> tuple[dict, dict, list]:
    """Per-frame values ``(N, C)`` of the :data:`SET_METRICS` in ``wanted`` that could be
    computed, the fitted parameters per channel, and the notes on those that could not."""
    per_channel = [micro_ssim(t[..., k], p[..., k], multiscale="microms3im" in wanted)
                   for k in range(t.shape[-1])]
    vals = {m: np.array([r[m] for r in per_channel]).T for m in wanted
            if all(m in r for r in per_channel)}
    fits = {n: r["fit"] for n, r in zip(names, per_channel, strict=True) if "fit" in r}
    notes = list(dict.fromkeys(x for r in per_channel for x in r["notes"]))
    return vals, fits, notes


def _entry(vals: np.ndarray, names, n: int) -> dict:
    entry = {}
    for k, name in enumerate(names):
        v = vals[:, k]
        sem = float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        entry[name] = {"mean": float(v.mean()), "sem": sem}
    chan_means = vals.mean(axis=0)
    frame_means = vals.mean(axis=1)
    entry["mean"] = {"mean": float(chan_means.mean()),
                     "sem": float(frame_means.std(ddof=1) / np.sqrt(n)) if n > 1
                     else float("nan")}
    return entry


def evaluate(targets, predictions, metrics=DEFAULT_METRICS, channel_names=None) -> dict:
    """Per-frame, per-channel metrics with mean and standard error over frames.

    Parameters
    ----------
    targets, predictions : array_like, shape (N, H, W, C)
        Ground truth and prediction, both in the same (normalised) units.
    metrics : sequence of str
        Names of :data:`METRICS` (per frame) and :data:`SET_METRICS` (fitted per channel on all
        N frames, then scored per frame).

    Returns
    -------
    dict
        ``{"per_frame": {metric: [[frame values per channel] ...]}, "summary":
        {metric: {channel: {"mean", "sem"}, "mean": {...}}}, "notes": [...]}`` where the
        channel mean is the paper's figure (mean over channels of the per-channel frame means).
        A set metric that cannot be computed (no ``microssim`` package, frames too small) is
        absent, with one line in ``"notes"`` saying why; ``"microssim_fit"`` holds the
        parameters MicroSSIM fitted per channel.
    """
    t = np.asarray(targets)
    p = np.asarray(predictions)
    if t.ndim != 4 or t.shape != p.shape:
        raise InputError(f"evaluate takes two (N, H, W, C) arrays of one shape, got "
                         f"{t.shape} and {p.shape}")
    n, _, _, c = t.shape
    names = list(channel_names) if channel_names else [f"ch{k}" for k in range(c)]
    per_frame: dict[str, list[list[float]]] = {}
    summary: dict[str, dict] = {}
    fitted: tuple | None = None
    for m in metrics:
        if m in SET_METRICS:
            if fitted is None:  # after the per-frame metrics before it have checked the input
                fitted = _set_metrics(t, p, [x for x in metrics if x in SET_METRICS], names)
            if m not in fitted[0]:
                continue
            vals = fitted[0][m]
        else:
            fn = METRICS[m]
            vals = np.array([[fn(t[i, ..., k], p[i, ..., k]) for k in range(c)]
                             for i in range(n)])
        per_frame[m] = vals.tolist()
        summary[m] = _entry(vals, names, n)
    res = {"per_frame": per_frame, "summary": summary, "channels": names, "frames": n,
           "notes": fitted[2] if fitted else []}
    if fitted and fitted[1]:
        res["microssim_fit"] = fitted[1]
    return res
