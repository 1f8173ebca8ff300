"""Pretext networks: PcolorMAE, the masked autoencoder of the ViT variant.

docs/pretraining.md, "Pretext models". The CNN variant's pretext model is
:class:`~musplit.detect.models.CellCentroidFormer` with ``pretext=True``; the shared encoders are
in :mod:`musplit.pretrain.backbones`, the detectors in :mod:`musplit.detect.models` and the weight
transfer between models in :mod:`musplit.pretrain.transfer`. Every model has an ``encoder``
submodule: the part that pre-training produces and detection fine-tuning consumes.

The names that used to live here (backbones, detectors, transfer) are re-exported, so
``from musplit.pretrain.models import CCFViT, load_encoder`` keeps working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from musplit.detect.models import (
    CCFViT,
    CellCentroidFormer,
    MobileViTBlock,
    MobileViTKBlock,
    build_detector,
)
from musplit.errors import InputError
from musplit.pretrain.backbones import (  # noqa: F401  (Attention..: old import path)
    Attention,
    ContextBlock,
    EfficientNetV2STrunk,
    FeedForward,
    Transformer,
    ViTEncoder,
    patchify,
    posemb_sincos_2d,
    unpatchify,
)
from musplit.pretrain.config import (  # noqa: F401  (the configs: old import path)
    CCFViTConfig,
    CellCentroidFormerConfig,
    PcolorMAEConfig,
    ViTConfig,
)
from musplit.pretrain.transfer import LoadReport, encoder_state_dict, load_encoder

__all__ = [
    "CCFViT",
    "CellCentroidFormer",
    "ContextBlock",
    "EfficientNetV2STrunk",
    "LoadReport",
    "MobileViTBlock",
    "MobileViTKBlock",
    "PcolorMAE",
    "PcolorMAEOutput",
    "ViTEncoder",
    "build_detector",
    "count_parameters",
    "encoder_state_dict",
    "load_encoder",
    "patchify",
    "posemb_sincos_2d",
    "unpatchify",
]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class PcolorMAEOutput:
    """What one PcolorMAE forward pass returns.

    loss : scalar MSE over the predicted positions (masked tokens; all tokens when r = 0).
    pred : (B, M, p*p*C_out) predicted patch vectors at ``masked_indices``.
    target : (B, M, p*p*C_out) target patch vectors at the same positions.
    masked_indices : (B, M) token indices that were predicted. unmasked_indices : (B, N - M).
    """

    loss: torch.Tensor | None
    pred: torch.Tensor
    target: torch.Tensor | None
    masked_indices: torch.Tensor
    unmasked_indices: torch.Tensor


class PcolorMAE(nn.Module):
    """Masked autoencoder that regresses pseudo-colour patches of dropped tokens
    (docs/pretraining.md, "Pretext models").

    ``forward(img, target)`` drops ``floor(r N)`` tokens per sample (argsort of uniform noise, or
    the given ``masked_indices``), encodes the visible ones, decodes visible + mask tokens with a
    learned decoder position table and predicts the masked patch vectors. With r = 0 nothing is
    dropped and every patch is predicted (vit-pytorch forbids this).
    """

    def __init__(self, cfg: PcolorMAEConfig | None = None, **overrides) -> None:
        super().__init__()
        if cfg is None:
            cfg = PcolorMAEConfig(**overrides)
        elif overrides:
            cfg = cfg.model_copy(update=overrides)
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg.vit)
        v = cfg.vit
        d = cfg.decoder_dim
        self.enc_to_dec = nn.Identity() if d == v.dim else nn.Linear(v.dim, d)
        self.mask_token = nn.Parameter(torch.randn(d))
        self.decoder_pos_emb = nn.Embedding(self.encoder.num_patches, d)
        self.decoder = Transformer(d, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_dim_head,
                                   cfg.decoder_mlp_dim)
        self.to_pixels = nn.Linear(d, cfg.out_channels * v.patch_size ** 2)

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    def num_masked(self, ratio: float | None = None) -> int:
        r = self.cfg.masking_ratio if ratio is None else ratio
        return int(math.floor(r * self.num_patches))

    def sample_mask(self, batch: int, ratio: float | None = None,
                    generator: torch.Generator | None = None,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample random (masked, unmasked) token indices, each ``(B, M)`` / ``(B, N-M)``."""
        n = self.num_patches
        m = self.num_masked(ratio)
        noise = torch.rand(batch, n, generator=generator, device=device)
        perm = noise.argsort(dim=-1)
        return perm[:, :m], perm[:, m:]

    def pixel_mask(self, masked_indices: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` float mask, 1 on the pixels of masked patches."""
        b = masked_indices.shape[0]
        flags = torch.zeros(b, self.num_patches, device=masked_indices.device)
        flags.scatter_(1, masked_indices, 1.0)
        g, p = self.encoder.grid, self.cfg.vit.patch_size
        return flags.reshape(b, 1, g, g).repeat_interleave(p, 2).repeat_interleave(p, 3)

    def forward(self, img: torch.Tensor, target: torch.Tensor | None = None,
                masked_indices: torch.Tensor | None = None, ratio: float | None = None,
                generator: torch.Generator | None = None) -> PcolorMAEOutput:
        """Run the MAE.

        Parameters
        ----------
        img : (B, 3, H, W) network input X = (u, u, u).
        target : (B, C_out, H, W) target image (pcolor T, gray, edges); patchified like the
            input. None skips the loss.
        masked_indices : (B, M) token indices to drop; default: a fresh random draw.
        ratio : masking ratio for the random draw (default: the config's).
        """
        enc = self.encoder
        enc.check_input(img)
        b = img.shape[0]
        n = self.num_patches
        if masked_indices is None:
            masked_indices, unmasked_indices = self.sample_mask(b, ratio, generator, img.device)
        else:
            masked_indices = masked_indices.to(img.device).long()
            if masked_indices.ndim != 2 or masked_indices.shape[0] != b:
                raise InputError(f"masked_indices must be (B, M), got "
                                 f"{tuple(masked_indices.shape)}")
            keep = torch.ones(b, n, dtype=torch.bool, device=img.device)
            keep.scatter_(1, masked_indices, False)
            counts = keep.sum(1)
            if not bool((counts == counts[0]).all()) or int(counts[0]) != n - \
                    masked_indices.shape[1]:
                raise InputError("masked_indices must hold M distinct tokens per sample")
            unmasked_indices = keep.nonzero()[:, 1].reshape(b, -1)
        m = masked_indices.shape[1]
        x = img
        if self.cfg.zero_masked_pixels_before_stem and m > 0:
            x = img * (1.0 - self.pixel_mask(masked_indices).to(img.dtype))
        tokens = enc.embed(x)
        bidx = torch.arange(b, device=img.device)[:, None]
        visible = tokens[bidx, unmasked_indices]
        encoded = enc.transformer(visible)
        dec_vis = self.enc_to_dec(encoded) + self.decoder_pos_emb(unmasked_indices)
        dec_tokens = torch.empty(b, n, dec_vis.shape[-1], dtype=dec_vis.dtype, device=img.device)
        dec_tokens[bidx, unmasked_indices] = dec_vis
        if m > 0:
            mask_tokens = self.mask_token.to(dec_vis.dtype) + self.decoder_pos_emb(masked_indices)
            dec_tokens[bidx, masked_indices] = mask_tokens
            pred_idx = masked_indices
        else:
            pred_idx = torch.arange(n, device=img.device).expand(b, n)
        decoded = self.decoder(dec_tokens)
        pred = self.to_pixels(decoded[bidx, pred_idx])
        tgt = None
        loss = None
        if target is not None:
            s = self.cfg.vit.image_size
            if target.ndim != 4 or tuple(target.shape) != (b, self.cfg.out_channels, s, s):
                raise InputError(f"target must be (B, {self.cfg.out_channels}, {s}, {s}), got "
                                 f"{tuple(target.shape)}")
            tgt = patchify(target, self.cfg.vit.patch_size)[bidx, pred_idx]
            loss = F.mse_loss(pred.float(), tgt.float())
        return PcolorMAEOutput(loss=loss, pred=pred, target=tgt, masked_indices=pred_idx,
                               unmasked_indices=unmasked_indices)

    def reassemble(self, out: PcolorMAEOutput, target: torch.Tensor) -> torch.Tensor:
        """Target image with the predicted patches pasted in at the masked positions.

        This is the image the logged SSIM compares with ``target`` (not the masked tokens as an
        image).
        """
        p = self.cfg.vit.patch_size
        t = patchify(target, p).clone()
        bidx = torch.arange(t.shape[0], device=t.device)[:, None]
        t[bidx, out.masked_indices] = out.pred.to(t.dtype)
        return unpatchify(t, p, target.shape[-2], target.shape[-1], target.shape[1])
