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


def _colourbar(fig, im, ax, label: str, *, cax=None):
    """A slim colour bar beside ``ax`` (or in ``cax``), labelled ``label`` (the panel's unit)."""
    cb = fig.colorbar(im, cax=cax) if cax is not None else fig.colorbar(
        im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label(label, fontsize=7)
    cb.ax.tick_params(labelsize=6)
    return cb


def _inside(lo: float, hi: float, n: int) -> tuple[float, float]:
    """The part of the interval ``[lo, hi)`` that lies inside ``[0, n)``."""
    return max(lo, 0.0), min(hi, float(n))


def plot_context_stack(
    frame: np.ndarray,
    corner: Sequence[int],
    stack: np.ndarray,
    path: str | os.PathLike,
    *,
    targets: np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
    title: str | None = None,
    unit: str = "normalised intensity",
    target_unit: str | None = None,
) -> Path:
    """One frame, where the lateral-context windows lie on it, and the stack the network sees.

    The frame is drawn at its own size: a window wider than the frame is drawn clipped to it
    (dashed, "beyond the frame" in the legend), and in its stack panel the part that lies
    outside the frame, where the network gets the padding (docs/data.md, "Padding modes"), is
    hatched. The legend lies below the frame, outside the image. The frame and the stack share
    one colour scale (``unit``), the targets another (``target_unit``, default ``unit``).

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        The (normalised) input frame.
    corner : (int, int)
        Top-left corner of the primary patch.
    stack : ndarray, shape (S, P, P)
        The lateral-context stack of that patch (scale 0 = primary patch), centred on the
        primary patch (docs/data.md, "Lateral context crops").
    targets : ndarray, shape (T, P, P), optional
        The target channels of the primary patch.
    """
    plt = _pyplot()
    s, p, _ = stack.shape
    t = 0 if targets is None else targets.shape[0]
    # image panels, then a slim colour-bar column after the stack and after the targets
    ratios = [1.0] * (1 + s) + [0.07] + ([1.0] * t + [0.07] if t else [])
    fig = plt.figure(figsize=(2.6 * (1 + s + t) + 1.2, 3.0))
    grid = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.45)
    cols = [fig.add_subplot(grid[0, j]) for j in range(len(ratios))]
    for j, r in enumerate(ratios):
        if r < 1:  # a colour bar as tall as the square panels beside it
            cols[j].set_box_aspect(1 / r)
    axes = cols[:1 + s] + cols[2 + s:2 + s + t]
    h, w = frame.shape
    vmin = float(min(np.min(frame), np.min(stack)))
    vmax = float(max(np.max(frame), np.max(stack)))
    ax = axes[0]
    im = ax.imshow(frame, cmap="magma", extent=(0, w, h, 0), vmin=vmin, vmax=vmax)
    cy, cx = corner[0] + p / 2, corner[1] + p / 2
    colours = plt.cm.viridis(np.linspace(0, 0.9, s))
    for k in range(s):
        half = p * 2**k / 2
        (y0, y1), (x0, x1) = _inside(cy - half, cy + half, h), _inside(cx - half, cx + half, w)
        clipped = (y0, y1, x0, x1) != (cy - half, cy + half, cx - half, cx + half)
        label = f"scale {k}: {p * 2**k} px" + (" (beyond the frame)" if clipped else "")
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.4,
                                   ec=colours[k], ls="--" if clipped else "-", label=label))
        a = axes[1 + k]
        a.imshow(stack[k], cmap="magma", vmin=vmin, vmax=vmax)
        a.set_xlim(-0.5, p - 0.5)
        a.set_ylim(p - 0.5, -0.5)
        if clipped:  # in stack pixels: where the frame ends; outside it the network sees padding
            f = 2.0**k
            top, left = cy - half, cx - half
            iy0, iy1 = (y0 - top) / f - 0.5, (y1 - top) / f - 0.5
            ix0, ix1 = (x0 - left) / f - 0.5, (x1 - left) / f - 0.5
            lo, hi = -0.5, p - 0.5
            for rx, ry, rw, rh in ((lo, lo, p, iy0 - lo), (lo, iy1, p, hi - iy1),
                                   (lo, iy0, ix0 - lo, iy1 - iy0), (ix1, iy0, hi - ix1, iy1 - iy0)):
                if rw > 0 and rh > 0:
                    a.add_patch(plt.Rectangle((rx, ry), rw, rh, fill=False, hatch="//",
                                              ec="white", lw=0, alpha=0.6))
        a.set_title((f"scale {k}: {p * 2**k} px field" if k else f"scale 0: {p} px patch")
                    + ("\n(hatched: padding)" if clipped else ""), fontsize=8)
        for sp in a.spines.values():
            sp.set_edgecolor(colours[k])
            sp.set_linewidth(2)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(f"input frame ({h}×{w} px)\nand the context windows", fontsize=8)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.03), framealpha=0.9)
    _colourbar(fig, im, None, unit, cax=cols[1 + s])
    if t:
        tmin, tmax = float(np.min(targets)), float(np.max(targets))
        for j in range(t):
            a = axes[1 + s + j]
            tim = a.imshow(targets[j], cmap="gray", vmin=tmin, vmax=tmax)
            name = channel_names[j] if channel_names else f"target {j}"
            a.set_title(f"{name} (true, patch)", fontsize=8)
        _colourbar(fig, tim, None, target_unit or unit, cax=cols[-1])
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
    unit: str = "intensity",
) -> Path:
    """Input | prediction per channel | ground truth per channel | std per channel.

    Every panel has a colour bar labelled with ``unit``, the intensity unit of the input (the
    predicted channels and their std are in the same units, docs/tiling.md, "Units"); a channel's
    prediction and ground truth share one colour scale.

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
    # room for a title above each row and a labelled colour bar beside each panel
    fig, axes = plt.subplots(rows, c + 1, figsize=(3.3 * (c + 1), rows * (2.8 * max(aspect, 0.3)
                                                                        + 0.35) + 0.4),
                             squeeze=False, gridspec_kw={"hspace": 0.3, "wspace": 0.35})
    im = axes[0, 0].imshow(shown, cmap="magma")
    axes[0, 0].set_title("input (superimposed)", fontsize=9)
    _colourbar(fig, im, axes[0, 0], unit)
    for r in range(1, rows):
        axes[r, 0].axis("off")
    for k in range(c):
        vmin, vmax = np.percentile(
            (target if target is not None else mean)[crop + (k,)], [0.5, 99.5])
        im = axes[0, k + 1].imshow(mean[crop + (k,)], cmap="gray", vmin=vmin, vmax=vmax)
        axes[0, k + 1].set_title(f"prediction: {names[k]}", fontsize=9)
        _colourbar(fig, im, axes[0, k + 1], unit)
        r = 1
        if target is not None:
            im = axes[r, k + 1].imshow(target[crop + (k,)], cmap="gray", vmin=vmin, vmax=vmax)
            axes[r, k + 1].set_title(f"ground truth: {names[k]}", fontsize=9)
            _colourbar(fig, im, axes[r, k + 1], unit)
            r += 1
        if std is not None:
            im = axes[r, k + 1].imshow(std[crop + (k,)], cmap="viridis")
            axes[r, k + 1].set_title(f"uncertainty (std): {names[k]}", fontsize=9)
            _colourbar(fig, im, axes[r, k + 1], f"std, {unit}")
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
