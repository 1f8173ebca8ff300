"""Evaluation protocol (docs/evaluation.md): metrics on whole frames, a table, files."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from musplit.data.normalize import NormStats
from musplit.errors import InputError
from musplit.files import atomic_write
from musplit.metrics import evaluate

log = logging.getLogger(__name__)

_LABELS = {"ri_psnr": "RI-PSNR (dB)", "psnr": "PSNR (dB)", "ssim": "SSIM",
           "microssim": "MicroSSIM", "microms3im": "MicroMS3IM", "rmse": "RMSE"}


def check_pixel_sizes(prediction, target, rtol: float = 0.01) -> bool:
    """Warn when a prediction and its ground truth record different pixel sizes.

    Parameters
    ----------
    prediction, target : ImageSource
        As opened by :func:`musplit.data.io.open_image` (``pixel_size`` in µm, or None).
    rtol : float
        Relative difference tolerated.

    Returns
    -------
    bool
        False when both record a pixel size and they differ (a wrong series or pyramid level
        of the target, say); True otherwise.
    """
    a, b = getattr(prediction, "pixel_size", None), getattr(target, "pixel_size", None)
    if a is None or b is None:
        return True
    if np.allclose(a, b, rtol=rtol, atol=0.0):
        return True
    log.warning("%s has pixel size %.6g x %.6g µm but %s has %.6g x %.6g µm (y x x): is this "
                "the right series/level of the target?", prediction.name, *a, target.name, *b)
    return False


def evaluate_arrays(target, prediction, *, stats: NormStats | None = None,
                    channel_names=None, source: str = "prediction") -> dict:
    """Metrics of a prediction against its ground truth, per frame and channel.

    Parameters
    ----------
    target, prediction : ndarray, shape (N, H, W, C)
        Ground truth and prediction in intensity units.
    stats : NormStats, optional
        Training statistics: the ground truth is clipped at the training clip value and both
        are normalised per channel before the metrics, as the paper does (docs/evaluation.md). The
        (range-invariant) PSNR, SSIM and MicroSSIM do not change under this per-channel affine
        map; the clip and RMSE do.

    Returns
    -------
    dict
        :func:`musplit.metrics.evaluate`'s result plus ``"table"`` (printable text).
    """
    t = np.asarray(target, dtype=np.float32)
    p = np.asarray(prediction, dtype=np.float32)
    if t.ndim == 3:
        t = t[None]
    if p.ndim == 3:
        p = p[None]
    if t.shape != p.shape:
        raise InputError(f"{source}: prediction {p.shape} and target {t.shape} differ in shape "
                         "(N, H, W, C)")
    if stats is not None:
        t = stats.normalize_target(stats.clip(t))
        p = stats.normalize_target(p)
    res = evaluate(t, p, channel_names=channel_names)
    res["normalised"] = stats is not None
    res["table"] = format_table(res)
    return res


def format_table(res: dict) -> str:
    """A plain-text table: one row per metric, one column per channel and their mean, then the
    number of frames and one line per metric that was not computed (``res["notes"]``)."""
    cols = [*res["channels"], "mean"]
    lines = [f"{'metric':<14}" + "".join(f"{c:>20}" for c in cols)]
    for m, entry in res["summary"].items():
        cells = []
        for c in cols:
            e = entry[c]
            sem = "" if not np.isfinite(e["sem"]) else f" ± {e['sem']:.3f}"
            cells.append(f"{e['mean']:.3f}{sem}")
        lines.append(f"{_LABELS.get(m, m):<14}" + "".join(f"{c:>20}" for c in cells))
    lines.append(f"({res['frames']} frames; mean ± standard error over frames)")
    lines += res.get("notes", [])
    return "\n".join(lines)


def write_metrics(res: dict, path: str | os.PathLike) -> list[Path]:
    """Write ``res`` as JSON and the per-frame values as CSV next to it (atomic renames)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in res.items() if k != "table"}
    out = []
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    out.append(path)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["frame", "channel", *res["per_frame"].keys()])
    metrics = list(res["per_frame"])
    for i in range(res["frames"]):
        for k, ch in enumerate(res["channels"]):
            w.writerow([i, ch, *(res["per_frame"][m][i][k] for m in metrics)])
    csv_path = path.with_suffix(".csv")
    with atomic_write(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    out.append(csv_path)
    return out
