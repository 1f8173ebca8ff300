"""The figure of a noise model against its calibration data (docs/noise_models.md, "Figure").

Left: the noise standard deviation against the signal, the model's curve over the pixel pairs'
empirical one. Then, for a few signal bins, the histogram of the observations of the pixels in
the bin against the model's density averaged over those pixels' signals. Written as PNG through
:func:`musplit.figures.save_figure` (temporary name, then rename). This module sits in the
figures layer; :mod:`musplit.noise` loads it only when the figure is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from musplit.figures import _pyplot, save_figure
from musplit.noise.fit import sample_pairs
from musplit.noise.gmm import GaussianMixtureNoiseModel

__all__ = ["plot_noise_model"]


def plot_noise_model(model: GaussianMixtureNoiseModel, noisy, clean,
                     path: str | os.PathLike, *, n_signal_bins: int = 4,
                     max_pairs: int = 200_000, units: str = "raw intensity", seed: int = 0,
                     title: str | None = None) -> Path:
    """Draw ``model`` against the pixel pairs of ``(noisy, clean)`` (paired as in
    :func:`musplit.noise.sample_pairs`) and write the PNG ``path``.

    The signal bins are equal-count bins of the pairs' signals inside the model's fitted
    range, ``n_signal_bins`` of them; ``units`` labels the intensity axes.
    """
    plt = _pyplot()
    obs, sig, _ = sample_pairs(noisy, clean, max_pairs, seed)
    inside = (sig >= model.min_signal) & (sig <= model.max_signal)
    obs, sig = obs[inside], sig[inside]
    fig, axes = plt.subplots(1, 1 + n_signal_bins, figsize=(3.3 * (1 + n_signal_bins), 3.2))
    _std_panel(axes[0], model, obs, sig, units)
    if sig.size:
        edges = np.quantile(sig, np.linspace(0, 1, n_signal_bins + 1))
        for j, ax in enumerate(axes[1:]):
            last = j == n_signal_bins - 1
            sel = (sig >= edges[j]) & ((sig <= edges[j + 1]) if last else (sig < edges[j + 1]))
            _bin_panel(ax, model, obs[sel], sig[sel], (edges[j], edges[j + 1]), units, seed)
    name = f" '{model.channel_name}'" if model.channel_name else ""
    fig.suptitle(title or f"noise model{name}: K={model.n_gaussian}, D={model.n_coeff}, "
                          f"signal [{model.min_signal:.4g}, {model.max_signal:.4g}]",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _std_panel(ax, model, obs, sig, units: str) -> None:
    """Empirical std of x - s per signal bin (dots) and the model's std (line)."""
    grid = np.linspace(model.min_signal, model.max_signal, 200)
    with torch.no_grad():
        _, var = model.moments(torch.from_numpy(grid))
    ax.plot(grid, var.sqrt().numpy(), color="C3", lw=1.5, label="model")
    if sig.size:
        edges = np.linspace(model.min_signal, model.max_signal, 25)
        which = np.clip(np.digitize(sig, edges) - 1, 0, len(edges) - 2)
        centres, stds = [], []
        for b in range(len(edges) - 1):
            r = obs[which == b] - sig[which == b]
            if r.size >= 10:
                centres.append(0.5 * (edges[b] + edges[b + 1]))
                stds.append(r.std())
        ax.plot(centres, stds, "o", ms=3, color="C0", label="data (std of x - s)")
    ax.set_xlabel(f"signal s ({units})")
    ax.set_ylabel(f"noise std ({units})")
    ax.set_title("noise std vs signal", fontsize=9)
    ax.legend(fontsize=7)


def _bin_panel(ax, model, obs, sig, edges, units: str, seed: int) -> None:
    """Histogram of the observations of one signal bin and the model density."""
    ax.set_title(f"s in [{edges[0]:.4g}, {edges[1]:.4g}]\n{obs.size:,} pixels", fontsize=9)
    ax.set_xlabel(f"observation x ({units})")
    ax.set_ylabel(f"density (1 / {units})")
    if obs.size == 0:
        return
    lo, hi = np.percentile(obs, [0.1, 99.9])
    pad = 0.05 * max(hi - lo, 1e-12)
    xs = np.linspace(lo - pad, hi + pad, 200)
    ax.hist(obs, bins=60, range=(xs[0], xs[-1]), density=True, color="C0", alpha=0.5,
            label="data")
    rng = np.random.default_rng(seed)
    ss = sig if sig.size <= 400 else rng.choice(sig, 400, replace=False)
    counting, model.count_clamped = model.count_clamped, False  # not the user's evaluations
    try:
        with torch.no_grad():
            dens = model.density(torch.from_numpy(xs)[:, None], torch.from_numpy(ss)[None, :])
    finally:
        model.count_clamped = counting
    ax.plot(xs, dens.mean(dim=1).numpy(), color="C3", lw=1.5, label="model")
    ax.legend(fontsize=7)
