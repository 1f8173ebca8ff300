"""The signal-dependent Gaussian-mixture pixel noise model p(x | s) (docs/noise_models.md,
"The model") and its multi-channel wrapper.

One :class:`GaussianMixtureNoiseModel` describes one channel: ``K`` Gaussians whose means,
variances and weight logits are polynomials with ``D`` coefficients of the normalised signal
``ŝ = (s - s_min) / (s_max - s_min)``, stored as one ``(3K, D)`` weight matrix (rows: means,
log-variance coefficients, weight logits). The log-likelihood is a ``logsumexp`` over the
components in float32 or wider (docs/noise_models.md, "Numerical safeguards"); ``ŝ`` is clamped
to ``[0, 1]`` and the clamped pixels are counted (:meth:`GaussianMixtureNoiseModel.clamp_counts`).
The weights are frozen (``requires_grad=False``): :func:`musplit.noise.fit_noise_model`
optimises copies and writes the result in. :class:`MultiChannelNoiseModel` applies model ``c``
to channel ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from musplit.errors import InputError

__all__ = ["ClampCounts", "GaussianMixtureNoiseModel", "MultiChannelNoiseModel"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ClampCounts:
    """How many signal values a model evaluated, and how many lay outside its fitted range
    (and were clamped to it for the mixture's shape; docs/noise_models.md, "Numerical
    safeguards")."""

    evaluated: int
    below: int
    above: int

    @property
    def fraction(self) -> float:
        """Fraction of evaluated signals outside ``[min_signal, max_signal]`` (0 when none)."""
        return (self.below + self.above) / self.evaluated if self.evaluated else 0.0


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or wider when an input is wider (never half precision)."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class GaussianMixtureNoiseModel(nn.Module):
    """p(observation | signal) of one channel, in the raw intensity units it was fitted in.

    Parameters
    ----------
    weight : array-like, shape (3K, D)
        Rows ``[0, K)`` mean coefficients, ``[K, 2K)`` log-variance coefficients (each
        exponentiated before use, so every variance coefficient is positive), ``[2K, 3K)``
        weight-logit coefficients.
    min_signal, max_signal : float
        The fitted signal range (``s_min < s_max``), which normalises the signal.
    min_variance : float
        Floor of every component's **variance** (the reference files call it ``min_sigma``).
    channel_name : str, optional
        Name of the channel the model was fitted on.
    observation_range : (float, float), optional
        Min and max of the observations it was fitted on (:func:`musplit.noise.check_range`).
    """

    def __init__(self, weight, min_signal: float, max_signal: float, min_variance: float, *,
                 channel_name: str | None = None,
                 observation_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        w = torch.as_tensor(weight)
        if not w.is_floating_point():
            w = w.to(torch.float32)
        if w.ndim != 2 or w.shape[0] == 0 or w.shape[0] % 3 or w.shape[1] == 0:
            raise InputError(f"noise-model weights must have shape (3K, D), got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise InputError("noise-model weights contain NaN or Inf")
        values = (min_signal, max_signal, min_variance)
        if not all(math.isfinite(float(v)) for v in values):
            raise InputError(f"noise-model min/max signal and variance floor must be finite, got "
                             f"{values}")
        if not float(max_signal) > float(min_signal):
            raise InputError(f"noise-model max_signal ({max_signal}) must exceed min_signal "
                             f"({min_signal})")
        if float(min_variance) < 0:
            raise InputError(f"noise-model variance floor must be >= 0, got {min_variance}")
        self.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        self.min_signal = float(min_signal)
        self.max_signal = float(max_signal)
        self.min_variance = float(min_variance)
        self.channel_name = channel_name
        self.observation_range = (None if observation_range is None
                                  else (float(observation_range[0]), float(observation_range[1])))
        #: A :class:`musplit.noise.FitReport` when the model came from a fit, else None.
        self.fit_report = None
        #: The ``format_version`` of the file the model was loaded from (0: a reference file
        #: without musplit fields); None when it was not loaded.
        self.file_format_version: int | None = None
        #: Count signals outside the fitted range in :meth:`log_likelihood` (see
        #: :meth:`clamp_counts`); figures and checks turn it off while they evaluate.
        self.count_clamped = True
        for name in ("_n_evaluated", "_n_below", "_n_above"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64), persistent=False)

    @property
    def n_gaussian(self) -> int:
        """K, the number of Gaussian components."""
        return self.weight.shape[0] // 3

    @property
    def n_coeff(self) -> int:
        """D, the number of polynomial coefficients (D = 2: linear in the signal)."""
        return self.weight.shape[1]

    def freeze(self) -> GaussianMixtureNoiseModel:
        """Stop gradients to the weights (the state after a fit); returns self."""
        self.weight.requires_grad_(False)
        return self

    # -- the mixture ---------------------------------------------------------------------
    def mixture(self, signal: Tensor, dtype: torch.dtype | None = None, *,
                weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Component means, variances and log-weights at ``signal``, each ``signal.shape + (K,)``.

        The polynomials are evaluated at the clamped normalised signal; the means are then
        shifted so the mixture mean is the (unclamped) signal itself: ``E[x | s] = s``.
        ``weight`` replaces the model's weights (same shape; the fit passes the ones it
        optimises).
        """
        w = self.weight if weight is None else weight
        s = torch.as_tensor(signal)
        dtype = dtype or _compute_dtype(s, w)
        s = s.to(dtype)
        k, d = self.n_gaussian, self.n_coeff
        span = self.max_signal - self.min_signal
        sn = (s.clamp(self.min_signal, self.max_signal) - self.min_signal) / span
        powers = sn.unsqueeze(-1) ** torch.arange(d, dtype=dtype, device=s.device)
        w = w.to(device=s.device, dtype=dtype)
        coef = torch.cat([w[:k], w[k:2 * k].exp(), w[2 * k:]], dim=0)  # (3K, D)
        mean, var, logit = (powers @ coef.T).split(k, dim=-1)
        var = var.clamp_min(self.min_variance)
        log_w = torch.log_softmax(logit, dim=-1)
        mean = mean - (log_w.exp() * mean).sum(-1, keepdim=True) + s.unsqueeze(-1)
        return mean, var, log_w

    def log_likelihood(self, observation, signal, *, weight: Tensor | None = None) -> Tensor:
        """Elementwise ``log p(observation | signal)`` (shapes broadcast), float32 or wider.

        Computed as ``logsumexp_k(log π_k + log N(x; μ_k, σ_k²))``: finite for far outliers,
        with a useful gradient. Signals outside the fitted range are clamped for the mixture's
        shape and counted (:meth:`clamp_counts`). ``weight``: as in :meth:`mixture`.
        """
        x = torch.as_tensor(observation)
        s = torch.as_tensor(signal)
        dtype = _compute_dtype(x, s, self.weight if weight is None else weight)
        if self.count_clamped:
            self._count(s)
        mean, var, log_w = self.mixture(s, dtype, weight=weight)
        x = x.to(device=mean.device, dtype=dtype).unsqueeze(-1)
        log_n = -0.5 * (_LOG_2PI + var.log() + (x - mean) ** 2 / var)
        return torch.logsumexp(log_w + log_n, dim=-1)

    forward = log_likelihood

    def density(self, observation, signal) -> Tensor:
        """``p(observation | signal)`` (the exponential of :meth:`log_likelihood`)."""
        return self.log_likelihood(observation, signal).exp()

    def moments(self, signal) -> tuple[Tensor, Tensor]:
        """Mixture mean (= the signal) and variance ``Var[x | s]`` at ``signal``."""
        mean, var, log_w = self.mixture(signal)
        w = log_w.exp()
        m = (w * mean).sum(-1)
        return m, (w * (var + (mean - m.unsqueeze(-1)) ** 2)).sum(-1)

    @torch.no_grad()
    def sample(self, signal, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x ~ p(x | s)`` per element of ``signal`` (a component by inverting the
        cumulative weights, then a Gaussian sample)."""
        mean, var, log_w = self.mixture(signal)
        cum = log_w.exp().cumsum(-1)
        u = torch.rand(cum.shape[:-1] + (1,), generator=generator, dtype=cum.dtype,
                       device=cum.device)
        k = (u > cum).sum(-1, keepdim=True).clamp_max(self.n_gaussian - 1)
        z = torch.randn(cum.shape[:-1], generator=generator, dtype=cum.dtype, device=cum.device)
        return mean.gather(-1, k).squeeze(-1) + var.gather(-1, k).squeeze(-1).sqrt() * z

    # -- signals outside the fitted range ------------------------------------------------
    @torch.no_grad()
    def _count(self, s: Tensor) -> None:
        # Kept as tensors on the model's device: no host synchronisation per call.
        dev = self._n_evaluated.device
        self._n_evaluated += s.numel()
        self._n_below += (s < self.min_signal).sum().to(dev)
        self._n_above += (s > self.max_signal).sum().to(dev)

    def clamp_counts(self) -> ClampCounts:
        """Signals evaluated since construction (or :meth:`reset_clamp_counts`), and how many
        lay below / above the fitted range."""
        return ClampCounts(int(self._n_evaluated), int(self._n_below), int(self._n_above))

    def reset_clamp_counts(self) -> None:
        """Zero the counts of :meth:`clamp_counts`."""
        for b in (self._n_evaluated, self._n_below, self._n_above):
            b.zero_()

    def extra_repr(self) -> str:
        name = f"channel={self.channel_name!r}, " if self.channel_name is not None else ""
        return (f"{name}n_gaussian={self.n_gaussian}, n_coeff={self.n_coeff}, "
                f"signal=[{self.min_signal:.6g}, {self.max_signal:.6g}], "
                f"min_variance={self.min_variance:.6g}")


class MultiChannelNoiseModel(nn.Module):
    """One :class:`GaussianMixtureNoiseModel` per channel: model ``c`` scores channel ``c``.

    Parameters
    ----------
    models : sequence of GaussianMixtureNoiseModel
        In channel order.
    n_channels : int, optional
        The number of channels the models are meant for; a different count is refused.
    """

    def __init__(self, models: Sequence[GaussianMixtureNoiseModel],
                 n_channels: int | None = None) -> None:
        super().__init__()
        models = list(models)
        if not models:
            raise InputError("a multi-channel noise model needs at least one channel model")
        if n_channels is not None and len(models) != n_channels:
            raise InputError(f"{len(models)} noise model(s) for {n_channels} channel(s): give "
                             "one noise model per channel")
        self.models = nn.ModuleList(models)

    def __len__(self) -> int:
        return len(self.models)

    def _check(self, t: Tensor, channel_dim: int) -> None:
        if t.ndim == 0 or t.shape[channel_dim] != len(self.models):
            raise InputError(f"{len(self.models)} noise model(s) for an input of shape "
                             f"{tuple(t.shape)} (channel axis {channel_dim}): give one noise "
                             "model per channel")

    def log_likelihood(self, observation, signal, channel_dim: int = 1) -> Tensor:
        """Elementwise log-likelihood, channel ``c`` under model ``c``; both inputs have the
        channel axis ``channel_dim`` (``(B, C, H, W)`` by default), same shape."""
        x, s = torch.as_tensor(observation), torch.as_tensor(signal)
        self._check(x, channel_dim)
        self._check(s, channel_dim)
        parts = [m.log_likelihood(xc, sc) for m, xc, sc in
                 zip(self.models, x.unbind(channel_dim), s.unbind(channel_dim), strict=True)]
        return torch.stack(parts, dim=channel_dim)

    forward = log_likelihood

    @torch.no_grad()
    def sample(self, signal, channel_dim: int = 1,
               generator: torch.Generator | None = None) -> Tensor:
        """Noisy observations of ``signal``, channel ``c`` drawn from model ``c``."""
        s = torch.as_tensor(signal)
        self._check(s, channel_dim)
        return torch.stack([m.sample(sc, generator) for m, sc in
                            zip(self.models, s.unbind(channel_dim), strict=True)],
                           dim=channel_dim)

    def clamp_counts(self) -> list[ClampCounts]:
        """:meth:`GaussianMixtureNoiseModel.clamp_counts` of every channel."""
        return [m.clamp_counts() for m in self.models]
