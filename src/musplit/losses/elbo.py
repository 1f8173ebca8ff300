"""The split ELBO (docs/method.md, "Split ELBO") and the non-finite-step guard
(docs/method.md, "Training recipe").

The objective is ``distortion + β · rate``:

- **distortion**: the Gaussian negative log-likelihood of the normalised targets under the
  predicted per-pixel means and log-variances, averaged over ``B·T·H·W`` (paper Eq. 3, the two
  channels being independent given z);
- **rate**: the KL between posterior and prior, summed over the hierarchy.

Two normalisations of the rate exist (docs/data.md, "Normalisation"):

``"reference"`` (default, parity)
    per level, the per-element mean ``KL_i / (Z·H_i·W_i)``; averaged over the batch, then over
    the L levels. This is what produced the paper's numbers; it down-weights the KL strongly
    (by ``T·H·W / (L·Z·H_i·W_i)``, e.g. 1/256 at a 64x64 Regular-LC level).
``"elbo"``
    the true per-pixel negative ELBO: ``(Σ NLL + Σ_i KL_i) / (B·T·H·W)``.

``nll_beta`` (β-NLL, Seitzer et al., ICLR 2022) weights each pixel's NLL by its predicted
variance raised to β, held constant (no gradient through the weight). 0 is the paper's NLL. With
a learned per-pixel variance the plain NLL lets the model explain hard pixels by a large variance
instead of moving their means, which makes the means learn slowly; β = 1 gives the means the
gradient of the squared error while the variances are still fitted. Short CPU budgets (the
``cpu-small`` preset, ``make demo``) use it.

The HAE has no rate: its loss is the distortion only. The supervised baselines (docs/evaluation.md,
"Baselines") are fitted by the mean squared error on normalised targets,
:func:`deep_supervision_mse` (with BRAVE-NET's auxiliary outputs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NonFiniteGuard",
    "deep_supervision_mse",
    "gaussian_nll",
    "is_finite",
    "kl_annealing_beta",
    "split_elbo",
]

log = logging.getLogger(__name__)

_LOG_2PI = math.log(2 * math.pi)


def gaussian_nll(params: Tensor, target: Tensor) -> Tensor:
    """Elementwise Gaussian negative log-likelihood (docs/data.md, "Normalisation").

    Parameters
    ----------
    params : Tensor, shape (B, 2T, H, W)
        Means then (already bounded) log-variances ℓ.
    target : Tensor, shape (B, T, H, W)
        Normalised targets.

    Returns
    -------
    Tensor, shape (B, T, H, W)
        ``((y - μ)^2 / exp(ℓ) + ℓ + log 2π) / 2``.
    """
    t = target.shape[1]
    if params.shape[1] != 2 * t or params.shape[0] != target.shape[0] \
            or params.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"params {tuple(params.shape)} do not match target {tuple(target.shape)} "
            "(expected params (B, 2T, H, W) for target (B, T, H, W))"
        )
    mu, ell = params[:, :t].float(), params[:, t:].float()
    return 0.5 * ((target.float() - mu).square() * torch.exp(-ell) + ell + _LOG_2PI)


def split_elbo(params: Tensor, target: Tensor, kl: Tensor | None = None,
               kl_elements: Sequence[int] | None = None, *, normalisation: str = "reference",
               beta: float = 1.0, free_bits: float = 0.0, nll_beta: float = 0.0,
               channel_weights: Sequence[float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss ``distortion + β · rate`` and its parts.

    Parameters
    ----------
    params : Tensor, shape (B, 2T, H, W)
        Likelihood parameters (``LadderOutput.params``).
    target : Tensor, shape (B, T, H, W)
        Normalised targets.
    kl : Tensor, shape (B, L), or None
        Per-sample, per-level KL summed over each level's latent elements
        (``LadderOutput.kl``). None (the HAE) gives a zero rate: the loss is the NLL only.
    kl_elements : sequence of int
        ``Z·H_i·W_i`` per level (``LadderOutput.kl_elements``); required with ``kl``.
    normalisation : {"reference", "elbo"}
        See the module docstring. Both give the same distortion.
    beta : float
        KL weight (1 in the paper; see :func:`kl_annealing_beta`).
    free_bits : float
        Free bits λ in nats **per latent element**: each level's per-sample KL is raised to at
        least ``λ·Z·H_i·W_i`` (the reference's ``max(KL_i, λ)`` on its per-element means). 0
        (parity) leaves negative one-sample estimates as they are.
    nll_beta : float
        β-NLL exponent in [0, 1]: each pixel's NLL is multiplied by ``stop_grad(σ²)^nll_beta``.
        0 (parity) is the plain NLL. ``logs["distortion"]`` is always the plain NLL.
    channel_weights : sequence of float, optional
        ``w_k`` of the channel combination ``Σ w_k mean_k / Σ w_k`` (all 1 by default, which is
        the mean over ``B·T·H·W``).

    Returns
    -------
    loss : Tensor
        Scalar to minimise.
    logs : dict of str to Tensor
        Detached scalars: ``loss``, ``distortion``, ``rate`` (before β), ``beta``,
        ``kl_nats`` (mean over the batch of the total KL in nats) and ``kl_level_{i}``
        (per-element mean KL of level i). Only the first four when there is no KL.

    Examples
    --------
    A training step (the LightningModule of ``musplit.training``)::

        out = model(x, kl_estimator=cfg.train.kl_estimator)
        beta = kl_annealing_beta(epoch) if cfg.train.kl_annealing else 1.0
        loss, logs = split_elbo(out.params, y, out.kl, out.kl_elements, beta=beta,
                                normalisation=cfg.train.loss_normalisation,
                                free_bits=cfg.train.free_bits)
        return guard(loss)  # a NonFiniteGuard: None skips the step
    """
    if normalisation not in ("reference", "elbo"):
        raise ValueError(f"normalisation must be 'reference' or 'elbo', got {normalisation!r}")
    if free_bits < 0:
        raise ValueError(f"free_bits must be >= 0, got {free_bits}")
    if not 0.0 <= nll_beta <= 1.0:
        raise ValueError(f"nll_beta must be in [0, 1], got {nll_beta}")
    nll = gaussian_nll(params, target)  # (B, T, H, W)
    if channel_weights is None:
        def reduce(v: Tensor) -> Tensor:
            return v.mean()
    else:
        w = torch.as_tensor(channel_weights, dtype=nll.dtype, device=nll.device)
        if w.shape != (nll.shape[1],):
            raise ValueError(f"{len(channel_weights)} channel weights for {nll.shape[1]} channels")

        def reduce(v: Tensor) -> Tensor:
            return (v.mean(dim=(0, 2, 3)) * w).sum() / w.sum()
    plain = reduce(nll)
    if nll_beta > 0:
        t = target.shape[1]
        distortion = reduce(nll * torch.exp(nll_beta * params[:, t:].detach().float()))
    else:
        distortion = plain

    logs: dict[str, Tensor] = {"distortion": plain.detach()}
    if kl is None:
        rate = distortion.new_zeros(())
    else:
        if kl_elements is None or len(kl_elements) != kl.shape[1]:
            raise ValueError("kl_elements must give Z*H_i*W_i for each of the kl levels")
        n = torch.as_tensor(kl_elements, dtype=torch.float32, device=kl.device)
        kl = kl.float()
        per_element = kl / n  # (B, L)
        if normalisation == "reference":
            rate = (per_element.clamp(min=free_bits) if free_bits > 0 else per_element).mean()
        else:
            kept = torch.maximum(kl, free_bits * n) if free_bits > 0 else kl
            rate = kept.sum() / nll.numel()
        logs["kl_nats"] = kl.sum(dim=1).mean().detach()
        for i, v in enumerate(per_element.mean(dim=0).detach()):
            logs[f"kl_level_{i}"] = v
    loss = distortion + beta * rate
    logs["rate"] = rate.detach()
    logs["beta"] = torch.tensor(float(beta))
    logs["loss"] = loss.detach()
    return loss, logs


def deep_supervision_mse(mean: Tensor, target: Tensor, aux: Sequence[Tensor] = ()
                         ) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE loss of the baselines (docs/method.md, "Training recipe"; docs/method.md, "Baselines").

    Parameters
    ----------
    mean : Tensor, shape (B, C, H, W)
        The main prediction, normalised target units.
    target : Tensor, shape (B, C, H, W)
        Normalised targets.
    aux : sequence of Tensor, shape (B, C, H, W) each
        Further predictions fitted to the same targets (BRAVE-NET's deep supervision).

    Returns
    -------
    loss : Tensor, scalar
        ``MSE(mean)`` without ``aux``, else ``(MSE(mean) + mean_k MSE(aux_k)) / 2`` as the
        reference BRAVE-NET; computed in float32 whatever autocast produced.
    logs : dict of Tensor
        ``loss``, ``distortion`` (the main MSE) and, with ``aux``, ``aux_mse``.
    """
    y = target.float()
    main = torch.nn.functional.mse_loss(mean.float(), y)
    logs = {"distortion": main.detach()}
    loss = main
    if len(aux):
        extra = torch.stack([torch.nn.functional.mse_loss(a.float(), y) for a in aux]).mean()
        loss = (main + extra) / 2
        logs["aux_mse"] = extra.detach()
    logs["loss"] = loss.detach()
    return loss, logs


def kl_annealing_beta(epoch: int, *, start: int = -1, duration: int = 10) -> float:
    """KL weight under linear annealing: ``clip((epoch - start) / duration, 0, 1)``.

    The defaults give the reference's optional schedule ``clip((epoch + 1) / 10, 0, 1)``
    (docs/data.md, "Normalisation"); without annealing β is 1.
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    return min(max((epoch - start) / duration, 0.0), 1.0)


def is_finite(loss: Tensor, *, nan_only: bool = False) -> bool:
    """Whether ``loss`` allows an optimiser step (docs/method.md, "Training recipe").

    ``nan_only=True`` is parity (only NaN skips); the default also refuses ±inf.
    """
    bad = torch.isnan(loss) if nan_only else ~torch.isfinite(loss)
    return not bool(bad.any())


class NonFiniteGuard:
    """Skip and count optimiser steps whose loss is not finite (docs/method.md, "Training recipe").

    Call it on the loss in a Lightning ``training_step`` and return its result: a step whose
    loss is NaN (or ±inf unless ``nan_only``) returns None, which makes Lightning skip the
    backward pass and the optimiser step, as the reference does following VDVAE.

    Attributes
    ----------
    skipped : int
        Steps skipped so far (log it; keep it in checkpoints to resume the count).
    """

    def __init__(self, *, nan_only: bool = False):
        self.nan_only = nan_only
        self.skipped = 0

    def __call__(self, loss: Tensor) -> Tensor | None:
        if is_finite(loss, nan_only=self.nan_only):
            return loss
        self.skipped += 1
        log.warning("non-finite loss (%s): optimiser step skipped (%d so far)",
                    float(loss.detach()), self.skipped)
        return None
