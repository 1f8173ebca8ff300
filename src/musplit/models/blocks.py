"""Building blocks of the LadderVAE (spec/usplit.md sections 2.2, 2.3 and 2.6).

Module attribute names follow the canonical names of spec 12.3 (``bn1``, ``conv1``, ``bn2``,
``conv2``, ``gate.conv``, ``proj``, ``res``, ``post_conv``, ...), so that the map to and from
reference checkpoints (:mod:`musplit.models.official`) is a pure renaming.

The stochastic layer is a plain function of tensors, :func:`gaussian_latent`: the posterior and
prior parameters come in as conv outputs, the sample and the per-sample KL go out. It builds no
distribution objects, computes the stable variance once per tensor and, when gradients are
needed, runs as one fused autograd function that keeps only its three inputs for the backward
pass (spec 13.1 item 18: in Regular- and Deep-LC this layer used to dominate memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Gate",
    "GaussianLatent",
    "Merge",
    "ResBlock",
    "Stem",
    "StochasticLayer",
    "centre_crop",
    "centre_pad",
    "fit_prior",
    "gaussian_latent",
    "stable_variance",
]

#: Upper clip of the latent "log-variance" ℓ before the stable variance (spec 2.6 step 1).
LATENT_LOGVAR_CLIP = 20.0
#: Added to every latent variance (spec 2.6 step 3).
VARIANCE_EPS = 1e-6


# -- geometry ------------------------------------------------------------------------------
def centre_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop the last two axes of ``x`` to ``size`` (a view, no copy).

    The first kept index is ``(n - m) // 2``, the reference's convention (spec "Conventions").
    Axes already no larger than the target are left alone.
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
    (edge padding of a top prior that is too small, spec 2.11).
    """
    h, w = x.shape[-2:]
    dh, dw = max(size[0] - h, 0), max(size[1] - w, 0)
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode=mode)


def fit_prior(prior: Tensor, size: tuple[int, int]) -> Tensor:
    """Fit the learned top prior ``(1, 2Z, h, w)`` to a latent of spatial ``size``.

    Centre crop where it is larger (spec 2.6 step 4) and edge-pad where it is smaller (spec
    2.11: evaluation at another patch size, a documented musplit extension).
    """
    prior = centre_crop(prior, size)
    if tuple(prior.shape[-2:]) != tuple(size):
        prior = centre_pad(prior, size, mode="replicate")
    return prior


# -- deterministic blocks ------------------------------------------------------------------
class Gate(nn.Module):
    """``Gate(F)``: 1x1 conv ``F -> 2F``, halves ``(a, g)``, output ``ELU(a) * sigmoid(g)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.conv(x).chunk(2, dim=1)
        return F.elu(a) * torch.sigmoid(g)


class ResBlock(nn.Module):
    """``Res(F)``: ``x + f(x)``, ``f = [BN, ELU, Conv3x3, Dropout2d] x 2`` (+ ``Gate``).

    Parameters
    ----------
    channels : int
        ``F``; input and output have shape ``(B, F, H, W)``.
    gated : bool
        Append a :class:`Gate` to ``f`` (spec 2.2).
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
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.drop1 = nn.Dropout2d(dropout, inplace=True)
        self.bn2 = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.drop2 = nn.Dropout2d(dropout, inplace=True)
        self.gate = Gate(channels) if gated else None
        # ELU may overwrite the BatchNorm output (BN keeps its input, not its output, for
        # backward); without BN the ELU input is the block input, which the residual needs.
        self._elu_inplace = batchnorm

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop1(self.conv1(F.elu(self.bn1(x), inplace=self._elu_inplace)))
        h = self.drop2(self.conv2(F.elu(self.bn2(h), inplace=self._elu_inplace)))
        if self.gate is not None:
            h = self.gate(h)
        # The gate (or dropout/conv) output is not needed by any backward: add in place.
        return h.add_(x)


class Stem(nn.Module):
    """Input branch: ``Conv kxk 1 -> F``, ELU, ungated :class:`ResBlock` (spec 2.3).

    ``kernel`` is 3 for the primary branch and 5 for the LC branches (their residual blocks
    keep 3x3 kernels).
    """

    def __init__(self, channels: int, *, kernel: int, batchnorm: bool, dropout: float,
                 in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2)
        self.res = ResBlock(channels, gated=False, batchnorm=batchnorm, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W) -> (B, F, H, W)``."""
        return self.res(F.elu(self.conv(x), inplace=True))


class Merge(nn.Module):
    """``Merge(F)``: concatenate ``[a, b]`` (channels), 1x1 conv ``2F -> F``, gated Res.

    The concatenation is never materialised: the 1x1 convolution is split into its two input
    halves, which is the same linear map and keeps neither a ``2F`` copy nor, for the LC merge,
    a zero-padded copy of ``a`` alive for the backward pass. With ``pad_a`` the first input is
    centre zero-padded to the size of ``b`` first (the LC merge of spec 2.4); since a 1x1
    convolution without bias maps zeros to zeros, padding its output is the same thing.
    """

    def __init__(self, channels: int, *, batchnorm: bool, dropout: float):
        super().__init__()
        self.proj = nn.Conv2d(2 * channels, channels, 1)
        # Merges are gated whatever the `gated` setting (reference merge layers always are).
        self.res = ResBlock(channels, gated=True, batchnorm=batchnorm, dropout=dropout)

    def forward(self, a: Tensor, b: Tensor, pad_a: bool = False) -> Tensor:
        """Merge ``a (B, F, h, w)`` and ``b (B, F, H, W)`` into ``(B, F, H, W)``."""
        f = a.shape[1]
        w = self.proj.weight
        ya = F.conv2d(a, w[:, :f])
        if pad_a:
            ya = centre_pad(ya, tuple(b.shape[-2:]))
        return self.res(F.conv2d(b, w[:, f:], self.proj.bias).add_(ya))


# -- the stochastic layer ------------------------------------------------------------------
def stable_variance(ell: Tensor, clip: float = LATENT_LOGVAR_CLIP) -> Tensor:
    """Stable variance of Dehaene & Brossard (2021), spec 2.6 steps 1-3.

    ``v(ℓ) = exp(ℓ)`` for ``ℓ <= 0`` and ``1 + ℓ`` above, after clipping ``ℓ <= clip``; the
    variance is ``v + 1e-6``. Written as ``exp(min(ℓ, 0)) + clamp(ℓ, 0, clip)``, which needs no
    masks. Appendix A.3: ℓ = -3, 0, 2, 25 give e^-3, 1, 3, 21 (each + 1e-6).

    Parameters
    ----------
    ell : Tensor
        Raw second half of a ``PostConv``/``PriorConv`` output, any shape.
    """
    var = ell.clamp(max=0.0).exp()
    return var.add_(ell.clamp(0.0, clip)).add_(VARIANCE_EPS)


def _dvar_dell(var: Tensor, ell: Tensor, clip: float) -> Tensor:
    """Derivative of :func:`stable_variance` w.r.t. the raw ℓ: ``min(v, 1)``, 0 above clip."""
    # v = exp(ℓ) <= 1 below 0 (derivative v) and v = 1 + ℓ > 1 above (derivative 1).
    return (var - VARIANCE_EPS).clamp_(max=1.0).mul_(ell <= clip)


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (bf16/fp16 under autocast are widened)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class GaussianLatent(torch.autograd.Function):
    """Fused reparameterised sample and per-sample KL of one latent level.

    ``forward(q, p, eps, analytic, clip) -> (z, kl)`` with ``q (B, 2Z, H, W)`` the posterior
    parameters ``[μ_q, ℓ_q]``, ``p (B or 1, 2Z, H, W)`` the prior's, ``eps (B, Z, H, W)``.
    Only ``q``, ``p`` and ``eps`` are kept for backward; everything else is recomputed there,
    which is cheap elementwise work next to the convolutions around it.

    The one-sample estimate is ``log q(z) - log p(z)``. With ``z = μ_q + σ_q ε`` the total
    derivative of ``-(z - μ_q)^2 / 2σ_q^2`` w.r.t. ``(μ_q, σ_q)`` vanishes, so
    ``log q(z) = -ε^2/2 - log σ_q - log(2π)/2`` has the same value and gradients as the
    reference's ``Normal(μ_q, σ_q).log_prob(rsample())`` and is computed that way.
    """

    @staticmethod
    def forward(ctx, q: Tensor, p: Tensor, eps: Tensor, analytic: bool,
                clip: float) -> tuple[Tensor, Tensor]:
        ctx.analytic, ctx.clip = analytic, clip
        ctx.in_dtypes = (q.dtype, p.dtype)
        ctx.save_for_backward(q, p, eps)
        z_dim = q.shape[1] // 2
        # Computed in float32 whatever autocast feeds in; the KL is a sum of many terms.
        qf, pf, eps = _wide(q), _wide(p), _wide(eps)
        mu_q, ell_q = qf[:, :z_dim], qf[:, z_dim:]
        mu_p, ell_p = pf[:, :z_dim], pf[:, z_dim:]
        var_q = stable_variance(ell_q, clip)
        z = torch.addcmul(mu_q, var_q.sqrt(), eps)
        var_p = stable_variance(ell_p, clip)
        if analytic:
            # 2 KL = log var_p - log var_q + (var_q + (μ_q - μ_p)^2) / var_p - 1
            t = torch.sub(mu_q, mu_p).square_().add_(var_q).div_(var_p).sub_(1.0)
        else:
            # 2 (log q(z) - log p(z)) = log var_p - log var_q + (z - μ_p)^2 / var_p - ε^2
            t = torch.sub(z, mu_p).square_().div_(var_p).addcmul_(eps, eps, value=-1.0)
        t.add_(var_p.log_()).sub_(var_q.log_())
        kl = t.sum(dim=(1, 2, 3)).mul_(0.5)
        return z, kl

    @staticmethod
    def backward(ctx, g_z: Tensor | None, g_kl: Tensor | None):
        q, p, eps = ctx.saved_tensors
        clip = ctx.clip
        z_dim = q.shape[1] // 2
        qf, pf, eps = _wide(q), _wide(p), _wide(eps)
        mu_q, ell_q = qf[:, :z_dim], qf[:, z_dim:]
        mu_p, ell_p = pf[:, :z_dim], pf[:, z_dim:]
        var_q = stable_variance(ell_q, clip)
        var_p = stable_variance(ell_p, clip)
        std_q = var_q.sqrt()
        g_z = torch.zeros_like(mu_q) if g_z is None else _wide(g_z)
        g = mu_q.new_zeros(q.shape[0]) if g_kl is None else _wide(g_kl)
        g = g.view(-1, 1, 1, 1)
        # z = μ_q + σ_q ε: what reaches z also reaches μ_q, and σ_q through ε / (2 σ_q).
        if ctx.analytic:
            d = torch.sub(mu_q, mu_p)
            r = d / var_p
            g_mu_q = torch.addcmul(g_z, g, r)
            # d/dvar_p = g (1 - (var_q + d^2) / var_p) / (2 var_p)
            g_var_p = d.square_().add_(var_q).div_(var_p).neg_().add_(1.0).div_(var_p)
            g_var_p.mul_(0.5 * g)
            # d/dvar_q = g (1/var_p - 1/var_q) / 2 plus the sampling path
            g_var_q = torch.mul(g_z, eps).div_(std_q).mul_(0.5)
            g_var_q.add_(torch.sub(torch.reciprocal(var_p), torch.reciprocal(var_q)).mul_(0.5 * g))
        else:
            r = torch.addcmul(mu_q, std_q, eps).sub_(mu_p).div_(var_p)  # (z - μ_p) / var_p
            g_mu_q = torch.addcmul(g_z, g, r)  # the total gradient reaching z
            g_var_q = torch.mul(g_mu_q, eps).div_(std_q).mul_(0.5).sub_(0.5 * g / var_q)
            # d/dvar_p of (log var_p + (z - μ_p)^2 / var_p) / 2 = (1/var_p - r^2) / 2
            g_var_p = torch.sub(torch.reciprocal(var_p), r.square()).mul_(0.5 * g)
        g_mu_p = r.mul_(-g)
        g_ell_q = g_var_q.mul_(_dvar_dell(var_q, ell_q, clip))
        g_ell_p = g_var_p.mul_(_dvar_dell(var_p, ell_p, clip))
        grad_q = torch.cat([g_mu_q, g_ell_q], dim=1).to(ctx.in_dtypes[0])
        grad_p = torch.cat([g_mu_p, g_ell_p], dim=1)
        if p.shape[0] != grad_p.shape[0]:  # a batch-1 prior broadcast over the batch
            grad_p = grad_p.sum(dim=0, keepdim=True)
        return grad_q, grad_p.to(ctx.in_dtypes[1]), None, None, None


def gaussian_latent(q: Tensor, p: Tensor | None, eps: Tensor | None, *, kl: bool,
                    analytic: bool = False, clip: float = LATENT_LOGVAR_CLIP
                    ) -> tuple[Tensor, Tensor | None]:
    """Sample ``z ~ q`` and compute the per-sample KL of one level (spec 2.6).

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
    if not kl:
        mu_q = q[:, :z_dim]
        if eps is None:
            return mu_q, None
        return torch.addcmul(mu_q, stable_variance(q[:, z_dim:], clip).sqrt_(), eps), None
    if p is None:
        raise ValueError("the KL needs the prior parameters p")
    if eps is None:  # KL at the posterior mean: the MC estimate with ε = 0
        eps = q.new_zeros(q[:, :z_dim].shape)
    return GaussianLatent.apply(q, p, eps, analytic, clip)


class StochasticLayer(nn.Module):
    """The convolutions of one latent level (spec 2.6): ``post_conv``, ``prior_conv``, ``out_conv``.

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
        self.post_conv = nn.Conv2d(channels, 2 * z_dim, 3, padding=1)
        self.prior_conv = None if top else nn.Conv2d(channels, 2 * z_dim, 3, padding=1)
        self.out_conv = nn.Conv2d(z_dim, channels, 3, padding=1)

    def posterior_mean(self, u: Tensor) -> Tensor:
        """``μ_q`` only: the first ``Z`` output channels of ``post_conv`` (HAE, spec 2.6)."""
        w, b = self.post_conv.weight, self.post_conv.bias
        return F.conv2d(u, w[: self.z_dim], b[: self.z_dim], padding=1)

    def forward(self, u: Tensor, prior: Tensor | None, eps: Tensor | None, *, kl: bool,
                analytic: bool = False) -> tuple[Tensor, Tensor | None]:
        """``u (B, F, H, W)`` and prior parameters ``(B or 1, 2Z, H, W)`` to ``y (B, F, H, W)``.

        Returns ``(y, kl)`` with ``kl`` of shape ``(B,)`` or None, see :func:`gaussian_latent`.
        """
        z, kl_value = gaussian_latent(self.post_conv(u), prior, eps, kl=kl, analytic=analytic)
        return self.out_conv(z), kl_value
