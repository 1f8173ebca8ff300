"""Hand-written autograd for the LadderVAE's hot spots: exact, cheaper equivalents of plain ops.

Why this module exists. A training step of the LadderVAE is dominated, on CPU and in memory, by
work that autograd does not do well on its own:

- :class:`_ConvFn` (behind :func:`conv2d`): the stock convolution with the bias gradient as a
  plain sum over batch and pixels (oneDNN's costs ten times more for channels_last on CPU).
- :class:`_GateFn`: the gate ``ELU(a) * sigmoid(g)``; keeps only its input and writes both
  halves' gradients into one tensor instead of concatenating them.
- :class:`_BNELUConvFn` (behind :func:`bn_elu_conv`): ``conv(ELU(BatchNorm(x)))`` in training,
  keeping only ``x`` and recomputing the activation in backward: two activations per residual
  half fewer (32 MB each at batch 32, 64 channels, 64²).
- :class:`GaussianLatent`: the reparameterised sample and per-sample KL of one latent level,
  keeping only its three inputs for backward (in Regular- and Deep-LC this layer used to
  dominate memory, docs/method.md, "Reference defects avoided").

On CPU the elementwise chains run in the compiled kernels of :mod:`musplit.native` where those
build. Each function computes the same values and gradients as the composition of plain
PyTorch ops it replaces (to float32 rounding where the native kernels are used): the tests
check them against those compositions and with ``torch.autograd.gradcheck``
(``tests/test_models.py``, ``tests/test_native.py``). The plain building blocks that use them
are in :mod:`musplit.models.blocks`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musplit import native

__all__ = [
    "CHUNK_ELEMENTS",
    "GaussianLatent",
    "LATENT_LOGVAR_CLIP",
    "VARIANCE_EPS",
    "bn_elu_conv",
    "conv2d",
    "stable_variance",
]

#: Upper clip of the latent "log-variance" ℓ before the stable variance (docs/method.md, "Top-down
#: pass and stochastic layer" step 1).
LATENT_LOGVAR_CLIP = 20.0
#: Added to every latent variance (docs/method.md, "Top-down pass and stochastic layer" step 3).
VARIANCE_EPS = 1e-6



#: Elements per chunk of the fused elementwise computations (gate, latent layer). They run over
#: slices of the batch so that their temporaries stay a few MB: those are then recycled by the
#: memory allocator instead of being fresh page-faulted allocations the size of a whole
#: activation (32-128 MB at batch 32, 64x64), which costs more than the arithmetic.
CHUNK_ELEMENTS = 1 << 20


def _batch_slices(batch: int, per_sample: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


# -- convolution -----------------------------------------------------------------------------
def _autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


class _ConvFn(torch.autograd.Function):
    """``conv2d(x, w, b)`` whose bias gradient is a plain sum over batch and pixels.

    oneDNN computes the bias gradient inside its weight-gradient primitive, and for channels_last
    tensors on CPU that costs about 5 ms per 64-channel 64² map at batch 32, ten times a
    separate sum. Everything else is the stock convolution, forward and backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor, stride, padding, dilation,
                groups: int) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need = ctx.needs_input_grad
        g_x, g_w, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, stride, padding, dilation, False, [0, 0], groups,
            [need[0], need[1], False])
        g_b = g.sum(dim=(0, 2, 3)) if need[2] else None
        return g_x, g_w, g_b, None, None, None, None


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """:func:`torch.nn.functional.conv2d`; when training, with :class:`_ConvFn`'s cheaper bias
    gradient (integer or pair ``stride``/``padding``/``dilation``, no string padding)."""
    if (bias is not None and bias.requires_grad and torch.is_grad_enabled()
            and not _autocast_on() and x.dim() == 4):
        pair = torch.nn.modules.utils._pair
        return _ConvFn.apply(x, weight, bias, pair(stride), pair(padding), pair(dilation),
                             groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


# -- BatchNorm, ELU, gate ----------------------------------------------------------------------
class _GateFn(torch.autograd.Function):
    """``ELU(a) * sigmoid(g)`` for ``[a, g] = y``, keeping only ``y`` for backward.

    Autograd's version keeps the ELU and sigmoid outputs (the same memory) but its backward
    re-assembles the two halves' gradients with a concatenation, which is slow for
    channels_last tensors; here they are written straight into one gradient tensor, and the
    elementwise work runs over batch slices (see :data:`CHUNK_ELEMENTS`).
    """

    @staticmethod
    def forward(ctx, y: Tensor) -> Tensor:
        ctx.save_for_backward(y)
        if native.supports(y):
            return native.gate_fwd(y)
        a, g = y.chunk(2, dim=1)
        out = torch.empty_like(a)
        for sl in _batch_slices(y.shape[0], y[0].numel()):
            torch.mul(F.elu(a[sl]), torch.sigmoid(g[sl]), out=out[sl])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        if native.supports(y, grad_out):
            return native.gate_bwd(y, grad_out)
        a, g = y.chunk(2, dim=1)
        grad = torch.empty_like(y)
        grad_a, grad_g = grad.chunk(2, dim=1)
        for sl in _batch_slices(y.shape[0], y[0].numel()):
            s, e, go = torch.sigmoid(g[sl]), F.elu(a[sl]), grad_out[sl]
            # d/dg = go * e * s (1 - s)
            torch.mul(go, e, out=grad_g[sl]).mul_(s)
            # d/da = go * s * ELU'(a), ELU'(a) = 1 above 0 and e + 1 below
            torch.mul(go, s, out=grad_a[sl]).mul_(e.clamp_(max=0.0).add_(1.0))
            grad_g[sl].mul_(s.neg_().add_(1.0))
        return grad


class _BNELUConvFn(torch.autograd.Function):
    """``conv(ELU(BatchNorm(x)))`` in training mode, keeping only ``x`` for backward.

    Autograd's composition keeps two activations per call: BatchNorm's input and the ELU
    output (shared with the convolution, which needs its input). For the two halves of a
    :class:`ResBlock` that is four, and at 64² with 64 channels each is 32 MB per batch of
    32. This function keeps only ``x`` and the batch
    statistics, and recomputes ``ELU(BatchNorm(x))`` in backward; the forward result, the
    running statistics and the gradients equal the unfused modules'.

    Where the compiled kernels of :mod:`musplit.native` are available, BatchNorm-apply and ELU
    are one pass (forward and recomputation), and the ELU and BatchNorm gradients two more,
    instead of eager PyTorch's five; results then agree with the modules to float32 rounding.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bn_w: Tensor | None, bn_b: Tensor | None,
                conv_w: Tensor, conv_b: Tensor | None, bn: nn.BatchNorm2d,
                conv: nn.Conv2d) -> Tensor:
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        # As nn.BatchNorm2d: momentum None means a cumulative average over the batches seen.
        momentum = (bn.momentum if bn.momentum is not None
                    else 1.0 / float(bn.num_batches_tracked))
        ctx.native = x.dim() == 4 and native.supports(x)
        if ctx.native:
            mean, var = torch.batch_norm_update_stats(x, bn.running_mean, bn.running_var,
                                                      momentum)
            invstd = torch.rsqrt(var + bn.eps)
            scale, shift = _bn_affine(mean, invstd, bn_w, bn_b)
            y = conv._conv_forward(native.bn_elu(x, scale, shift), conv_w, conv_b)
        else:
            z, mean, invstd = torch.native_batch_norm(x, bn_w, bn_b, bn.running_mean,
                                                      bn.running_var, True, momentum, bn.eps)
            y = conv._conv_forward(F.elu(z, inplace=True), conv_w, conv_b)
        ctx.save_for_backward(x, mean, invstd, bn_w, bn_b, conv_w)
        ctx.eps = bn.eps
        ctx.has_conv_bias = conv_b is not None
        ctx.conv = (conv.stride, conv.padding, conv.dilation, conv.groups)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, mean, invstd, bn_w, bn_b, conv_w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        scale, shift = _bn_affine(mean, invstd, bn_w, bn_b)
        if ctx.native:
            a = native.bn_elu(x, scale, shift)
        else:
            shape = (1, -1, 1, 1)
            a = F.elu(torch.addcmul(shift.view(shape), x, scale.view(shape)), inplace=True)
        need = ctx.needs_input_grad
        g_a, g_cw, g_cb = torch.ops.aten.convolution_backward(
            grad_y, a, conv_w, None, stride,
            padding, dilation, False, [0, 0], groups,
            [need[0] or need[1] or need[2], need[3], False])
        if ctx.has_conv_bias and need[4]:
            g_cb = grad_y.sum(dim=(0, 2, 3))  # cheaper than oneDNN's, see _ConvFn
        g_x = g_bw = g_bb = None
        if g_a is not None and ctx.native and native.supports(x, g_a, a):
            g_x, g_bw, g_bb = _native_elu_bn_backward(a, g_a, x, mean, invstd, bn_w, need)
        elif g_a is not None:
            # ELU'(z) from its output a: 1 above zero, a + 1 below (alpha = 1).
            g_z = torch.ops.aten.elu_backward(g_a, 1.0, 1.0, 1.0, True, a)
            del a, g_a
            g_x, g_bw, g_bb = torch.ops.aten.native_batch_norm_backward(
                g_z, x, bn_w, None, None, mean, invstd, True, ctx.eps,
                [need[0], bn_w is not None and need[1], bn_b is not None and need[2]])
        if bn_w is None:
            g_bw = None
        if bn_b is None:
            g_bb = None
        return g_x, g_bw, g_bb, g_cw, g_cb, None, None


def _bn_affine(mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None
               ) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``BatchNorm(x) = x * scale + shift`` per channel."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return scale, shift


def _native_elu_bn_backward(a: Tensor, g_a: Tensor, x: Tensor, mean: Tensor, invstd: Tensor,
                            weight: Tensor | None, need: tuple[bool, ...]
                            ) -> tuple[Tensor | None, Tensor, Tensor]:
    """Gradients w.r.t. ``x``, BN's weight and bias from ``g_a = dL/da``, ``a = ELU(BN(x))``.

    Training-mode BatchNorm backward with ``xc = x - mean``, ``n`` values per channel,
    ``k = weight * invstd``:  ``dL/dx = k (g - sum g / n) - k invstd² xc sum(g xc) / n``,
    ``dL/dweight = invstd sum(g xc)`` and ``dL/dbias = sum g``, for ``g = dL/dz``.
    ``g_a`` is overwritten (it becomes ``dL/dz``, then ``dL/dx``).
    """
    sum_g, sum_gx = native.elu_bwd_bn_sums(a, g_a, x, mean)
    del a
    n = x.numel() // x.shape[1]
    inv = invstd.double()
    k = inv if weight is None else inv * weight.double()
    g_bw = (inv * sum_gx).to(x.dtype)
    g_bb = sum_g.to(x.dtype)
    g_x = None
    if need[0]:
        coef_x = -k * inv * inv * sum_gx / n
        shift = -k * sum_g / n
        g_x = native.bn_bwd_apply(g_a, x, k, coef_x, shift, mean, out=g_a)
    return g_x, g_bw, g_bb


def bn_elu_conv(x: Tensor, bn: nn.Module, conv: nn.Conv2d) -> Tensor:
    """``conv(ELU(bn(x)))``; in training with gradients, the memory-lean fused version.

    In evaluation without gradients (prediction) BatchNorm-apply and ELU are one pass of
    :func:`musplit.native.bn_elu` where the compiled kernels are available.
    """
    plain_conv = conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    if (isinstance(bn, nn.BatchNorm2d) and bn.training and bn.track_running_stats
            and torch.is_grad_enabled() and not _autocast_on()
            and x.dtype == conv.weight.dtype and plain_conv):
        return _BNELUConvFn.apply(x, bn.weight, bn.bias, conv.weight, conv.bias, bn, conv)
    if (isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.track_running_stats
            and not torch.is_grad_enabled() and not _autocast_on() and x.dim() == 4
            and native.supports(x) and conv.weight.dtype == x.dtype):
        invstd = torch.rsqrt(bn.running_var + bn.eps)
        scale, shift = _bn_affine(bn.running_mean, invstd, bn.weight, bn.bias)
        return conv(native.bn_elu(x, scale, shift))
    # ELU may overwrite BatchNorm's output; without BN its input is x itself, which the
    # residual connection still needs.
    return conv(F.elu(bn(x), inplace=isinstance(bn, nn.BatchNorm2d)))


# -- the latent layer ---------------------------------------------------------------------
def stable_variance(ell: Tensor, clip: float = LATENT_LOGVAR_CLIP) -> Tensor:
    """Stable variance of Dehaene & Brossard (2021), docs/method.md, "Top-down pass and stochastic
    layer" steps 1-3.

    ``v(ℓ) = exp(ℓ)`` for ``ℓ <= 0`` and ``1 + ℓ`` above, after clipping ``ℓ <= clip``; the
    variance is ``v + 1e-6``. Written as ``exp(min(ℓ, 0)) + clamp(ℓ, 0, clip)``, which needs no
    masks. Appendix A.3: ℓ = -3, 0, 2, 25 give e^-3, 1, 3, 21 (each + 1e-6).

    Parameters
    ----------
    ell : Tensor
        Raw second half of a ``PostConv``/``PriorConv`` output, any shape.
    """
    var = ell.clamp(max=0.0).exp_()
    return var.add_(ell.clamp(0.0, clip)).add_(VARIANCE_EPS)


def _dvar_dell(var: Tensor, ell: Tensor, clip: float) -> Tensor:
    """Derivative of :func:`stable_variance` w.r.t. the raw ℓ: ``min(v, 1)``, 0 above clip."""
    # v = exp(ℓ) <= 1 below 0 (derivative v) and v = 1 + ℓ > 1 above (derivative 1).
    return (var - VARIANCE_EPS).clamp_(max=1.0).mul_(ell <= clip)


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (bf16/fp16 under autocast are widened)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _latent_forward(q: Tensor, p: Tensor | None, eps: Tensor, analytic: bool, clip: float
                    ) -> tuple[Tensor, Tensor | None]:
    """Chunk of :class:`GaussianLatent`'s forward on wide tensors; ``p`` None: no KL."""
    z_dim = q.shape[1] // 2
    mu_q, ell_q = q[:, :z_dim], q[:, z_dim:]
    var_q = stable_variance(ell_q, clip)
    z = torch.addcmul(mu_q, var_q.sqrt(), eps)
    if p is None:
        return z, None
    mu_p, ell_p = p[:, :z_dim], p[:, z_dim:]
    var_p = stable_variance(ell_p, clip)
    if analytic:
        # 2 KL = log var_p - log var_q + (var_q + (μ_q - μ_p)^2) / var_p - 1
        t = torch.sub(mu_q, mu_p).square_().add_(var_q).div_(var_p).sub_(1.0)
    else:
        # 2 (log q(z) - log p(z)) = log var_p - log var_q + (z - μ_p)^2 / var_p - ε^2
        t = torch.sub(z, mu_p).square_().div_(var_p).addcmul_(eps, eps, value=-1.0)
    t.add_(var_p.log_()).sub_(var_q.log_())
    return z, t.sum(dim=(1, 2, 3)).mul_(0.5)


def _latent_backward(q: Tensor, p: Tensor, eps: Tensor, g_z: Tensor, g_kl: Tensor,
                     analytic: bool, clip: float) -> tuple[Tensor, Tensor]:
    """Chunk of :class:`GaussianLatent`'s backward: gradients w.r.t. ``q`` and ``p``.

    ``g_z (b, Z, H, W)`` reaches z from the layers above, ``g_kl (b,)`` the KL. With
    ``z = μ_q + σ_q ε`` whatever reaches z also reaches μ_q, and σ_q times ε.
    """
    z_dim = q.shape[1] // 2
    mu_q, ell_q = q[:, :z_dim], q[:, z_dim:]
    mu_p, ell_p = p[:, :z_dim], p[:, z_dim:]
    var_q = stable_variance(ell_q, clip)
    var_p = stable_variance(ell_p, clip)
    std_q = var_q.sqrt()
    g = g_kl.view(-1, 1, 1, 1)
    grad_q = torch.empty_like(q)
    grad_p = torch.empty_like(q if p.shape[0] != q.shape[0] else p)
    if analytic:
        d = torch.sub(mu_q, mu_p)
        r = d / var_p  # (μ_q - μ_p) / var_p
        torch.addcmul(g_z, g, r, out=grad_q[:, :z_dim])
        # d/dvar_p = g (1 - (var_q + d^2) / var_p) / (2 var_p)
        g_var_p = d.square_().add_(var_q).div_(var_p).neg_().add_(1.0).div_(var_p).mul_(0.5 * g)
        # d/dvar_q = g (1/var_p - 1/var_q) / 2, plus the sampling path ε / (2 σ_q)
        g_var_q = torch.mul(g_z, eps).div_(std_q).mul_(0.5)
        g_var_q.add_(torch.sub(torch.reciprocal(var_p), torch.reciprocal(var_q)).mul_(0.5 * g))
    else:
        r = torch.addcmul(mu_q, std_q, eps).sub_(mu_p).div_(var_p)  # (z - μ_p) / var_p
        g_mu_q = torch.addcmul(g_z, g, r)  # the total gradient reaching z
        grad_q[:, :z_dim] = g_mu_q
        g_var_q = g_mu_q.mul_(eps).div_(std_q).mul_(0.5).sub_(0.5 * g / var_q)
        # d/dvar_p of (log var_p + (z - μ_p)^2 / var_p) / 2 = (1/var_p - r^2) / 2
        g_var_p = torch.sub(torch.reciprocal(var_p), r.square()).mul_(0.5 * g)
    torch.mul(r, -g, out=grad_p[:, :z_dim])
    torch.mul(g_var_q, _dvar_dell(var_q, ell_q, clip), out=grad_q[:, z_dim:])
    torch.mul(g_var_p, _dvar_dell(var_p, ell_p, clip), out=grad_p[:, z_dim:])
    return grad_q, grad_p


class GaussianLatent(torch.autograd.Function):
    """Fused reparameterised sample and per-sample KL of one latent level.

    ``forward(q, p, eps, analytic, clip) -> (z, kl)`` with ``q (B, 2Z, H, W)`` the posterior
    parameters ``[μ_q, ℓ_q]``, ``p (B or 1, 2Z, H, W)`` the prior's, ``eps (B, Z, H, W)``.
    Only ``q``, ``p`` and ``eps`` are kept for backward; everything else is recomputed there,
    which is cheap elementwise work next to the convolutions around it. The arithmetic runs in
    float32 (float64 for float64 inputs) whatever autocast feeds in; ``z`` has ``q``'s dtype.

    The one-sample estimate is ``log q(z) - log p(z)``. With ``z = μ_q + σ_q ε`` the total
    derivative of ``-(z - μ_q)^2 / 2σ_q^2`` w.r.t. ``(μ_q, σ_q)`` vanishes, so
    ``log q(z) = -ε^2/2 - log σ_q - log(2π)/2`` has the same value and gradients as the
    reference's ``Normal(μ_q, σ_q).log_prob(rsample())`` and is computed that way.
    """

    @staticmethod
    def forward(ctx, q: Tensor, p: Tensor, eps: Tensor, analytic: bool,
                clip: float) -> tuple[Tensor, Tensor]:
        ctx.analytic, ctx.clip = analytic, clip
        ctx.save_for_backward(q, p, eps)
        return _chunked_latent(q, p, eps, analytic, clip)

    @staticmethod
    def backward(ctx, g_z: Tensor | None, g_kl: Tensor | None):
        q, p, eps = ctx.saved_tensors
        batch, z_dim = q.shape[0], q.shape[1] // 2
        broadcast_prior = p.shape[0] != batch
        grad_q = torch.empty_like(q)
        grad_p = (torch.zeros(p.shape, dtype=_wide(p).dtype, device=p.device)
                  if broadcast_prior else torch.empty_like(p))
        for sl in _batch_slices(batch, q[0].numel()):
            n = sl.stop - sl.start
            qc = _wide(q[sl])
            gz = (qc.new_zeros((n, z_dim, *q.shape[2:])) if g_z is None else _wide(g_z[sl]))
            gk = qc.new_zeros(n) if g_kl is None else _wide(g_kl[sl])
            gq, gp = _latent_backward(qc, _wide(p if broadcast_prior else p[sl]),
                                      _wide(eps[sl]), gz, gk, ctx.analytic, ctx.clip)
            grad_q[sl] = gq
            if broadcast_prior:
                grad_p += gp.sum(dim=0, keepdim=True)
            else:
                grad_p[sl] = gp
        return grad_q, grad_p.to(p.dtype), None, None, None


def _chunked_latent(q: Tensor, p: Tensor | None, eps: Tensor, analytic: bool, clip: float
                    ) -> tuple[Tensor, Tensor | None]:
    """``(z, kl)`` over batch slices; ``p`` None computes only ``z``."""
    batch, z_dim = q.shape[0], q.shape[1] // 2
    z = torch.empty_like(q[:, :z_dim])
    kl = None if p is None else torch.empty(batch, dtype=_wide(q).dtype, device=q.device)
    for sl in _batch_slices(batch, q[0].numel()):
        pc = None if p is None else _wide(p if p.shape[0] != batch else p[sl])
        zc, klc = _latent_forward(_wide(q[sl]), pc, _wide(eps[sl]), analytic, clip)
        z[sl] = zc
        if kl is not None:
            kl[sl] = klc
    return z, kl
