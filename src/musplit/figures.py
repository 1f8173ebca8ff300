"""Figures (PNG) that show a user what the data and the model look like.

Drawing only: :func:`plot_context_stack` (a frame, its lateral-context windows and the stack
the network sees) and :func:`plot_prediction` (input, predictions, ground truth, std), both
written through :func:`save_figure` (atomic PNG). The runs that arrange figures and metrics
into a report are :mod:`musplit.demo` and :mod:`musplit.demo_real`. matplotlib is imported
when the first figure is drawn (:func:`_pyplot`), so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from musplit.files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure to PNG under a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name has no image suffix: the format comes from the final name's.
    fmt = path.suffix[1:].lower() or "png"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    _pyplot().close(fig)
    return path


def plot_context_stack(
    frame: np.ndarray,
    corner: Sequence[int],
    stack: np.ndarray,
    path: str | os.PathLike,
    *,
    targets: np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One frame, where the lateral-context windows lie on it, and the stack the network sees.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        The (normalised) input frame.
    corner : (int, int)
        Top-left corner of the primary patch.
    stack : ndarray, shape (S, P, P)
        The lateral-context stack of that patch (scale 0 = primary patch).
    targets : ndarray, shape (T, P, P), optional
        The target channels of the primary patch.
    """
    plt = _pyplot()
    s, p, _ = stack.shape
    t = 0 if targets is None else targets.shape[0]
    ncols = 1 + s + t
    fig, axes = plt.subplots(1, ncols, figsize=(2.6 * ncols, 3.0))
    h, w = frame.shape
    ax = axes[0]
    ax.imshow(frame, cmap="magma", extent=(0, w, h, 0))
    cy, cx = corner[0] + p / 2, corner[1] + p / 2
    colours = plt.cm.viridis(np.linspace(0, 0.9, s))
    span = p * 2 ** (s - 1) / 2
    for k in range(s):
        half = p * 2**k / 2
        ax.add_patch(plt.Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False,
                                   lw=1.4, ec=colours[k], label=f"scale {k}"))
    ax.set_xlim(min(0, cx - span) - 4, max(w, cx + span) + 4)
    ax.set_ylim(max(h, cy + span) + 4, min(0, cy - span) - 4)
    ax.set_title("input frame and LC windows", fontsize=9)
    ax.legend(fontsize=6, loc="lower right", framealpha=0.6)
    for k in range(s):
        a = axes[1 + k]
        a.imshow(stack[k], cmap="magma")
        a.set_title(f"scale {k}: {p * 2**k}px field" if k else f"scale 0: {p}px patch",
                    fontsize=9)
        for sp in a.spines.values():
            sp.set_edgecolor(colours[k])
            sp.set_linewidth(2)
    for j in range(t):
        a = axes[1 + s + j]
        a.imshow(targets[j], cmap="gray")
        name = channel_names[j] if channel_names else f"target {j}"
        a.set_title(f"{name} (target)", fontsize=9)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_prediction(
    inp: np.ndarray,
    mean: np.ndarray,
    path: str | os.PathLike,
    *,
    target: np.ndarray | None = None,
    std: np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
    crop: tuple[slice, slice] | None = None,
    title: str | None = None,
) -> Path:
    """Input | prediction per channel | ground truth per channel | std per channel.

    Parameters
    ----------
    inp : ndarray, shape (H, W)
        The superimposed input.
    mean : ndarray, shape (H, W, C)
        Predicted channels.
    target, std : ndarray, shape (H, W, C), optional
        Ground truth and per-pixel standard deviation.
    crop : (slice, slice), optional
        Region to show.
    """
    plt = _pyplot()
    crop = crop or (slice(None), slice(None))
    c = mean.shape[-1]
    names = list(channel_names) if channel_names else [f"ch{k}" for k in range(c)]
    rows = 1 + (target is not None) + (std is not None)
    shown = inp[crop]
    aspect = shown.shape[0] / max(shown.shape[1], 1)  # panels as tall as the crop is
    fig, axes = plt.subplots(rows, c + 1, figsize=(2.8 * (c + 1), 2.8 * rows * max(aspect, 0.3)
                                                   + 0.4), squeeze=False)
    axes[0, 0].imshow(inp[crop], cmap="magma")
    axes[0, 0].set_title("input (superimposed)", fontsize=9)
    for r in range(1, rows):
        axes[r, 0].axis("off")
    for k in range(c):
        vmin, vmax = np.percentile(
            (target if target is not None else mean)[crop + (k,)], [0.5, 99.5])
        axes[0, k + 1].imshow(mean[crop + (k,)], cmap="gray", vmin=vmin, vmax=vmax)
        axes[0, k + 1].set_title(f"prediction: {names[k]}", fontsize=9)
        r = 1
        if target is not None:
            axes[r, k + 1].imshow(target[crop + (k,)], cmap="gray", vmin=vmin, vmax=vmax)
            axes[r, k + 1].set_title(f"ground truth: {names[k]}", fontsize=9)
            r += 1
        if std is not None:
            im = axes[r, k + 1].imshow(std[crop + (k,)], cmap="viridis")
            axes[r, k + 1].set_title(f"std: {names[k]}", fontsize=9)
            fig.colorbar(im, ax=axes[r, k + 1], fraction=0.046, pad=0.02)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_calibration(calibration, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """RMSE against RMV per bin, before and after calibration, one panel per channel, with the
    diagonal ``y = x`` where a calibrated std lies (docs/microsplit.md, "Calibration in
    musplit").

    Parameters
    ----------
    calibration : musplit.calibration.Calibration
        Its ``before`` / ``after`` bins (kept bins only are drawn), ``ence_before`` /
        ``ence_after`` (in the legend), ``a``, ``b`` and ``channel_names``.
    path : path-like
        The figure (``.png``), written atomically.
    """
    plt = _pyplot()
    c = calibration.n_channels
    fig, axes = plt.subplots(1, c, figsize=(3.6 * c, 3.6), squeeze=False)
    units = calibration.units + " target units"
    for k, ax in enumerate(axes[0]):
        name = (calibration.channel_names[k] if k < len(calibration.channel_names)
                else f"ch{k}")
        top = 0.0
        for bins, ence, style, label in (
                (calibration.before[k], calibration.ence_before[k], "o-", "raw std"),
                (calibration.after[k], calibration.ence_after[k], "s-", "calibrated std")):
            x, y = bins.rmv[bins.kept], bins.rmse[bins.kept]
            ax.plot(x, y, style, ms=3.5, lw=1, label=f"{label} (ENCE {ence:.3f})")
            top = max(top, float(np.nanmax(x, initial=0)), float(np.nanmax(y, initial=0)))
        top = top * 1.05 or 1.0
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="y = x (calibrated)")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"RMV, predicted ({units})", fontsize=8)
        ax.set_ylabel(f"RMSE, observed ({units})", fontsize=8)
        ax.set_title(f"{name}: a = {calibration.a[k]:.3g}, b = {calibration.b[k]:.3g}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.7)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
