"""Mixing weights of the synthetic input: fixed, or drawn per training patch from ranges.

The input of a training patch is ``sum_c w_c y_c`` of the clipped target channels ``y_c``
(docs/data.md, "Input formation"). The weights come from one of:

* ``data.alpha``: fixed weights summing to 1 (default ``1/C`` each);
* ``data.alpha_range = (lo, hi)``: two channels only; per patch ``a ~ U(lo, hi)`` for channel
  0 and ``1 - a`` for channel 1;
* ``data.alpha_ranges = [(lo_0, hi_0), ..., (lo_{C-1}, hi_{C-1})]``: any number of channels;
  per patch independent ``u_c ~ U(lo_c, hi_c)``, then ``w_c = u_c / sum_k u_k``.

Why ``alpha_ranges`` normalises. MicroSplit (Nature Methods 2026) draws one independent
weight per channel in the same way, so that a model trained once splits inputs whose channels
were superimposed at other relative intensities; its input is the plain weighted sum, so
there the ranges also vary the overall brightness. In musplit the fixed ``alpha`` already
sums to 1: the input is a weighted *average* of the channels, normalised with statistics
pooled over the channels, and prediction compares an image's brightness with the training
mixes' (``predict.brightness``). Normalising the drawn weights keeps all three true, so the
ranges vary only the *ratio* between the channels, and a change of overall gain stays what
``--input-scale`` and ``--brightness match`` handle. With two channels the drawn ratio
``u_0 / (u_0 + u_1)`` is not uniform (it gathers around the ratio of the midpoints); use
``alpha_range`` for a uniform one.

The ratio a trained model **assumes** is its statistics' ``alpha`` (``NormStats.alpha``): it
mixes the channels of ``musplit predict --mix-channels`` and ``musplit calibrate``, and it is
the weights of ``predict.consistent``. A range-trained run sets it to the midpoints of its
ranges, normalised to sum to 1 (:func:`assumed_weights`); :func:`mixing_summary` reports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from musplit.errors import InputError

__all__ = ["assumed_weights", "check_ranges", "draw_weights", "mixing_line", "mixing_summary",
           "pair_weights"]


def check_ranges(ranges, n_channels: int | None = None, name: str = "alpha_ranges"
                 ) -> list[tuple[float, float]]:
    """``ranges`` as a list of ``(lo, hi)`` floats, checked: ``0 <= lo <= hi`` (finite), some
    ``hi > 0``, and (when ``n_channels`` is given) one pair per channel. A bad value is an
    :class:`~musplit.errors.InputError` naming ``name``."""
    try:
        pairs = [(float(lo), float(hi)) for lo, hi in ranges]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of (lo, hi) pairs, one per target channel, "
                         f"got {ranges!r}") from None
    if n_channels is not None and len(pairs) != n_channels:
        raise InputError(f"{name} has {len(pairs)} (lo, hi) pair{'s' * (len(pairs) != 1)} for "
                         f"{n_channels} target channels: give one per channel")
    if len(pairs) < 2:
        raise InputError(f"{name} needs one (lo, hi) pair per target channel (at least two), "
                         f"got {len(pairs)}")
    for c, (lo, hi) in enumerate(pairs):
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise InputError(f"{name}: channel {c}'s range ({lo:g}, {hi:g}) must satisfy "
                             "0 <= lo <= hi")
    if not any(hi > 0 for _, hi in pairs):
        raise InputError(f"{name}: every range is (0, 0), so every weight would be 0")
    return pairs


def draw_weights(rng: np.random.Generator, k: int, ranges: Sequence[tuple[float, float]],
                 *, normalise: bool = True) -> np.ndarray:
    """``(k, C)`` float32 weights: ``u_c ~ U(lo_c, hi_c)`` independently per row and channel,
    then (``normalise``) divided by their row sum. ``rng`` draws ``k * C`` uniforms, row by
    row. A row whose draws are all 0 (possible only where some ``lo_c = 0``) gets equal
    weights."""
    lo = np.asarray([r[0] for r in ranges], dtype=np.float64)
    hi = np.asarray([r[1] for r in ranges], dtype=np.float64)
    u = rng.uniform(lo, hi, size=(int(k), len(lo)))
    if normalise:
        s = u.sum(axis=1, keepdims=True)
        zero = s[:, 0] <= 0
        u[zero] = 1.0
        s[zero] = len(lo)
        u = u / s
    return u.astype(np.float32)


def pair_weights(a: np.ndarray) -> np.ndarray:
    """``alpha_range``'s per-patch weight ``a`` of channel 0 as ``(k, 2)`` weights
    ``(a, 1 - a)``."""
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    return np.stack([a, np.float32(1) - a], axis=1)


def assumed_weights(alpha=None, alpha_range=None, alpha_ranges=None,
                    n_channels: int | None = None) -> list[float] | None:
    """The fixed weights a run's statistics record (``NormStats.alpha``): ``alpha`` when given;
    else the midpoint of ``alpha_range`` for channel 0 (channel 1: one minus it), or the
    midpoints of ``alpha_ranges`` normalised to sum to 1; else None (``1/C`` each)."""
    if alpha is not None:
        return [float(a) for a in alpha]
    if alpha_ranges is not None:
        mid = [(float(lo) + float(hi)) / 2 for lo, hi in alpha_ranges]
        s = sum(mid)
        return [m / s for m in mid] if s > 0 else [1.0 / len(mid)] * len(mid)
    if alpha_range is not None:
        m = (float(alpha_range[0]) + float(alpha_range[1])) / 2
        return [m, 1.0 - m]
    return None


def mixing_summary(data_config, stats) -> dict:
    """What a trained model assumes about the mixing ratio, for logs and file metadata.

    Parameters
    ----------
    data_config : musplit.config.DataConfig
        The run's data settings (``alpha``, ``alpha_range``, ``alpha_ranges``,
        ``input_is_sum``).
    stats : NormStats or None
        The model's statistics; their ``alpha`` is the ratio prediction uses.

    Returns
    -------
    dict
        ``input``: ``"sum"`` (the input is the plain sum), ``"fixed"`` (trained on fixed
        weights), ``"range"`` (``alpha_range``) or ``"ranges"`` (``alpha_ranges``);
        ``assumed``: the weights, one per channel (``stats.alpha``; None without statistics);
        ``trained_on``: the ranges (``"ranges"``: ``[[lo, hi], ...]``; ``"range"``: the two
        channels' ``[[lo, hi], [1 - hi, 1 - lo]]``), else None.
    """
    d = data_config
    ranges = getattr(d, "alpha_ranges", None)
    assumed = None if stats is None else [float(a) for a in stats.alpha]
    if stats is not None and stats.input_is_sum:
        return {"input": "sum", "assumed": [1.0] * stats.n_channels, "trained_on": None}
    if ranges is not None:
        return {"input": "ranges", "assumed": assumed,
                "trained_on": [[float(lo), float(hi)] for lo, hi in ranges]}
    if d.alpha_range is not None:
        lo, hi = (float(v) for v in d.alpha_range)
        return {"input": "range", "assumed": assumed, "trained_on": [[lo, hi], [1 - hi, 1 - lo]]}
    return {"input": "fixed", "assumed": assumed, "trained_on": None}


def mixing_line(summary: dict, channel_names: Sequence[str] | None = None) -> str:
    """One line saying the ratio a model assumes, e.g. ``assumed mixing ratio: ch0 0.50, ch1
    0.50 (trained on ranges ch0 [0.2, 0.8], ch1 [0.2, 0.8], normalised to sum 1 per patch)``."""
    w = summary.get("assumed")
    if w is None:
        return "assumed mixing ratio: unknown (the model carries no normalisation statistics)"
    names = list(channel_names) if channel_names else [f"ch{c}" for c in range(len(w))]
    ratio = ", ".join(f"{n} {v:.2f}" for n, v in zip(names, w, strict=False))
    kind, tr = summary.get("input"), summary.get("trained_on")
    if kind == "sum":
        return f"assumed mixing: the plain sum of the channels ({ratio}; data.input_is_sum)"
    if kind in ("range", "ranges") and tr:
        spans = ", ".join(f"{n} [{lo:g}, {hi:g}]" for n, (lo, hi) in zip(names, tr, strict=False))
        how = ("normalised to sum 1 per patch" if kind == "ranges"
               else "drawn for the first channel, the second gets one minus it")
        return (f"assumed mixing ratio: {ratio} (trained on ranges {spans}, {how}: inputs "
                "mixed at other ratios within them split as well)")
    return (f"assumed mixing ratio: {ratio} (trained on this fixed ratio only: inputs mixed at "
            "another ratio may split worse)")
