"""Detection fine-tuning: label subsets, the augmented target dataset and the Lightning loop.

docs/detection.md, "Fine-tuning" and "Fine-tuning" (protocol).
:func:`train_detector` builds a detector, optionally loads pre-trained encoder weights
(:func:`read_encoder_state`, :func:`musplit.pretrain.transfer.load_encoder`) and trains it with
AdamW and a per-step cosine schedule. Lightning is imported only when training runs.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from musplit.detect.frames import _fit_geometry, normalize_images
from musplit.detect.loss import detection_loss, heatmap_iou
from musplit.detect.models import build_detector
from musplit.detect.targets import make_targets
from musplit.errors import CheckpointError, InputError
from musplit.pretrain.colormap import pcolor
from musplit.pretrain.config import DetectionConfig
from musplit.pretrain.result import CHECKPOINT_KIND as PRETRAIN_CHECKPOINT_KIND
from musplit.pretrain.result import load_pretrained
from musplit.pretrain.transfer import load_encoder

log = logging.getLogger("musplit")

__all__ = ["label_subset", "read_encoder_state", "train_detector"]


def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a ``fraction`` of n frames; nested across fractions for one seed."""
    if not 0 < fraction <= 1:
        raise InputError(f"label fraction must be in (0, 1], got {fraction}")
    if n < 1:
        raise InputError("no training frames")
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 1729])).permutation(n)
    k = max(1, int(round(fraction * n)))
    return np.sort(perm[:k])


class _DetectionData(torch.utils.data.Dataset):
    """Normalised frames + labels -> (x, targets), with label-exact flips / 90° rotations."""

    def __init__(self, u: np.ndarray, labels: np.ndarray, cfg: DetectionConfig,
                 pcolor: bool = False) -> None:
        self.u, self.labels, self.cfg, self.pcolor = u, labels, cfg, pcolor

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, item):
        i, aug = item
        u, lab = self.u[i], self.labels[i]
        if self.cfg.augment:
            k, flip = aug % 4, aug // 4
            u, lab = np.rot90(u, k), np.rot90(lab, k)
            if flip:
                u, lab = u[:, ::-1], lab[:, ::-1]
        u = np.ascontiguousarray(u, np.float32)
        t = make_targets(np.ascontiguousarray(lab), self.cfg.scheme, self.cfg.relative_sizes,
                         self.cfg.image_size)
        x = torch.from_numpy(u)[None].expand(3, -1, -1).contiguous()
        tg = {"heatmap": torch.from_numpy(t["heatmap"]), "sizes": torch.from_numpy(t["sizes"]),
              "mask": torch.from_numpy(t["mask"])}
        if self.pcolor:
            tg["pcolor"] = torch.as_tensor(np.asarray(pcolor(u), np.float32))
        return x, tg


class _Sampler(torch.utils.data.Sampler):
    """steps x batch (index, augmentation) pairs drawn from a seeded generator."""

    def __init__(self, n: int, total: int, seed: int) -> None:
        self.n, self.total, self.seed = n, total, seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        g = np.random.default_rng(np.random.SeedSequence([self.seed, 31337]))
        idx = g.integers(0, self.n, self.total)
        aug = g.integers(0, 8, self.total)
        return iter(zip(idx.tolist(), aug.tolist(), strict=True))


def _make_module_class():
    import lightning as L

    class DetectorModule(L.LightningModule):
        """Lightning wrapper: loss, AdamW + per-step cosine schedule, frozen backbone."""

        def __init__(self, model: nn.Module, cfg: DetectionConfig, steps: int) -> None:
            super().__init__()
            self.model, self.cfg, self.total_steps = model, cfg, steps
            self.history: dict[str, list] = {"step": [], "loss": [], "heatmap_loss": [],
                                             "size_loss": [], "lr": [], "heatmap_iou": []}
            if cfg.backbone_frozen:
                for p in model.encoder.parameters():
                    p.requires_grad_(False)

        def on_train_batch_start(self, batch, batch_idx):
            if self.cfg.backbone_frozen:
                self.model.encoder.eval()

        def training_step(self, batch, batch_idx):
            x, tg = batch
            out = self.model(x)
            parts = detection_loss(out, tg, self.cfg)
            h = self.history
            h["step"].append(int(self.global_step))
            h["loss"].append(float(parts["loss"].detach()))
            h["heatmap_loss"].append(float(parts["heatmap"].detach()))
            h["size_loss"].append(float(parts["size"].detach()))
            h["lr"].append(float(self.optimizers().param_groups[0]["lr"]))
            a, b = heatmap_iou(out["heatmap"].detach().float().cpu(), tg["heatmap"].cpu())
            h["heatmap_iou"].append(a / b if b else 1.0)
            return parts["loss"]

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, self.total_steps), eta_min=self.cfg.lr_min)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return DetectorModule


def __getattr__(name: str):
    if name == "DetectorModule":  # built lazily so that importing this module stays light
        return _make_module_class()
    raise AttributeError(name)


def read_encoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights to initialise a detector from (``--init``): a musplit checkpoint or a state dict.

    Accepts a payload with ``encoder_state_dict`` (preferred) or ``state_dict``, or a plain
    mapping of tensors. Loaded with ``weights_only=True``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"init checkpoint {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused / corrupt file: the user's file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"init checkpoint {p} could not be loaded safely ({first})") \
            from None
    if isinstance(payload, dict) and isinstance(payload.get("extra"), dict) and \
            payload["extra"].get("kind") == PRETRAIN_CHECKPOINT_KIND:
        # A `musplit pretrain` checkpoint: its encoder weights, without the pretext head.
        return load_pretrained(p).encoder_state
    if isinstance(payload, dict):
        for key in ("encoder_state_dict", "state_dict"):
            if isinstance(payload.get(key), dict):
                return payload[key]
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
    raise CheckpointError(f"{p} holds no state dict (expected 'encoder_state_dict' or "
                          "'state_dict')")


def _init_scope(model: nn.Module, state: dict, scope: str) -> str:
    if scope != "auto":
        return scope
    if getattr(model, "variant", "") == "cnn" and any(k.startswith("neck.") for k in state):
        return "all"  # a CNN pretext model: transfer all but the replaced final convs
    return "encoder"


def train_detector(images: np.ndarray, labels: np.ndarray, config: DetectionConfig | None = None,
                   *, encoder_state: dict[str, torch.Tensor] | None = None,
                   init: str | os.PathLike | None = None, init_scope: str = "auto",
                   steps: int | None = None, label_fraction: float = 1.0,
                   seed: int | None = None, batch: int | None = None,
                   accelerator: str = "auto") -> tuple[nn.Module, dict]:
    """Fine-tune a detector on frames with instance masks (docs/detection.md, "Fine-tuning";
    docs/detection.md, "Experiment protocol").

    Parameters
    ----------
    images : (N, H, W) raw frames (any real dtype); min-max normalised per frame.
    labels : (N, H, W) integer instance masks; resized with nearest neighbour if the frames
        are not at the model's image size.
    config : :class:`DetectionConfig` (model, loss, optimiser, ...); default ViT at 384.
    encoder_state : pre-trained weights (from :func:`musplit.pretrain.models.encoder_state_dict`
        or a full pretext model's state dict), loaded strictly before training.
    init : path of a checkpoint to read ``encoder_state`` from (``--init``).
    init_scope : "encoder", "all" (CNN pretext: all but the heads' final convs) or "auto".
    steps, batch, seed : override the config's step budget, batch size and seed.
    label_fraction : train on a nested random fraction of the frames (fixed by ``seed``).

    Returns
    -------
    model : the fine-tuned detector (eval mode, on CPU) with ``detection_config`` attached.
    log : dict with per-step ``loss``, ``heatmap_loss``, ``size_loss``, ``lr``,
        ``heatmap_iou``, the ``subset`` indices, the ``load_report`` and the config.
    """
    import lightning as L

    cfg = config or DetectionConfig()
    upd = {k: v for k, v in (("steps", steps), ("batch", batch), ("seed", seed)) if v is not None}
    if upd:
        cfg = DetectionConfig.model_validate({**cfg.model_dump(), **upd})
    imgs, labs = _fit_geometry(images, labels, cfg.image_size)
    subset = label_subset(len(imgs), label_fraction, cfg.seed)
    u = normalize_images(imgs[subset])
    labs = labs[subset]
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg)
    report = None
    if init is not None:
        if encoder_state is not None:
            raise InputError("give either an encoder state or an init checkpoint, not both")
        encoder_state = read_encoder_state(init)
    if encoder_state is not None:
        scope = _init_scope(model, encoder_state, init_scope)
        report = load_encoder(model, encoder_state, strict=True, scope=scope).as_dict()
        report["scope"] = scope
        log.info("loaded pre-trained weights: %s", report)
    aux = bool(getattr(model.cfg, "aux_pcolor", False))
    data = _DetectionData(u, labs, cfg, pcolor=aux)
    loader = torch.utils.data.DataLoader(
        data, batch_size=cfg.batch, sampler=_Sampler(len(data), cfg.steps * cfg.batch, cfg.seed),
        num_workers=0)
    module = _make_module_class()(model, cfg, cfg.steps)
    _quiet_lightning()
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=cfg.steps, max_epochs=-1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, deterministic=False)
    trainer.fit(module, loader)
    model = module.model.cpu().eval()
    model.detection_config = cfg
    hist = dict(module.history)
    hist.update({"subset": subset.tolist(), "label_fraction": label_fraction,
                 "load_report": report, "config": cfg.model_dump(mode="json"),
                 "steps": cfg.steps})
    return model, hist


def _quiet_lightning() -> None:
    for pattern in (r".*does not have many workers.*", r".*dataloader is not resumable.*",
                    r".*isinstance\(treespec, LeafSpec\).*", r".*GPU available but not used.*",
                    r".*`max_epochs` was not set.*", r".*Total length of .* across ranks.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch",
                 "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
