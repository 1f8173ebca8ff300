"""The input's intensity scale against the training mixes: the clip value, the brightness check
and the range check.

A superimposed input is clipped where the training mixes were (:func:`input_clip`). Before a
prediction its brightness is compared with the training mixes' (:func:`brightness_factor`, on
pixels sampled by :func:`_sample_pixels`): an image at another brightness is refused, rescaled
or let through (``predict.brightness``). Then its range is compared with the training range
(:func:`check_range`): pixels far beyond the clip (which they are clipped to, so the split
saturates there) or far below the training minimum give a warning, or an error with
``strict_range``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from musplit.data.normalize import BRIGHTNESS_QUANTILES, NormStats
from musplit.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["BRIGHTNESS_MODES", "BRIGHTNESS_TOLERANCE", "RANGE_FACTOR", "RANGE_FRACTION",
           "brightness_factor", "check_range", "input_clip"]

# ---------------------------------------------------------------------------------------------
#: An image whose brightness (99.9th percentile) differs from the training mixes' by more than
#: this factor is refused (``predict.brightness = "check"``) or rescaled (``"match"``).
BRIGHTNESS_TOLERANCE = 2.0
BRIGHTNESS_MODES = ("check", "match", "off")
#: In normalised units, an input pixel beyond ``RANGE_FACTOR`` times the training clip, or below
#: the training minimum by as much as that lies above the clip (``RANGE_FACTOR - 1`` times the
#: clip), is outside the training range ...
RANGE_FACTOR = 3.0
#: ... and an image is when more than this fraction of its sampled pixels are (a few hot pixels
#: are not).
RANGE_FRACTION = 1e-3
#: Pixels sampled for the range check when the brightness check sampled none (it reuses the
#: brightness sample otherwise): fewer, so that streaming a large frame stays cheap.
RANGE_SAMPLE = 500_000


def _sample_pixels(read, n: int, h: int, w: int, budget: int = 4_000_000,
                   window: int = 128) -> np.ndarray:
    """Pixels for the brightness check: up to 8 frames evenly spaced, about ``budget`` pixels
    in all. A frame within its share is read whole; a larger one as a grid of ``window``-px
    windows spread evenly over it, so memory is set by the budget, not by the frame (the
    streaming path stays bounded). Sparse content (a few bright foci) is where a small sample
    misleads, so the sample is as large as the budget allows."""
    picks = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
    share = budget // len(picks)
    if h * w <= share:
        boxes = [(slice(0, h), slice(0, w))]
    else:
        wy, wx = min(h, window), min(w, window)
        g = max(2, int(math.sqrt(share / (wy * wx))))
        ys = np.unique(np.linspace(0, h - wy, g).round().astype(int))
        xs = np.unique(np.linspace(0, w - wx, g).round().astype(int))
        boxes = [(slice(y, y + wy), slice(x, x + wx)) for y in ys for x in xs]
    out = [np.asarray(read(int(i), ys, xs), dtype=np.float32).ravel()
           for i in picks for ys, xs in boxes]
    return np.concatenate(out)


def brightness_factor(pixels, stats: NormStats, mode: str = "check") -> float:
    """The factor that brings an image to the brightness of the training mixes.

    ``pixels`` is an array of the image's pixels, or a function that returns one (called only
    when there is something to compare with, so ``"off"`` and old checkpoints read nothing).

    The brightness is read at the 99th and 99.9th percentiles (after ``input_scale``) and
    compared with those recorded in ``stats.extra`` at training time. A wrong global scale
    (the sum given to a model trained on the mean, another detector gain, 8-bit against
    16-bit) moves both by the same factor; different content (a region with more or fewer
    sparse foci) moves mostly the top one. So the image counts as at another brightness only
    when every recorded quantile is off by more than :data:`BRIGHTNESS_TOLERANCE` in the same
    direction; the factor is their geometric mean. Then ``mode="check"`` raises
    :class:`InputError` with the reason and the fixes, ``mode="match"`` returns the factor (and
    logs it), ``mode="off"`` returns 1.0; otherwise 1.0 is returned. Quantiles at or below 0
    (an empty background) are not compared; checkpoints written before musplit recorded the
    training brightness are not checked.
    """
    if mode not in BRIGHTNESS_MODES:
        raise InputError(f"brightness must be one of {BRIGHTNESS_MODES}, got {mode!r}")
    extra = stats.extra or {}
    refs = [(q, extra.get(key)) for q, key in zip(BRIGHTNESS_QUANTILES,
                                                  ("input_q99", "input_q999"), strict=True)]
    refs = [(q, float(r)) for q, r in refs if r is not None and r > 0]
    if mode == "off" or not refs:
        return 1.0
    pixels = np.asarray(pixels() if callable(pixels) else pixels)
    if pixels.size == 0:
        return 1.0
    found = np.quantile(pixels, [q for q, _ in refs])
    pairs = [(q, float(v), r) for (q, r), v in zip(refs, found, strict=True) if v > 0]
    if not pairs:
        return 1.0  # an empty (all-zero) image: nothing to compare
    ratios = [v / r for _, v, r in pairs]
    brighter = all(x > BRIGHTNESS_TOLERANCE for x in ratios)
    dimmer = all(x < 1 / BRIGHTNESS_TOLERANCE for x in ratios)
    if not (brighter or dimmer):
        return 1.0
    r = float(np.exp(np.mean(np.log(ratios))))
    how = f"{r:.2f}x brighter" if r > 1 else f"{1 / r:.2f}x dimmer"
    seen = ", ".join(f"{100 * q:g}th percentile {v:.4g} vs {ref:.4g}" for q, v, ref in pairs)
    if mode == "match":
        log.warning("the image is %s than the mixes the model was trained on (%s): rescaled by "
                    "%.4g to the training brightness; the channels are returned in the image's "
                    "units", how, seen, 1 / r)
        return 1.0 / r
    hint = ""
    c = stats.n_channels
    if not stats.input_is_sum and abs(r - c) / c < 0.25:
        hint = (f"; the model was trained on the mean of its {c} channels, and a superimposed "
                f"acquisition records their sum (train with data.input_is_sum, or pass "
                f"--input-scale {1 / c:g})")
    raise InputError(
        f"the image is {how} than the mixes the model was trained on ({seen}){hint}; a split "
        "at another brightness is not reliable. Pass --brightness match (brightness='match') "
        "to rescale it to the training brightness, --input-scale to give the factor yourself, "
        "or --brightness off if the difference is real content")


def input_clip(stats: NormStats) -> float:
    """Upper clip for a superimposed input (docs/method.md, "Superposition model";
    docs/data.md, "Normalisation").

    A per-channel clip gives its maximum; a summed input (``input_is_sum``) is bounded by the
    sum of the channels' clips, as the mix of clipped training targets is.
    """
    c = stats.clip_max
    vals = [float(v) for v in c] if isinstance(c, (list, tuple)) else [float(c)] * stats.n_channels
    return float(sum(vals)) if stats.input_is_sum else float(max(vals))


def _training_range(stats: NormStats) -> tuple[float | None, float | None, float, float | None]:
    """``(lower, upper, clip, minimum)``: the bounds of :func:`check_range` in normalised input
    units (None: not checked), the normalised clip and training minimum (None: not recorded)."""
    m, s = float(stats.input_mean), float(stats.input_std)
    clip = (input_clip(stats) - m) / s if s > 0 else math.nan
    if not (math.isfinite(clip) and clip > 0):
        return None, None, clip, None
    low = (stats.extra or {}).get("input_min")
    minimum = (float(low) - m) / s if low is not None and math.isfinite(float(low)) else None
    lower = None if minimum is None else minimum - (RANGE_FACTOR - 1) * clip
    return lower, RANGE_FACTOR * clip, clip, minimum


def check_range(pixels, stats: NormStats, *, scale: float = 1.0, strict: bool = False) -> None:
    """Warn (or, with ``strict``, refuse) when an input lies outside the training range.

    ``pixels`` are sampled pixels of the image in its own units; the network receives them
    times ``scale`` (``input_scale`` and the brightness factor), before clipping. In normalised
    input units ``(x - input_mean) / input_std`` the training mixes reach at most the clip ``c``
    (:func:`input_clip`); the image is outside the training range when more than
    :data:`RANGE_FRACTION` of the pixels lie beyond :data:`RANGE_FACTOR` ``* c``, or below the
    training minimum (``stats.extra["input_min"]``, recorded by
    :func:`~musplit.data.normalize.compute_stats`; checkpoints without it are checked above
    only) by more than ``(RANGE_FACTOR - 1) * c``. Pixels above the clip are clipped to it, so
    there the split saturates. The message gives the numbers, in normalised units and in the
    image's, and what to do; it is logged as a warning.

    Raises
    ------
    InputError
        With ``strict``, when the image is outside the range.
    """
    lower, upper, clip, minimum = _training_range(stats)
    x = np.asarray(pixels)
    if upper is None or x.size == 0:
        return
    m, s = float(stats.input_mean), float(stats.input_std)

    def image_units(v: float) -> float:  # normalised -> the image's intensity units
        return (v * s + m) / scale

    def normalised(v: float) -> float:
        return (float(v) * scale - m) / s

    parts = []
    # Thresholds in the image's units: no normalised copy of the sample is made.
    above = np.count_nonzero(x > image_units(upper)) / x.size
    if above > RANGE_FRACTION:
        top = float(np.nanmax(x))
        parts.append(
            f"{100 * above:.3g}% of its sampled pixels are above {RANGE_FACTOR:g}x the "
            f"training clip (up to {normalised(top):.4g} in normalised units, intensity "
            f"{top:.4g}, against a clip of {clip:.4g}, intensity {image_units(clip):.4g}): they "
            "are clipped to it, so the split saturates there")
    below = 0.0 if lower is None else np.count_nonzero(x < image_units(lower)) / x.size
    if below > RANGE_FRACTION:
        bottom = float(np.nanmin(x))
        parts.append(
            f"{100 * below:.3g}% of its sampled pixels are below the training minimum by more "
            f"than {RANGE_FACTOR - 1:g}x the clip (down to {normalised(bottom):.4g} in "
            f"normalised units, intensity {bottom:.4g}, against a minimum of {minimum:.4g}, "
            f"intensity {image_units(minimum):.4g})")
    if not parts:
        return
    msg = (f"the image lies outside the model's training range: {'; '.join(parts)}. Check its "
           "units (--input-scale, --brightness match; input_scale=, brightness=) or train on "
           "data that covers this range")
    if strict:
        raise InputError(msg + " (refused: --strict-range, strict_range=True)")
    log.warning("%s; --strict-range (strict_range=True) refuses such an image", msg)
