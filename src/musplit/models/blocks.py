"""Plain building blocks of the LadderVAE: geometry, convolutions, residual blocks, merges and
the stochastic layer (docs/method.md, "LadderVAE": building blocks, input branches,
stochastic block).

Module attribute names follow musplit's canonical names (docs/checkpoints.md, "Checkpoint layout":
``bn1``, ``conv1``, ``bn2``, ``conv2``, ``gate.conv``, ``proj``, ``res``,
``post_conv``, ...), so that the map to and from reference checkpoints
(:mod:`musplit.checkpoints.reference`) is a pure renaming.

The stochastic layer is a plain function of tensors, :func:`gaussian_latent`: the posterior and
prior parameters come in as conv outputs, the sample and the per-sample KL go out. It builds no
distribution objects and computes the stable variance once per tensor.

The hand-written autograd functions these blocks train through (the fused latent layer, the
memory-lean ``conv(ELU(BatchNorm(x)))``, the gate, the cheaper convolution bias gradient) are
in :mod:`musplit.models.fused`; they are exact equivalents of the plain ops and fall back to
stock PyTorch where they do not apply. Their names are re-exported here, where they used to be.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musplit.models import fused
from musplit.models.fused import (  # noqa: F401 - re-exported: imported from here by tests
    CHUNK_ELEMENTS,
    LATENT_LOGVAR_CLIP,
    VARIANCE_EPS,
    GaussianLatent,
    _autocast_on,
    _batch_slices,
    _bn_affine,
    _BNELUConvFn,
    _chunked_latent,
    _ConvFn,
    _dvar_dell,
    _GateFn,
    _latent_backward,
    _latent_forward,
    _native_elu_bn_backward,
    _wide,
    bn_elu_conv,
    conv2d,
    stable_variance,
)

__all__ = [
    "Conv2d",
    "Gate",
    "GaussianLatent",
    "Merge",
    "ResBlock",
    "Stem",
    "StochasticLayer",
    "centre_crop",
    "centre_pad",
    "conv2d",
    "fit_prior",
    "gaussian_latent",
    "stable_variance",
]

#: Settings of :mod:`musplit.models.fused` that used to live here: setting one on this module
#: (``blocks.CHUNK_ELEMENTS = n``, as the tests do) sets it where it is read.
_FORWARDED = frozenset({"CHUNK_ELEMENTS"})


class _BlocksModule(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _FORWARDED:
            setattr(fused, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _BlocksModule


# -- geometry ------------------------------------------------------------------------------
def centre_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop the last two axes of ``x`` to ``size`` (a view, no copy).

    The first kept index is ``(n - m) // 2``, the reference's convention (docs/method.md, "Building
    blocks"). Axes already no larger than the target are left alone.
    """
    h, w = x.shape[-2:]
    th, tw = min(size[0], h), min(size[1], w)
    if (th, tw) == (h, w):
        return x
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


def centre_pad(x: Tensor, size: tuple[int, int], mode: str = "constant") -> Tensor:
    """Centre pad the last two axes of ``x`` to ``size``: ``(m - n) // 2`` before, rest after.

    ``mode`` is ``"constant"`` (zeros; the LC merge and input padding) or ``"replicate"``
    (edge padding of a top prior that is too small, docs/method.md, "LadderVAE").
    """
    h, w = x.shape[-2:]
    dh, dw = max(size[0] - h, 0), max(size[1] - w, 0)
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode=mode)


def fit_prior(prior: Tensor, size: tuple[int, int]) -> Tensor:
    """Fit the learned top prior ``(1, 2Z, h, w)`` to a latent of spatial ``size``.

    Centre crop where it is larger (docs/method.md, "Top-down pass and stochastic layer" step 4)
    and edge-pad where it
    is smaller (docs/method.md, "LadderVAE": evaluation at another patch size, a
    documented musplit extension).
    """
    prior = centre_crop(prior, size)
    if tuple(prior.shape[-2:]) != tuple(size):
        prior = centre_pad(prior, size, mode="replicate")
    return prior


# -- convolution -----------------------------------------------------------------------------
class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` that trains through :func:`conv2d` (same parameters, names and
    results; only the bias gradient is computed more cheaply)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation,
                      self.groups)


# -- deterministic blocks ------------------------------------------------------------------
class Gate(nn.Module):
    """``Gate(F)``: 1x1 conv ``F -> 2F``, halves ``(a, g)``, output ``ELU(a) * sigmoid(g)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if torch.jit.is_tracing():  # a traced graph cannot hold an autograd.Function (docs/bmz.md)
            a, g = y.chunk(2, dim=1)
            return F.elu(a) * torch.sigmoid(g)
        return _GateFn.apply(y)


class ResBlock(nn.Module):
    """``Res(F)``: ``x + f(x)``, ``f = [BN, ELU, Conv3x3, Dropout2d] x 2`` (+ ``Gate``).

    Parameters
    ----------
    channels : int
        ``F``; input and output have shape ``(B, F, H, W)``.
    gated : bool
        Append a :class:`Gate` to ``f`` (docs/method.md, "Building blocks").
    batchnorm : bool
        Use BatchNorm2d (PyTorch defaults) before each ELU.
    dropout : float
        Channel dropout probability; the modules exist even at 0.
    kernel : int
        Kernel size of the two convolutions (odd; "same" padding).
    """

    def __init__(self, channels: int, *, gated: bool, batchnorm: bool = True,
                 dropout: float = 0.1, kernel: int = 3):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.conv1 = Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.drop1 = nn.Dropout2d(dropout, inplace=True)
        self.bn2 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.conv2 = Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.drop2 = nn.Dropout2d(dropout, inplace=True)
        self.gate = Gate(channels) if gated else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop1(bn_elu_conv(x, self.bn1, self.conv1))
        h = self.drop2(bn_elu_conv(h, self.bn2, self.conv2))
        if self.gate is not None:
            h = self.gate(h)
        # The gate (or dropout/conv) output is not needed by any backward: add in place.
        return h.add_(x)


class Stem(nn.Module):
    """Input branch: ``Conv kxk 1 -> F``, ELU, ungated :class:`ResBlock` (docs/method.md, "Lateral
    Contextualisation").

    ``kernel`` is 3 for the primary branch and 5 for the LC branches (their residual blocks
    keep 3x3 kernels).
    """

    def __init__(self, channels: int, *, kernel: int, batchnorm: bool, dropout: float,
                 in_channels: int = 1):
        super().__init__()
        self.conv = Conv2d(in_channels, channels, kernel, padding=kernel // 2)
        self.res = ResBlock(channels, gated=False, batchnorm=batchnorm, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W) -> (B, F, H, W)``."""
        return self.res(F.elu(self.conv(x), inplace=True))


class Merge(nn.Module):
    """``Merge(F)``: concatenate ``[a, b]`` (channels), 1x1 conv ``2F -> F``, gated Res.

    The concatenation is never materialised: the 1x1 convolution is split into its two input
    halves, which is the same linear map and keeps neither a ``2F`` copy nor, for the LC merge,
    a zero-padded copy of ``a`` alive for the backward pass. With ``pad_a`` the first input is
    centre zero-padded to the size of ``b`` first (the LC merge of docs/method.md, "LadderVAE");
    since a 1x1 convolution without bias maps zeros to zeros, padding its output is the same thing.
    """

    def __init__(self, channels: int, *, batchnorm: bool, dropout: float):
        super().__init__()
        self.proj = Conv2d(2 * channels, channels, 1)
        # Merges are gated whatever the `gated` setting (reference merge layers always are).
        self.res = ResBlock(channels, gated=True, batchnorm=batchnorm, dropout=dropout)

    def forward(self, a: Tensor, b: Tensor, pad_a: bool = False) -> Tensor:
        """Merge ``a (B, F, h, w)`` and ``b (B, F, H, W)`` into ``(B, F, H, W)``."""
        f = a.shape[1]
        w = self.proj.weight
        ya = F.conv2d(a, w[:, :f])
        if pad_a:
            ya = centre_pad(ya, tuple(b.shape[-2:]))
        return self.res(conv2d(b, w[:, f:], self.proj.bias).add_(ya))


# -- the stochastic layer ------------------------------------------------------------------
def gaussian_latent(q: Tensor, p: Tensor | None, eps: Tensor | None, *, kl: bool,
                    analytic: bool = False, clip: float = LATENT_LOGVAR_CLIP
                    ) -> tuple[Tensor, Tensor | None]:
    """Sample ``z ~ q`` and compute the per-sample KL of one level (docs/method.md, "Top-down pass
    and stochastic layer").

    Parameters
    ----------
    q : Tensor, shape (B, 2Z, H, W)
        Posterior parameters ``[μ_q, ℓ_q]`` (raw ``PostConv`` output).
    p : Tensor, shape (B or 1, 2Z, H, W), or None
        Prior parameters ``[μ_p, ℓ_p]``; needed only when ``kl`` is True.
    eps : Tensor, shape (B, Z, H, W), or None
        Standard normal noise; None means ``z = μ_q`` (the posterior mean, "mean" mode).
    kl : bool
        Compute the KL.
    analytic : bool
        Closed-form Gaussian KL instead of the one-sample Monte-Carlo estimate (parity).
    clip : float
        Upper clip of ℓ for both q and p.

    Returns
    -------
    z : Tensor, shape (B, Z, H, W)
    kl : Tensor, shape (B,), or None
        ``sum over (Z, H, W)`` of the elementwise KL, in nats; negative one-sample estimates
        are kept. None when ``kl`` is False.
    """
    z_dim = q.shape[1] // 2
    if kl and p is None:
        raise ValueError("the KL needs the prior parameters p")
    if eps is None:
        if not kl:
            return q[:, :z_dim], None
        eps = q.new_zeros(q[:, :z_dim].shape)  # KL at the posterior mean: the MC estimate, ε = 0
    if kl:
        return GaussianLatent.apply(q, p, eps, analytic, clip)
    if not (torch.is_grad_enabled() and q.requires_grad):
        return _chunked_latent(q, None, eps, analytic, clip)
    mu_q = q[:, :z_dim]
    return torch.addcmul(mu_q, stable_variance(q[:, z_dim:], clip).sqrt_(), eps), None


class StochasticLayer(nn.Module):
    """The convolutions of one latent level (docs/method.md, "Top-down pass and stochastic layer"):
    ``post_conv``, ``prior_conv``, ``out_conv``.

    Parameters
    ----------
    channels : int
        ``F``, the trunk width.
    z_dim : int
        ``Z``, latent channels.
    top : bool
        The top level has no ``prior_conv`` (its prior is a learned tensor).
    """

    def __init__(self, channels: int, z_dim: int, *, top: bool):
        super().__init__()
        self.z_dim = z_dim
        self.post_conv = Conv2d(channels, 2 * z_dim, 3, padding=1)
        self.prior_conv = None if top else Conv2d(channels, 2 * z_dim, 3, padding=1)
        self.out_conv = Conv2d(z_dim, channels, 3, padding=1)

    def posterior_mean(self, u: Tensor) -> Tensor:
        """``μ_q`` only: the first ``Z`` output channels of ``post_conv`` (HAE, docs/method.md,
        "Top-down pass and stochastic layer")."""
        w, b = self.post_conv.weight, self.post_conv.bias
        return conv2d(u, w[: self.z_dim], b[: self.z_dim], padding=1)

    def forward(self, u: Tensor, prior: Tensor | None, eps: Tensor | None, *, kl: bool,
                analytic: bool = False) -> tuple[Tensor, Tensor | None]:
        """``u (B, F, H, W)`` and prior parameters ``(B or 1, 2Z, H, W)`` to ``y (B, F, H, W)``.

        Returns ``(y, kl)`` with ``kl`` of shape ``(B,)`` or None, see :func:`gaussian_latent`.
        """
        z, kl_value = gaussian_latent(self.post_conv(u), prior, eps, kl=kl, analytic=analytic)
        return self.out_conv(z), kl_value
