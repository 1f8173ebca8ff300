"""The pre-training loop (docs/pretraining.md, "Optimisation and augmentation";
docs/pretraining.md, "µSplit pre-training").

:func:`pretrain` trains one pretext model on unlabelled frames for a fixed number of optimiser
steps and returns a :class:`PretrainResult` whose ``encoder_state`` is ready for transfer:

==================  ===========================================  ================================
model               pretext model                                transferred (key names)
==================  ===========================================  ================================
``ccf_vit``         PcolorMAE (token masks inside the model)      stem, patch embedding, ViT
                                                                  (relative to ``encoder``, for
                                                                  ``models.load_encoder``)
``ccf_cnn``         CellCentroidFormer with 3-channel pretext     all but the heads' final convs
                    heads (pixel masks)                           (SimCLR: stem and backbone)
``usplit_encoder``  µSplit encoder + pretext head                 the µSplit network's encoder
                                                                  keys (``load_pretrained_encoder``)
==================  ===========================================  ================================

Optimisation: AdamW (default betas, weight decay 0.01), learning rate ``lr`` at batch
16 scaled linearly with the batch, cosine annealing to ``lr_min`` stepped per optimiser step
(or per epoch in the reference-compatible schedule), optional linear warm-up. Seeds fix the
initialisation, the batch draws, augmentations and masks.

Checkpoints are musplit checkpoints (weights-only loadable), written atomically; they carry the
pre-training config, the data-manifest hash, the loss log and the key map used for transfer.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from musplit.data.context import apply_d4
from musplit.detect.models import CellCentroidFormer
from musplit.errors import InputError, MusplitError
from musplit.pretrain.augment import apply as apply_aug
from musplit.pretrain.augment import (
    augment_with_target,
    draw_params,
    photometric,
    simclr_params,
)
from musplit.pretrain.backbones import patchify
from musplit.pretrain.colormap import minmax_normalize
from musplit.pretrain.config import PcolorMAEConfig
from musplit.pretrain.masks import apply_mask, make_mask, token_mask
from musplit.pretrain.models import PcolorMAE
from musplit.pretrain.objectives import (
    ProjectionHead,
    edge_loss,
    edge_pos_weight,
    get_objective,
    make_target,
    nt_xent,
    reconstruction_loss,
)
from musplit.pretrain.pretext_config import PretrainConfig
from musplit.pretrain.result import (  # noqa: F401  (CHECKPOINT_KIND: old import path)
    CHECKPOINT_KIND,
    HEAD_PREFIX,
    PretrainResult,
    data_manifest_sha256,
    load_pretrained,
)
from musplit.pretrain.transfer import encoder_state_dict
from musplit.pretrain.usplit import UsplitPretext, UsplitPretextData, pretext_loss

log = logging.getLogger(__name__)

# PretrainResult, data_manifest_sha256 and load_pretrained live in musplit.pretrain.result and
# are re-exported here (their old import path).
__all__ = ["PretrainResult", "data_manifest_sha256", "load_pretrained", "lr_factor", "pretrain"]

# -- schedule ------------------------------------------------------------------------------
def lr_factor(step: int, total: int, config: PretrainConfig, steps_per_epoch: int = 1) -> float:
    """Learning rate at ``step`` (0-based) as a fraction of the peak (docs/pretraining.md,
    "Optimisation and augmentation").

    Cosine from the peak to ``lr_min`` over ``total`` steps (``schedule="cosine"``), over
    whole epochs (``"cosine_epoch"``: the rate changes once per epoch), or constant; a linear
    warm-up over the first ``warmup * total`` steps when asked.
    """
    peak = config.effective_lr
    floor = min(config.lr_min, peak) / peak
    warm = int(round(config.warmup * total))
    if warm and step < warm:
        return (step + 1) / warm
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine_epoch":
        t, n = step // steps_per_epoch, max(1, math.ceil(total / steps_per_epoch))
    else:
        t, n = step - warm, max(1, total - warm)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, n) / n))


# -- the pretext tasks ---------------------------------------------------------------------
class _Task:
    """One model family's pretext: ``module`` (all trained weights), ``batch``, ``loss``,
    ``transfer`` (encoder state, full state, key map)."""

    module: nn.Module

    def batch(self, size: int, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def loss(self, batch: dict, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def transfer(self) -> tuple[dict, dict, dict]:
        raise NotImplementedError


class _ImageTask(_Task):
    """ccf_vit and ccf_cnn: whole frames at ``image_size`` (per-sample data flow)."""

    def __init__(self, config: PretrainConfig, images: np.ndarray, device: torch.device):
        self.config, self.device = config, device
        self.obj = get_objective(config.pretext.objective)
        pt = config.pretext
        size = config.image_size
        frames = torch.from_numpy(images)
        if config.geometry == "resize":
            if tuple(frames.shape[-2:]) != (size, size):
                frames = F.interpolate(frames[:, None], size=(size, size), mode="bilinear",
                                       align_corners=False, antialias=False)[:, 0]
        elif min(frames.shape[-2:]) < size:
            raise InputError(f"geometry 'crop' needs frames of at least {size}x{size}, got "
                             f"{tuple(frames.shape[-2:])}")
        if pt.norm.scope == "frame":
            frames = minmax_normalize(frames, pt.norm.percentiles)
        self.frames = frames.contiguous()
        self.simclr = self.obj.loss == "ntxent"
        out_ch = max(self.obj.channels, 1)
        if config.model == "ccf_vit":
            mask = pt.mask
            ratio = mask.ratio if mask.kind == "tokens" else 0.0
            zero = bool(mask.kind == "tokens" and mask.zero_masked_pixels_before_stem)
            self.ratio = ratio
            mae = PcolorMAE(PcolorMAEConfig(
                vit=config.vit, decoder_dim=pt.decoder_dim, decoder_depth=pt.decoder_depth,
                decoder_heads=pt.decoder_heads, decoder_dim_head=pt.decoder_dim_head,
                decoder_mlp_dim=pt.decoder_mlp_dim, masking_ratio=ratio,
                zero_masked_pixels_before_stem=zero, out_channels=out_ch))
            if self.simclr:
                self.module = nn.ModuleDict({"encoder": mae.encoder, "projection": ProjectionHead(
                    config.vit.dim, tuple(pt.projection))})
            else:
                self.module = mae
        else:
            if self.simclr:
                det = CellCentroidFormer(config.cnn)
                enc = det.encoder
                self.module = nn.ModuleDict({"encoder": enc, "projection": ProjectionHead(
                    enc.out_channels, tuple(pt.projection))})
            else:
                sig = "sigmoid" if self.obj.target in ("pcolor", "gray") else None
                self.module = CellCentroidFormer(config.cnn, pretext=True,
                                                 pretext_channels=out_ch,
                                                 pretext_activation=sig)
        self.module.to(device)

    # -- data --------------------------------------------------------------------------
    def _frames(self, size: int, rng: np.random.Generator) -> Tensor:
        idx = torch.from_numpy(rng.integers(0, len(self.frames), size))
        x = self.frames[idx]
        s = self.config.image_size
        if tuple(x.shape[-2:]) != (s, s):  # geometry "crop"
            h, w = x.shape[-2:]
            tops, lefts = rng.integers(0, h - s + 1, size), rng.integers(0, w - s + 1, size)
            x = torch.stack([x[b, t : t + s, c : c + s] for b, (t, c) in
                             enumerate(zip(tops, lefts, strict=True))])
        if self.config.pretext.norm.scope == "image":
            x = minmax_normalize(x, self.config.pretext.norm.percentiles)
        return x

    def _target_fn(self):
        pt = self.config.pretext
        cm = pt.colormap
        return lambda v: make_target(pt.objective, v, cm.name if cm else "nipy_spectral",
                                     cm.quantize if cm else True)

    def _geometric(self, u: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        aug = self.config.augmentation
        fn = self._target_fn()
        if aug == "reference":
            params = draw_params(len(u), tuple(u.shape[-2:]), rng)
            return augment_with_target(u, params, mode=self.config.mode, target_fn=fn)
        if aug == "d4":
            u = torch.stack([apply_d4(v, int(rng.integers(0, 8))) for v in u])
        return u, fn(u)

    def batch(self, size: int, rng: np.random.Generator) -> dict:
        u = self._frames(size, rng)
        if self.simclr:
            views = []
            for _ in range(2):
                p = simclr_params(size, tuple(u.shape[-2:]), rng)
                views.append(photometric(apply_aug(u[:, None], p)[:, 0].clamp(0, 1), rng))
            return {"u": views[0], "u2": views[1]}
        u, target = self._geometric(u, rng)
        out = {"u": u, "target": target}
        mask = self.config.pretext.mask
        if self.config.model == "ccf_cnn":
            m = make_mask(mask, u.shape[-2], u.shape[-1], batch=size, rng=rng)
            out["mask"] = torch.from_numpy(m)
        return out

    # -- loss --------------------------------------------------------------------------
    def loss(self, batch: dict, gen: torch.Generator) -> Tensor:
        dev = self.device
        x = batch["u"].to(dev)[:, None].expand(-1, 3, -1, -1)
        if self.simclr:
            z = [self._embed(x), self._embed(batch["u2"].to(dev)[:, None].expand(-1, 3, -1, -1))]
            pt = self.config.pretext
            return nt_xent(z[0], z[1], pt.temperature,
                           intra_view_negatives=pt.intra_view_negatives)
        target = batch["target"].to(dev)
        if self.config.model == "ccf_vit":
            masked, _ = self._token_draw(x.shape[0], gen)
            out = self.module(x, target if self.obj.loss == "mse" else None,
                              masked_indices=masked)
            if self.obj.loss == "mse":
                return out.loss
            p = self.config.vit.patch_size
            bidx = torch.arange(x.shape[0], device=dev)[:, None]
            tgt = patchify(target, p)[bidx, out.masked_indices]
            w = edge_pos_weight(target).view(-1, 1, 1)
            return F.binary_cross_entropy_with_logits(out.pred.float(), tgt, pos_weight=w)
        mask = batch["mask"].to(dev)
        x = apply_mask(x, mask, fill=getattr(self.config.pretext.mask, "fill", 0.0))
        out = self.module(x)
        heads = (out["head_1"], out["head_2"])
        if self.obj.loss == "bce":
            return sum(edge_loss(h, target) for h in heads)
        region = self.config.pretext.loss_region
        return sum(reconstruction_loss(h, target, mask, region) for h in heads)

    def _token_draw(self, b: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n = self.module.num_patches
        masked, visible = token_mask(b, n, self.ratio, generator=gen)
        return masked.to(self.device), visible.to(self.device)

    def _embed(self, x: Tensor) -> Tensor:
        enc = self.module["encoder"](x)
        pooled = enc.mean(dim=1) if enc.ndim == 3 else enc.mean(dim=(-2, -1))
        return self.module["projection"](pooled)

    # -- transfer ------------------------------------------------------------------------
    def transfer(self) -> tuple[dict, dict, dict]:
        if self.simclr:
            enc = {k: v.detach().cpu().clone() for k, v in
                   self.module["encoder"].state_dict().items()}
            key_map = {f"encoder.{k}": k for k in enc}
        elif self.config.model == "ccf_vit":
            enc = encoder_state_dict(self.module, "encoder")
            key_map = {f"encoder.{k}": k for k in enc}
        else:
            enc = encoder_state_dict(self.module, "all")
            key_map = {k: k for k in enc}
        full = dict(enc)
        mapped = set(key_map)
        for k, v in self.module.state_dict().items():
            if k not in mapped:
                full[HEAD_PREFIX + k] = v.detach().cpu().clone()
        return enc, full, key_map


class _UsplitTask(_Task):
    """usplit_encoder (docs/pretraining.md, "µSplit pre-training")."""

    def __init__(self, config: PretrainConfig, images: np.ndarray, device: torch.device):
        self.config, self.device = config, device
        self.data = UsplitPretextData(images, config)
        pt = config.pretext
        self.module = UsplitPretext(config.usplit, pt.objective, config.scope,
                                    head_width=pt.head_width, projection=pt.projection).to(device)

    def batch(self, size: int, rng: np.random.Generator) -> dict:
        return self.data.sample(size, rng)

    def loss(self, batch: dict, gen: torch.Generator) -> Tensor:
        b = {k: v.to(self.device) for k, v in batch.items()}
        return pretext_loss(self.module, b, self.config)

    def transfer(self) -> tuple[dict, dict, dict]:
        enc = {k: v.cpu() for k, v in self.module.transfer_state().items()}
        full = {k: v.cpu() for k, v in self.module.checkpoint_state().items()}
        return enc, full, self.module.key_map()

    def stats(self) -> dict:
        d = self.data
        return {"clip_max": d.clip, "input_mean": d.mean, "input_std": d.std,
                "quantile": self.config.clip_quantile}


def _check_images(images) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"pre-training images must be (N, H, W), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise InputError(f"pre-training images must be real numbers, got dtype {arr.dtype}")
    if arr.shape[0] < 1 or min(arr.shape[1:]) < 1:
        raise InputError(f"pre-training images are empty: shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # float32 before any arithmetic
    if not np.isfinite(arr).all():
        raise InputError("pre-training images contain NaN or Inf pixels")
    return arr


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pretrain(config: PretrainConfig, images: np.ndarray, *, steps: int | None = None,
             seed: int = 0, progress: bool = False, device: str | torch.device | None = None
             ) -> PretrainResult:
    """Pre-train a pretext model on unlabelled frames.

    Parameters
    ----------
    config : PretrainConfig
        Model, objective, masks, optimisation.
    images : ndarray, shape (N, H, W)
        Unlabelled frames (superimposed inputs for ``usplit_encoder``), any real dtype (cast to
        float32; normalisation happens per image or frame as the config says).
    steps : int, optional
        Optimiser steps; default ``config.steps``, else ``config.epochs`` epochs of
        ``ceil(N / batch_size)`` steps. 0 with objective ``random`` (nothing to train).
    seed : int
        Seeds the initialisation, batch draws, augmentations and masks.
    progress : bool
        A tqdm bar (only when stderr is a terminal).
    device : optional
        Default CUDA when available, else CPU.

    Returns
    -------
    PretrainResult
    """
    if not isinstance(config, PretrainConfig):
        raise InputError(f"pretrain() takes a PretrainConfig, got {type(config).__name__}")
    arr = _check_images(images)
    n = arr.shape[0]
    per_epoch = max(1, math.ceil(n / config.batch_size))
    if steps is None:
        steps = config.steps if config.steps is not None else \
            (config.epochs * per_epoch if config.epochs is not None else None)
    obj = get_objective(config.pretext.objective)
    if obj.loss is None:
        steps = 0
    if steps is None:
        raise InputError("give the number of pre-training steps (steps=... or config.steps / "
                         "config.epochs)")
    if int(steps) < 0 or (obj.loss is not None and int(steps) < 1):
        raise InputError(f"steps must be >= 1, got {steps}")
    steps = int(steps)
    dev = _device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    gen = torch.Generator().manual_seed(seed + 1)
    manifest = data_manifest_sha256(arr)
    t0 = time.time()
    if obj.loss is None:  # random init: the fresh model is the "pre-trained" one
        cfg = config.model_copy(update={"pretext": config.pretext.model_copy(
            update={"objective": "pcolor"})})
        task: _Task = _make_task(cfg, arr, dev)
    else:
        task = _make_task(config, arr, dev)
    history: list[float] = []
    skipped = 0
    if steps:
        module = task.module
        module.train()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad],
                                lr=config.effective_lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, steps, config, per_epoch))
        bf16 = config.precision == "bf16-mixed"
        bar = _progress(steps, progress)
        bad_run = 0
        for _ in bar:
            batch = task.batch(config.batch_size, rng)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = task.loss(batch, gen)
            value = float(loss.detach())
            history.append(value)
            opt.zero_grad(set_to_none=True)
            if math.isfinite(value):
                loss.backward()
                opt.step()
                bad_run = 0
            else:
                skipped += 1
                bad_run += 1
                if bad_run >= 25:
                    raise MusplitError(f"pre-training diverged: {bad_run} consecutive steps had "
                                       "a non-finite loss; try a lower learning rate")
            sched.step()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        module.eval()
    enc, full, key_map = task.transfer()
    extra = {"n_images": int(n), "image_shape": list(arr.shape[1:]),
             "skipped_steps": skipped, "seconds": round(time.time() - t0, 2),
             "effective_lr": config.effective_lr, "device": dev.type,
             "precision": config.precision}
    if obj.name == "edge":
        extra["edge_backend"] = "skimage"
    if isinstance(task, _UsplitTask):
        extra["stats"] = task.stats()
    log.info("pre-trained %s/%s for %d steps in %.1f s (last loss %s)", config.model,
             obj.name, steps, time.time() - t0, f"{history[-1]:.4g}" if history else "-")
    return PretrainResult(config=config, encoder_state=enc, state_dict=full, key_map=key_map,
                          log=history, steps=steps, seed=seed, data_manifest_sha256=manifest,
                          extra=extra)


def _make_task(config: PretrainConfig, images: np.ndarray, device: torch.device) -> _Task:
    if config.model == "usplit_encoder":
        return _UsplitTask(config, images, device)
    return _ImageTask(config, images, device)


def _progress(steps: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return range(steps)
    return tqdm(range(steps), desc="pretrain", unit="step", leave=False)
