"""Clipping and normalisation statistics (docs/data.md, "Normalisation").

All statistics are computed on the training split only and kept as plain data
(:class:`NormStats`), so a checkpoint can carry them and a prediction can be made without the
training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from musplit.errors import InputError

#: The quantiles of the training mixes recorded as their brightness (``NormStats.extra`` keys
#: ``input_q99`` and ``input_q999``): prediction compares an image's with them. Their minimum
#: is recorded too (``input_min``): prediction checks an image's range against it.
BRIGHTNESS_QUANTILES = (0.99, 0.999)


@dataclass
class NormStats:
    """Normalisation constants of one training set.

    Attributes
    ----------
    clip_max : float or list of float
        Upper clip value (the training quantile); one per target channel when
        ``channelwise`` quantiles were asked for.
    input_mean, input_std : float
        Statistics applied to the input mix, identical at every LC scale.
    target_mean, target_std : list of float
        Per target channel, in target order.
    alpha : list of float
        Mixing weights of the input: ``x = sum_k alpha_k * x_k`` (default ``1/T`` each).
    input_is_sum : bool
        The input is ``sum_k x_k`` instead of the weighted average
        (docs/method.md, "Superposition model").
    quantile : float
        The quantile used for ``clip_max``.
    """

    clip_max: float | list[float]
    input_mean: float
    input_std: float
    target_mean: list[float]
    target_std: list[float]
    alpha: list[float]
    input_is_sum: bool = False
    quantile: float = 0.995
    extra: dict = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return len(self.target_mean)

    def to_dict(self) -> dict:
        """JSON-serialisable dictionary (plain floats and lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NormStats:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    # -- transforms ----------------------------------------------------------------------
    def _per_channel(self, values, ndim: int, axis: int) -> np.ndarray:
        shape = [1] * ndim
        shape[axis] = -1
        return np.asarray(values, dtype=np.float32).reshape(shape)

    def clip(self, targets: np.ndarray, axis: int = -1) -> np.ndarray:
        """Clip target channels at ``clip_max`` (upper clip only, as the reference)."""
        if isinstance(self.clip_max, list):
            cmax = self._per_channel(self.clip_max, targets.ndim, axis)
        else:
            cmax = np.float32(self.clip_max)
        return np.minimum(targets, cmax).astype(np.float32, copy=False)

    def mix(self, targets: np.ndarray, axis: int = -1) -> np.ndarray:
        """The superimposed input of clipped targets: weighted average (or sum) over ``axis``."""
        w = np.ones(self.n_channels) if self.input_is_sum else np.asarray(self.alpha)
        w = self._per_channel(w, targets.ndim, axis)
        return np.sum(targets * w, axis=axis, dtype=np.float32)

    def normalize_input(self, x: np.ndarray) -> np.ndarray:
        """``(x - m_in) / s_in`` in float32."""
        return ((x - np.float32(self.input_mean)) / np.float32(self.input_std)).astype(
            np.float32, copy=False
        )

    def denormalize_input(self, x: np.ndarray) -> np.ndarray:
        return (x * np.float32(self.input_std) + np.float32(self.input_mean)).astype(np.float32)

    def normalize_target(self, t: np.ndarray, axis: int = -1) -> np.ndarray:
        """``(t_k - m_k) / s_k`` per channel along ``axis``."""
        m = self._per_channel(self.target_mean, t.ndim, axis)
        s = self._per_channel(self.target_std, t.ndim, axis)
        return ((t - m) / s).astype(np.float32, copy=False)

    def denormalize_target(self, t: np.ndarray, axis: int = -1) -> np.ndarray:
        """Back to input intensity units: ``t_k * s_k + m_k``."""
        m = self._per_channel(self.target_mean, t.ndim, axis)
        s = self._per_channel(self.target_std, t.ndim, axis)
        return (t * s + m).astype(np.float32, copy=False)

    def denormalize_std(self, std: np.ndarray, axis: int = -1) -> np.ndarray:
        """A standard deviation in normalised units, back to intensity units (``std * s_k``)."""
        s = self._per_channel(self.target_std, std.ndim, axis)
        return (std * s).astype(np.float32, copy=False)


def _training_frames(targets, train_indices: Sequence[int] | None, exclude=()):
    """Training pixels frame by frame: ``(H, W, T)`` frames, or ``(n, T)`` pixel lists of the
    frames that have held-out regions (``exclude``: ``Region``-like, with frame, y, x)."""
    n = len(targets) if isinstance(targets, (list, tuple)) else targets.shape[0]
    idx = range(n) if train_indices is None else list(train_indices)
    if len(idx) == 0:
        raise InputError("the training split is empty: no frames to compute statistics from")
    held: dict[int, list] = {}
    for r in exclude or ():
        held.setdefault(int(r.frame), []).append(r)
    for i in idx:
        frame = np.asarray(targets[i], dtype=np.float32)
        if i in held:
            keep = np.ones(frame.shape[:2], dtype=bool)
            for r in held[i]:
                keep[r.y[0]:r.y[1], r.x[0]:r.x[1]] = False
            frame = frame[keep]
        yield frame


def compute_stats(
    targets,
    train_indices: Sequence[int] | None = None,
    *,
    quantile: float = 0.995,
    alpha: Sequence[float] | None = None,
    channelwise_quantile: bool = False,
    input_is_sum: bool = False,
    exclude=(),
) -> NormStats:
    """Compute :class:`NormStats` from the training frames (docs/data.md, "Normalisation").

    Parameters
    ----------
    targets : array-like, shape (N, H, W, T), or list of (H_i, W_i, T) arrays
        Target channels; anything indexable by frame (a memory map or lazy source) works, and
        only the training frames are read, one at a time. Frames may differ in size.
    train_indices : sequence of int, optional
        Training frames (default: all).
    quantile : float
        Upper clip quantile over all training pixels of all target channels pooled
        (linear interpolation). 1.0 disables clipping.
    alpha : sequence of float, optional
        Mixing weights, default ``1/T`` each; must sum to 1.
    channelwise_quantile : bool
        One clip value per channel instead of the pooled one.
    input_is_sum : bool
        Input is the sum of the channels, normalised with mean ``sum m_k`` and std
        ``sqrt(sum s_k^2)`` (docs/method.md, "Superposition model").
    exclude : sequence of Region, optional
        Held-out regions of training frames (a spatial split): their pixels are left out.

    Returns
    -------
    NormStats
    """
    if not 0.0 < quantile <= 1.0:
        raise InputError(f"clip quantile must be in (0, 1], got {quantile}")
    if isinstance(targets, (list, tuple)):
        if not targets or any(len(f.shape) != 3 for f in targets):
            raise InputError("targets must be a list of (H, W, T) frames")
        t = targets[0].shape[-1]
    else:
        if len(targets.shape) != 4:
            raise InputError(
                f"targets must have shape (N, H, W, T), got {tuple(targets.shape)}")
        t = targets.shape[-1]
    if alpha is None:
        alpha = [1.0 / t] * t
    alpha = [float(a) for a in alpha]
    if len(alpha) != t:
        raise InputError(f"{len(alpha)} alpha weights given for {t} target channels")
    if abs(sum(alpha) - 1.0) > 1e-6:
        raise InputError(f"alpha weights must sum to 1, got {alpha}")

    frames = list(_training_frames(targets, train_indices, exclude))
    if all(f.shape == frames[0].shape for f in frames):
        stack = np.stack(frames)  # (n, H, W, T) float32, training frames only
    else:  # frames of different sizes, or with held-out pixels: one (pixels, T) list
        stack = np.concatenate([f.reshape(-1, t) for f in frames])
    del frames
    if not np.isfinite(stack).all():
        raise InputError("training targets contain NaN or Inf pixels")
    if channelwise_quantile:
        clip = [float(np.quantile(stack[..., k], quantile)) for k in range(t)]
        clipped = np.minimum(stack, np.asarray(clip, dtype=np.float32))
    else:
        clip = float(np.quantile(stack, quantile))
        clipped = np.minimum(stack, np.float32(clip))
    del stack
    # float64 accumulation (docs/data.md, "Normalisation"), channel by channel to bound memory.
    means, stds = [], []
    for k in range(t):
        ch = clipped[..., k]
        m = float(np.mean(ch, dtype=np.float64))
        means.append(m)
        stds.append(float(np.sqrt(np.mean((ch.astype(np.float64) - m) ** 2))))
    if input_is_sum:
        in_mean = float(sum(means))
        in_std = float(np.sqrt(sum(s * s for s in stds)))
    else:
        # The reference normalises the input with the pooled statistics of both channels.
        in_mean = float(np.mean(means))
        pooled_var = float(
            np.mean([s * s + (m - in_mean) ** 2 for m, s in zip(means, stds, strict=True)])
        )
        in_std = float(np.sqrt(pooled_var))
    if in_std <= 0 or any(s <= 0 for s in stds):
        raise InputError("training targets are constant: their standard deviation is 0")
    # The brightness of the training mixes (99th and 99.9th percentiles, a few million pixels
    # suffice): prediction compares a user's image with it (predict.brightness_factor).
    flat = clipped.reshape(-1, t)
    w = np.ones(t) if input_is_sum else np.asarray(alpha)
    w = w.astype(np.float32)
    mix = flat[:: max(1, len(flat) // 4_000_000)] @ w
    # ... and their minimum, over every pixel (prediction checks an image's range against it).
    step = 1 << 22
    low = min(float((flat[i : i + step] @ w).min()) for i in range(0, len(flat), step))
    del clipped, flat
    q99, q999 = (float(v) for v in np.quantile(mix, BRIGHTNESS_QUANTILES))
    return NormStats(
        clip_max=clip,
        input_mean=in_mean,
        input_std=in_std,
        target_mean=means,
        target_std=stds,
        alpha=alpha,
        input_is_sum=input_is_sum,
        quantile=quantile,
        extra={"input_q99": q99, "input_q999": q999, "input_min": low},
    )
