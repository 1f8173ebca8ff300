"""The noise-model losses of denoiSplit and MicroSplit (docs/microsplit.md, "Training with noise
models").

Three training losses (``train.loss``; :data:`LOSSES`):

``"usplit"``
    µSplit's Gaussian split ELBO (:func:`musplit.losses.elbo.split_elbo`), for clean targets.
``"denoisplit"``
    ``ℓ_NM + β·K_dS``: the noise-model reconstruction term and denoiSplit's KL, for noisy
    targets (docs/microsplit.md, "denoiSplit").
``"denoisplit_usplit"``
    MicroSplit's objective ``w_dS·(ℓ_NM + β·K_dS) + w_µS·(ℓ_G + β·K_µS)`` with
    ``w_µS = 0.1``, ``w_dS = 0.9``, β = 1 by default (docs/microsplit.md, "Combined
    objective"); the µSplit part is the split ELBO as ``"usplit"`` trains it.

The parts:

- :func:`noise_model_nll`: ``ℓ_NM`` elementwise. The predicted means and the targets are
  de-normalised per channel with the *target* statistics (``ŝ_c = μ̂_c σ_c + m_c``,
  ``x_c = ỹ_c σ_c + m_c``, statistics shaped ``(1, C, 1, 1)``) and scored by noise model ``c``:
  ``−log p_c(x_c | ŝ_c)``. Only the mean half of the head enters. It is computed in float32
  with autocast off, so 16-bit mixed precision changes nothing in it (docs/microsplit.md,
  "Noise-model likelihood"). The noise models' weights are frozen.
- :func:`denoisplit_kl`: ``K_dS = (1/(H·W)) Σ_l mean_b max(KL_l(b), λ)``, λ = 1 nat per level
  by default, over the *restricted* KL;
- :class:`RestrictedKL`: the per-level KL over the central ``P/2^(l+1)`` window of each latent
  map. With Vanilla and Lean-LC every latent map already has that size (the restricted KL is
  the KL); Regular- and Deep-LC keep larger maps, and the recorder recomputes the KL of their
  centre during the forward pass.
- :func:`noise_model_records` / :func:`noise_models_from_records`: the noise models as plain
  data, stored in every checkpoint of a run that trained with them (self-contained).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from musplit.checkpoints.format import file_sha256
from musplit.errors import CheckpointError, InputError
from musplit.losses.elbo import split_elbo
from musplit.models.blocks import centre_crop, gaussian_latent
from musplit.noise import (
    GaussianMixtureNoiseModel,
    MultiChannelNoiseModel,
    check_range,
    load_noise_models,
)

__all__ = [
    "LOSSES",
    "NOISE_MODEL_LOSSES",
    "RestrictedKL",
    "check_noise_model_data",
    "denoisplit_kl",
    "denoisplit_loss",
    "noise_model_nll",
    "noise_model_records",
    "noise_models_from_records",
    "training_noise_models",
]

log = logging.getLogger(__name__)

#: The values of ``train.loss``.
LOSSES = ("usplit", "denoisplit", "denoisplit_usplit")
#: The losses that need one noise model per channel.
NOISE_MODEL_LOSSES = ("denoisplit", "denoisplit_usplit")


# -- the reconstruction term ------------------------------------------------------------------
def _per_channel(values, like: Tensor, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=like.device)
    if t.ndim != 1 or t.numel() != like.shape[1]:
        raise ValueError(f"{what} must give one value per channel ({like.shape[1]}), got shape "
                         f"{tuple(t.shape)}")
    return t.view(1, -1, 1, 1)


def noise_model_nll(mean: Tensor, target: Tensor, noise_model: MultiChannelNoiseModel,
                    target_mean: Sequence[float], target_std: Sequence[float]
                    ) -> tuple[Tensor, Tensor]:
    """Elementwise ``−log p_c(x_c | ŝ_c)`` (docs/microsplit.md, "Noise-model likelihood").

    Parameters
    ----------
    mean : Tensor, shape (B, C, H, W)
        Predicted means in normalised target units (the mean half of the head only).
    target : Tensor, shape (B, C, H, W)
        Normalised (noisy) targets.
    noise_model : MultiChannelNoiseModel
        Model ``c`` scores channel ``c``, in raw intensity units.
    target_mean, target_std : sequence of float
        The per-channel target statistics the data were normalised with (``NormStats``).

    Returns
    -------
    nll : Tensor, shape (B, C, H, W), float32 (or wider)
        Computed with autocast off, whatever precision ``mean`` has.
    outside : Tensor, scalar, detached
        Fraction of the de-normalised predictions outside their noise model's fitted signal
        range (where the mixture keeps the shape of the nearest end).
    """
    if mean.ndim != 4 or mean.shape != target.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and target {tuple(target.shape)} must both "
                         "have shape (B, C, H, W)")
    if len(noise_model) != mean.shape[1]:
        raise InputError(f"{len(noise_model)} noise model(s) for {mean.shape[1]} channel(s): "
                         "give one noise model per channel")
    with torch.autocast(device_type=mean.device.type, enabled=False):
        m = _per_channel(target_mean, mean, "target_mean")
        s = _per_channel(target_std, mean, "target_std")
        signal = mean.float() * s + m
        observation = target.float() * s + m
        nll = -noise_model.log_likelihood(observation, signal, channel_dim=1)
        with torch.no_grad():
            lo = torch.tensor([g.min_signal for g in noise_model.models], device=mean.device)
            hi = torch.tensor([g.max_signal for g in noise_model.models], device=mean.device)
            out = (signal < lo.view(1, -1, 1, 1)) | (signal > hi.view(1, -1, 1, 1))
            outside = out.float().mean()
    return nll, outside


# -- the KL -----------------------------------------------------------------------------------
def denoisplit_kl(kl: Tensor, pixels: int, free_nats: float = 1.0) -> Tensor:
    """denoiSplit's KL normalisation ``(1/(H·W)) Σ_l mean_b max(KL_l(b), λ)``
    (docs/microsplit.md, "denoiSplit").

    Parameters
    ----------
    kl : Tensor, shape (B, L)
        Per-sample KL of each level summed over its (restricted) latent elements, in nats.
    pixels : int
        ``H·W`` of the target patch.
    free_nats : float
        λ, in nats per whole level (1 in denoiSplit; at per-level sums of thousands of nats it
        hardly ever acts).
    """
    if pixels <= 0:
        raise ValueError(f"pixels must be > 0, got {pixels}")
    return kl.float().clamp(min=free_nats).mean(dim=0).sum() / pixels


class RestrictedKL:
    """Records the KL of each latent level over its central ``P/2^(l+1)`` window
    (docs/microsplit.md, "denoiSplit").

    Regular- and Deep-LC keep latent maps larger than the primary patch would give (the
    lateral context around it); the restricted KL sums only the window that covers the primary
    patch, ``max(1, H >> (l+1)) x max(1, W >> (l+1))`` at level ``l`` (0 at the bottom). The
    recorder hooks the model's stochastic layers: while :meth:`recording` is active, each
    level whose map is larger than its window recomputes its posterior convolution on the
    window (with the convolution's margin, so the values are those of the full map) and the
    window's KL with the model's own :func:`~musplit.models.blocks.gaussian_latent`, with the
    same latent noise, prior and estimator. Levels whose map is no larger than the window keep
    the model's KL. The recorder changes nothing the model computes.

    Parameters
    ----------
    model : LadderVAE
    """

    def __init__(self, model):
        self.levels = len(model.decoder.levels)
        self._size: tuple[int, int] | None = None
        self._kl: dict[int, Tensor] = {}
        self._handles = [
            level.stochastic.register_forward_hook(functools.partial(self._hook, i),
                                                   with_kwargs=True)
            for i, level in enumerate(model.decoder.levels)
        ]

    @staticmethod
    def needed(model) -> bool:
        """Whether ``model``'s latent maps can be larger than their window (Regular/Deep-LC)."""
        return bool(getattr(model, "retain_spatial", False)) and bool(
            getattr(model, "is_stochastic", False))

    @staticmethod
    def window(level: int, size: tuple[int, int]) -> tuple[int, int]:
        """The restricted window of ``level`` for a primary patch of ``size``."""
        return max(1, int(size[0]) >> (level + 1)), max(1, int(size[1]) >> (level + 1))

    @contextmanager
    def recording(self, size: tuple[int, int]):
        """Record the restricted KL of the forward passes inside (primary patch ``size``)."""
        self._size, self._kl = (int(size[0]), int(size[1])), {}
        try:
            yield self
        finally:
            self._size = None

    def restricted(self, kl: Tensor) -> Tensor:
        """The restricted ``(B, L)`` KL: the recorded windows, the model's ``kl`` elsewhere."""
        if kl.shape[1] != self.levels:
            raise ValueError(f"kl has {kl.shape[1]} levels, the model {self.levels}")
        return torch.stack([self._kl[i].to(kl.dtype) if i in self._kl else kl[:, i]
                            for i in range(self.levels)], dim=1)

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, level, module, args, kwargs, output):
        if self._size is None:
            return
        with_kl = kwargs.get("kl", args[3] if len(args) > 3 else False)
        if not with_kl:
            return
        u, prior, eps = args[:3]
        win = self.window(level, self._size)
        hw = tuple(u.shape[-2:])
        if win[0] >= hw[0] and win[1] >= hw[1]:
            return  # the whole map is the window: the model's KL
        pad = module.post_conv.padding
        m = (pad, pad) if isinstance(pad, int) else tuple(pad)
        crop = (min(hw[0], win[0] + 2 * m[0]), min(hw[1], win[1] + 2 * m[1]))
        q = centre_crop(module.post_conv(centre_crop(u, crop)), win)
        z_dim = q.shape[1] // 2
        e = q.new_zeros((q.shape[0], z_dim, *q.shape[-2:]), dtype=torch.float32) \
            if eps is None else centre_crop(eps, win)
        _, kl = gaussian_latent(q, centre_crop(prior, win), e, kl=True,
                                analytic=bool(kwargs.get("analytic", False)))
        self._kl[level] = kl


# -- the objective ----------------------------------------------------------------------------
def denoisplit_loss(params: Tensor, target: Tensor, noise_model: MultiChannelNoiseModel,
                    target_mean: Sequence[float], target_std: Sequence[float],
                    kl: Tensor | None = None, kl_elements: Sequence[int] | None = None, *,
                    kl_restricted: Tensor | None = None, loss: str = "denoisplit_usplit",
                    usplit_weight: float = 0.1, denoisplit_weight: float = 0.9,
                    beta: float = 1.0, kl_floor: float = 1.0, **usplit
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """The ``"denoisplit"`` or ``"denoisplit_usplit"`` training loss and its parts
    (docs/microsplit.md, "Training with noise models").

    Parameters
    ----------
    params : Tensor, shape (B, 2C, H, W)
        Means then log-variances (``LadderOutput.params``); ``ℓ_NM`` uses the means only.
    target : Tensor, shape (B, C, H, W)
        Normalised targets.
    noise_model, target_mean, target_std
        See :func:`noise_model_nll`.
    kl : Tensor, shape (B, L), or None
        The model's per-level KL (None: the HAE, no rate).
    kl_elements : sequence of int
        ``LadderOutput.kl_elements`` (for the µSplit KL).
    kl_restricted : Tensor, shape (B, L), optional
        The restricted KL (:class:`RestrictedKL`); default ``kl`` (equal to it without LC
        maps larger than the patch).
    loss : {"denoisplit", "denoisplit_usplit"}
    usplit_weight, denoisplit_weight : float
        ``w_µS`` and ``w_dS`` of the combined loss.
    beta : float
        KL weight β (annealed or 1), applied to both KL terms.
    kl_floor : float
        λ of :func:`denoisplit_kl`.
    **usplit
        Passed to :func:`~musplit.losses.elbo.split_elbo` for the µSplit part
        (``normalisation``, ``free_bits``, ``nll_beta``, ``channel_weights``).

    Returns
    -------
    loss : Tensor, scalar
    logs : dict of str to Tensor
        Detached scalars: ``loss``, ``beta``, ``nm_nll`` (ℓ_NM), ``kl_ds`` (K_dS before β),
        ``nm_outside`` (see :func:`noise_model_nll`), ``denoisplit_loss``, ``kl_nats``; in the
        combined loss also ``usplit_loss`` and the split ELBO's ``distortion`` (ℓ_G), ``rate``
        (K_µS) and ``kl_level_{i}``.
    """
    if loss not in NOISE_MODEL_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(NOISE_MODEL_LOSSES)}, got {loss!r}")
    c = target.shape[1]
    if params.shape[1] != 2 * c:
        raise ValueError(f"params {tuple(params.shape)} do not match target "
                         f"{tuple(target.shape)} (expected (B, 2T, H, W))")
    nll, outside = noise_model_nll(params[:, :c], target, noise_model, target_mean, target_std)
    nm = nll.mean()
    if kl is None:
        k_ds = nm.new_zeros(())
    else:
        k_ds = denoisplit_kl(kl if kl_restricted is None else kl_restricted,
                             target.shape[-2] * target.shape[-1], kl_floor)
    ds = nm + beta * k_ds
    logs: dict[str, Tensor] = {}
    if loss == "denoisplit":
        total = ds
        if kl is not None:
            logs["kl_nats"] = kl.float().sum(dim=1).mean().detach()
    else:
        us, logs = split_elbo(params, target, kl, kl_elements, beta=beta, **usplit)
        logs["usplit_loss"] = us.detach()
        total = usplit_weight * us + denoisplit_weight * ds
    logs.update(nm_nll=nm.detach(), kl_ds=k_ds.detach(), nm_outside=outside,
                denoisplit_loss=ds.detach(), beta=torch.tensor(float(beta)),
                loss=total.detach())
    return total, logs


# -- the noise models of a run ----------------------------------------------------------------
def noise_model_records(noise_model: MultiChannelNoiseModel,
                        paths: Sequence[str | os.PathLike] | None = None) -> list[dict]:
    """The noise models as plain data (one dict per channel), for a checkpoint.

    Each record holds the weights (as nested lists; float32 values round-trip exactly), the
    signal range, the variance floor, the channel name and the observation range; with
    ``paths``, also the file each came from and its SHA-256 at the time.
    """
    out = []
    for c, m in enumerate(noise_model.models):
        rec = {"weight": m.weight.detach().cpu().tolist(), "min_signal": m.min_signal,
               "max_signal": m.max_signal, "min_variance": m.min_variance,
               "channel_name": m.channel_name,
               "observation_range": (None if m.observation_range is None
                                     else list(m.observation_range))}
        if paths is not None:
            p = Path(paths[c]).expanduser()
            rec["file"] = str(paths[c])
            rec["sha256"] = file_sha256(p) if p.is_file() else None
        out.append(rec)
    return out


def noise_models_from_records(records, n_channels: int | None = None) -> MultiChannelNoiseModel:
    """Rebuild the noise models a checkpoint stores (:func:`noise_model_records`); a damaged
    record is one :class:`~musplit.errors.CheckpointError` line."""
    if not isinstance(records, (list, tuple)) or not records:
        raise CheckpointError("the checkpoint's noise models are not a list of records")
    models = []
    for c, rec in enumerate(records):
        try:
            obs = rec.get("observation_range")
            models.append(GaussianMixtureNoiseModel(
                torch.tensor(rec["weight"], dtype=torch.float32), rec["min_signal"],
                rec["max_signal"], rec["min_variance"], channel_name=rec.get("channel_name"),
                observation_range=None if obs is None else tuple(obs)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"the checkpoint's noise model of channel {c} is damaged "
                                  f"({type(e).__name__}: {e})") from None
    return MultiChannelNoiseModel(models, n_channels)


def training_noise_models(paths: Sequence[str], n_channels: int, *,
                          stored: list[dict] | None = None
                          ) -> tuple[MultiChannelNoiseModel, list[dict]]:
    """The frozen noise models a run trains with, and their records for its checkpoints.

    A new run reads ``paths`` (one file per channel; a count other than ``n_channels`` is one
    :class:`~musplit.errors.InputError` line naming both). A resumed run passes the records
    its trainer state holds (``stored``) and goes on with those, so a file changed or removed
    since the run started changes nothing (a changed file is named in a warning).
    """
    if stored is not None:
        model = noise_models_from_records(stored, n_channels)
        for rec in stored:
            f, digest = rec.get("file"), rec.get("sha256")
            if f and digest and Path(f).expanduser().is_file() \
                    and file_sha256(Path(f).expanduser()) != digest:
                log.warning("noise model %s changed since the run started; the resumed run "
                            "goes on with the one it started with (stored in its checkpoints)",
                            f)
        records = stored
    else:
        model = load_noise_models(list(paths), n_channels)
        records = noise_model_records(model, list(paths))
    for m in model.models:
        m.freeze()
        m.count_clamped = False  # noise_model_nll measures the fraction outside per step
    return model, records


def check_noise_model_data(noise_model: MultiChannelNoiseModel, targets, train_indices,
                           *, clip_quantile: float = 1.0, max_frames: int = 4,
                           max_pixels: int = 1_000_000) -> list[str]:
    """Warn where the training targets do not look like what the noise models were fitted on.

    Each channel's training targets (a few training frames) are compared with its model's
    fitted observation range (:func:`musplit.noise.check_range`: other intensity units, a
    model of another channel); a clip quantile below 1 is named too, because clipped noisy
    pixels are scored as if they had been observed. Returns the warnings (also logged).
    """
    notes = []
    if clip_quantile < 1.0:
        notes.append(f"data.clip_quantile is {clip_quantile}: the brightest noisy target pixels "
                     "are clipped before the noise model scores them; data.clip_quantile: 1.0 "
                     "keeps them as acquired")
        log.warning("%s", notes[-1])
    idx = list(train_indices)[:max_frames]
    if not idx:
        return notes
    frames = [np.asarray(targets[i], dtype=np.float32) for i in idx]
    for c, model in enumerate(noise_model.models):
        values = np.concatenate([f[..., c].ravel() for f in frames])
        if values.size > max_pixels:
            values = values[:: -(-values.size // max_pixels)]
        report = check_range(model, values, kind="observation", warn=False)
        if not report.ok:
            notes.append(f"channel {c}: {report.message}")
            log.warning("%s", notes[-1])
    return notes
