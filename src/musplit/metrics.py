"""Image quality metrics as the paper computes them (docs/evaluation.md).

All functions take 2-D frames ``(H, W)``: the ground truth first, the prediction second. They are
computed in float64. The paper's "PSNR" is the range-invariant PSNR of CARE (Weigert et al.,
Nature Methods 2018), invariant to a positive affine change of the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from musplit.errors import InputError

__all__ = ["range_invariant_psnr", "psnr", "ssim", "rmse", "evaluate", "METRICS"]


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


METRICS: dict[str, Callable[..., float]] = {
    "ri_psnr": range_invariant_psnr,
    "psnr": psnr,
    "ssim": ssim,
    "rmse": rmse,
}


def evaluate(targets, predictions, metrics=("ri_psnr", "psnr", "ssim", "rmse"),
             channel_names=None) -> dict:
    """Per-frame, per-channel metrics with mean and standard error over frames.

    Parameters
    ----------
    targets, predictions : array_like, shape (N, H, W, C)
        Ground truth and prediction, both in the same (normalised) units.

    Returns
    -------
    dict
        ``{"per_frame": {metric: [[frame values per channel] ...]}, "summary":
        {metric: {channel: {"mean", "sem"}, "mean": {...}}}}`` where the channel mean is the
        paper's figure (mean over channels of the per-channel frame means).
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
    for m in metrics:
        fn = METRICS[m]
        vals = np.array([[fn(t[i, ..., k], p[i, ..., k]) for k in range(c)] for i in range(n)])
        per_frame[m] = vals.tolist()
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
        summary[m] = entry
    return {"per_frame": per_frame, "summary": summary, "channels": names, "frames": n}
