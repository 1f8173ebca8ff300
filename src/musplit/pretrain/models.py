"""PCMC networks: ContextBlock stem, ViT / PcolorMAE, MobileViT blocks, CCFViT, CellCentroidFormer.

Spec/pcmc.md §5 (ContextBlock), §6 (pretext models), §9.1 (detectors). Everything is
channels-first: images are ``(B, C, H, W)``, token sequences ``(B, N, D)`` in row-major (h, w)
order, patch vectors laid out as (p1, p2, c).

Every model has an ``encoder`` submodule: the part that pre-training produces and detection
fine-tuning consumes (ContextBlock + patch embedding + ViT for the ViT variant; ContextBlock +
truncated EfficientNetV2-S for the CNN variant). :func:`encoder_state_dict` and
:func:`load_encoder` move it between models with a strict, reported load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from musplit.errors import CheckpointError, InputError
from musplit.pretrain.config import (
    CCFViTConfig,
    CellCentroidFormerConfig,
    PcolorMAEConfig,
    ViTConfig,
)

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


# -- §5 ContextBlock -----------------------------------------------------------------------
class ContextBlock(nn.Module):
    """Intensity-gated local-contrast stem (§5): ``(r, g, b) -> (r', g, b')``, 222 parameters.

    ``r' = sigmoid(h_r(r) * g + g)`` with ``h_r = Conv1x1(10->1) o Conv3x3(1->10)`` (both with
    bias, no nonlinearity between them: faithful to both references), likewise for ``b``; the
    green channel passes through unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.h_r = nn.Sequential(nn.Conv2d(1, 10, 3, padding=1), nn.Conv2d(10, 1, 1))
        self.h_b = nn.Sequential(nn.Conv2d(1, 10, 3, padding=1), nn.Conv2d(10, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"ContextBlock expects (B, 3, H, W), got {tuple(x.shape)}")
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        r2 = torch.sigmoid(self.h_r(r) * g + g)
        b2 = torch.sigmoid(self.h_b(b) * g + g)
        return torch.cat([r2, g, b2], dim=1)


# -- patches and position embedding -------------------------------------------------------
def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, p*p*C)``: tokens row-major over (h, w), vectors as (p1, p2, c)."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise InputError(f"image {h}x{w} is not divisible by the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int | None = None,
               channels: int | None = None) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, p*p*C) -> (B, C, H, W)``."""
    width = height if width is None else width
    b, n, d = tokens.shape
    gh, gw = height // patch, width // patch
    if gh * gw != n or height % patch or width % patch:
        raise InputError(f"{n} tokens of patch {patch} do not tile a {height}x{width} image")
    c = channels if channels is not None else d // (patch * patch)
    if c * patch * patch != d:
        raise InputError(f"token width {d} is not patch^2 x channels ({patch}^2 x {c})")
    x = tokens.reshape(b, gh, gw, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, height, width)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding ``(h*w, dim)`` (§6.2, Beyer et al. 2022).

    ``omega_k = temperature^(-k / (dim/4 - 1))``; concatenates sin(x w), cos(x w), sin(y w),
    cos(y w), x first, for tokens in row-major (y, x) order.
    """
    if dim % 4:
        raise InputError(f"sin-cos embedding needs dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    q = dim // 4
    omega = torch.arange(q, dtype=torch.float64) / max(q - 1, 1)
    omega = 1.0 / (temperature ** omega)
    yw = y.flatten()[:, None].double() * omega[None, :]
    xw = x.flatten()[:, None].double() * omega[None, :]
    return torch.cat([xw.sin(), xw.cos(), yw.sin(), yw.cos()], dim=1).float()


# -- transformer (pre-norm, vit-pytorch style) ---------------------------------------------
class Attention(nn.Module):
    """LN -> MHSA (qkv without bias, output Linear with bias), scale 1/sqrt(dim_head)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.heads, -1)
        q, k, v = (t.reshape(shape).transpose(-3, -2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training
                                           else 0.0)
        o = o.transpose(-3, -2).reshape(*x.shape[:-1], -1)
        return self.to_out(o)


class FeedForward(nn.Module):
    """LN -> Linear -> activation -> Linear (dropout after each Linear)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), act(),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm blocks ``x + Attn(x)``, ``x + MLP(x)``; optional final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 act: type[nn.Module] = nn.GELU, dropout: float = 0.0,
                 final_norm: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, dropout),
                           FeedForward(dim, mlp_dim, act, dropout)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


# -- §6.2 ViT encoder and PcolorMAE --------------------------------------------------------
class ViTEncoder(nn.Module):
    """ContextBlock -> patchify -> LN/Linear/LN embedding + fixed sin-cos -> Transformer.

    The sin-cos table is a non-persistent buffer (derived from the config), so state dicts do
    not depend on the image size.
    """

    def __init__(self, cfg: ViTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ViTConfig()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.num_patches = self.grid * self.grid
        patch_dim = cfg.channels * cfg.patch_size ** 2
        self.patch_dim = patch_dim
        self.stem = ContextBlock()
        self.to_patch_embedding = nn.Sequential(nn.LayerNorm(patch_dim),
                                                nn.Linear(patch_dim, cfg.dim),
                                                nn.LayerNorm(cfg.dim))
        self.register_buffer("pos_embedding",
                             posemb_sincos_2d(self.grid, self.grid, cfg.dim), persistent=False)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim,
                                       final_norm=cfg.final_norm)

    def check_input(self, x: torch.Tensor) -> None:
        s = self.cfg.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.cfg.channels, s, s):
            raise InputError(f"expected input (B, {self.cfg.channels}, {s}, {s}), got "
                             f"{tuple(x.shape)}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, patchify and embed: ``(B, 3, H, W) -> (B, N, dim)`` with positions added."""
        self.check_input(x)
        tokens = self.to_patch_embedding(patchify(self.stem(x), self.cfg.patch_size))
        return tokens + self.pos_embedding.to(tokens.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens, no masking: ``(B, 3, H, W) -> (B, N, dim)``."""
        return self.transformer(self.embed(x))


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
    """Masked autoencoder that regresses pseudo-colour patches of dropped tokens (§6.2, §4.2).

    ``forward(img, target)`` drops ``floor(r N)`` tokens per sample (argsort of uniform noise, or
    the given ``masked_indices``), encodes the visible ones, decodes visible + mask tokens with a
    learned decoder position table and predicts the masked patch vectors. With r = 0 nothing is
    dropped and every patch is predicted (§4.4; vit-pytorch forbids this).
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

        This is the image the logged SSIM compares with ``target`` (§6.2; defect 4).
        """
        p = self.cfg.vit.patch_size
        t = patchify(target, p).clone()
        bidx = torch.arange(t.shape[0], device=t.device)[:, None]
        t[bidx, out.masked_indices] = out.pred.to(t.dtype)
        return unpatchify(t, p, target.shape[-2], target.shape[-1], target.shape[1])


# -- §9.1.1 MobileViT (vit-pytorch flavour) ------------------------------------------------
def _conv_bn_silu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class MobileViTBlock(nn.Module):
    """MobileViT block, vit-pytorch style (§9.1.1).

    Conv3x3-BN-SiLU, Conv1x1-BN-SiLU to ``dim``, unfold into ``patch x patch`` patches as a
    batch of ``patch^2`` sequences (one per intra-patch position, one token per patch),
    Transformer (SiLU MLP), fold, Conv1x1-BN-SiLU back to ``channel``, concatenate with the
    input, Conv3x3(2 channel -> channel)-BN-SiLU.
    """

    def __init__(self, dim: int = 256, depth: int = 2, channel: int = 256, kernel: int = 3,
                 patch: int = 16, mlp_dim: int = 1024, heads: int = 4, dim_head: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.patch = patch
        self.conv1 = _conv_bn_silu(channel, channel, kernel)
        self.conv2 = _conv_bn_silu(channel, dim, 1)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, act=nn.SiLU,
                                       dropout=dropout)
        self.conv3 = _conv_bn_silu(dim, channel, 1)
        self.conv4 = _conv_bn_silu(2 * channel, channel, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        x = self.conv2(self.conv1(x))
        b, d, h, w = x.shape
        p = self.patch
        if h % p or w % p:
            raise InputError(f"MobileViT patch {p} does not tile a {h}x{w} feature map")
        gh, gw = h // p, w // p
        # b d (gh p) (gw p) -> b (p p) (gh gw) d
        t = x.reshape(b, d, gh, p, gw, p).permute(0, 3, 5, 2, 4, 1).reshape(b, p * p, gh * gw, d)
        t = self.transformer(t)
        x = t.reshape(b, p, p, gh, gw, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        x = self.conv3(x)
        return self.conv4(torch.cat([x, y], dim=1))


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (Keras ``LayerNormalization(axis=-1)``)."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _KerasMHA(nn.Module):
    """Keras MultiHeadAttention: q/k/v/out projections with bias, ``key_dim`` per head."""

    def __init__(self, dim: int, heads: int, key_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, heads * key_dim)
        self.k = nn.Linear(dim, heads * key_dim)
        self.v = nn.Linear(dim, heads * key_dim)
        self.out = nn.Linear(heads * key_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training
                                           else 0.0)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


class _KerasTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _KerasMHA(dim, heads, dim, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim), nn.SiLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTKBlock(nn.Module):
    """MobileViT block, Keras flavour of the TF CellCentroidFormer (§9.1.2).

    Conv3x3(d)+swish, Conv1x1(d)+swish, ``depth`` transformer blocks with **global** attention
    over all H*W positions (2 heads, key dim d, dropout 0.1), Conv1x1(C_in)+swish, concatenate
    with the input, Conv3x3(d)+swish. Output has ``dim`` channels.
    """

    def __init__(self, in_channels: int, dim: int, depth: int = 2, heads: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), nn.SiLU())
        self.conv2 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.SiLU())
        self.blocks = nn.ModuleList(_KerasTransformerBlock(dim, heads, dropout)
                                    for _ in range(depth))
        self.conv3 = nn.Sequential(nn.Conv2d(dim, in_channels, 1), nn.SiLU())
        self.conv4 = nn.Sequential(nn.Conv2d(2 * in_channels, dim, 3, padding=1), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        z = self.conv2(self.conv1(x))
        b, d, h, w = z.shape
        t = z.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t = blk(t)
        z = t.transpose(1, 2).reshape(b, d, h, w)
        z = self.conv3(z)
        return self.conv4(torch.cat([z, y], dim=1))


# -- §9.1.1 CCFViT -------------------------------------------------------------------------
class _LayerNormCHW(nn.Module):
    """LayerNorm over (C, H, W) with its shape derived from the config (defect 5)."""

    def __init__(self, c: int, h: int, w: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([c, h, w])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class _ViTHead(nn.Module):
    """[Conv1x1 -> ReLU -> bilinear x2] x n_up (+ optional 2x Conv3x3-BN-ReLU) -> Conv1x1 -> C."""

    def __init__(self, channels: int, out: int, n_up: int, add_3x3: bool,
                 activation: str | None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_up):
            layers += [nn.Conv2d(channels, channels, 1), nn.ReLU(),
                       nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            if add_3x3:
                for _ in range(2):
                    layers += [nn.Conv2d(channels, channels, 3, padding=1),
                               nn.BatchNorm2d(channels), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, out, 1)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.out(self.body(x))
        if self.activation == "sigmoid":
            x = torch.sigmoid(x)
        elif self.activation == "relu":
            x = F.relu(x)
        return x


class CCFViT(nn.Module):
    """Hybrid detector: ContextBlock + ViT (all tokens) + MobileViT neck + two heads (§9.1.1).

    ``forward(x)`` returns a dict with ``heatmap`` (B, 1, H, W) and ``sizes`` (B, 2, H, W;
    channel 0 height, channel 1 width), and ``pcolor`` (B, 3, H, W) when ``aux_pcolor``.
    """

    variant = "vit"

    def __init__(self, cfg: CCFViTConfig | None = None, **overrides) -> None:
        super().__init__()
        if cfg is None:
            cfg = CCFViTConfig(**overrides)
        elif overrides:
            cfg = CCFViTConfig.model_validate({**cfg.model_dump(), **overrides})
        self.cfg = cfg
        v = cfg.vit
        self.encoder = ViTEncoder(v)
        g = self.encoder.grid
        c = cfg.neck_dim

        def mvit():
            return MobileViTBlock(dim=c, depth=cfg.mvit_depth, channel=c, kernel=3,
                                  patch=cfg.mvit_patch, mlp_dim=cfg.mvit_mlp_dim,
                                  heads=cfg.mvit_heads, dim_head=cfg.mvit_dim_head)

        def conv_ln(size):
            n = 2 if cfg.neck_dual_conv else 1
            mods: list[nn.Module] = []
            for _ in range(n):
                mods += [nn.Conv2d(c, c, 3, padding=1), _LayerNormCHW(c, size, size)]
            return nn.Sequential(*mods)

        self.neck = nn.Sequential(
            nn.Conv2d(v.dim, c, 1), mvit(), conv_ln(g),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            mvit(), conv_ln(2 * g))
        n_up = int(round(math.log2(v.patch_size))) - 1
        act = cfg.heads_add_activation
        self.heatmap_head = _ViTHead(c, 1, n_up, cfg.heads_add_3x3_convs,
                                     "sigmoid" if act else None)
        self.size_head = _ViTHead(c, 2, n_up, cfg.heads_add_3x3_convs, "relu" if act else None)
        if cfg.aux_pcolor:
            self.aux_decoder = Transformer(v.dim, cfg.aux_depth, 8, 64, cfg.aux_mlp_dim)
            self.aux_to_pixels = nn.Linear(v.dim, 3 * v.patch_size ** 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.encoder(x)
        b, n, d = tokens.shape
        g = self.encoder.grid
        feat = tokens.transpose(1, 2).reshape(b, d, g, g)
        f = self.neck(feat)
        out = {"heatmap": self.heatmap_head(f), "sizes": self.size_head(f)}
        if self.cfg.aux_pcolor:
            s = self.cfg.vit.image_size
            pix = self.aux_to_pixels(self.aux_decoder(tokens))
            out["pcolor"] = unpatchify(pix, self.cfg.vit.patch_size, s, s, 3)
        return out


# -- §9.1.2 EfficientNetV2-S trunk (written from the paper's table, random init) -------------
def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class _ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                             bias=False), _bn(cout)]
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


class _StochasticDepth(nn.Module):
    """Drop the residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep


class _FusedMBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, sd: float) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        exp = cin * expand
        if expand != 1:
            self.block = nn.Sequential(_ConvBNAct(cin, exp, 3, stride),
                                       _ConvBNAct(exp, cout, 1, act=False))
        else:
            self.block = nn.Sequential(_ConvBNAct(cin, cout, 3, stride))
        self.stochastic_depth = _StochasticDepth(sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + self.stochastic_depth(y) if self.use_res else y


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, sd: float) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        exp = _make_divisible(cin * expand)
        self.block = nn.Sequential(
            _ConvBNAct(cin, exp, 1),
            _ConvBNAct(exp, exp, 3, stride, groups=exp),
            _SqueezeExcitation(exp, max(1, cin // 4)),
            _ConvBNAct(exp, cout, 1, act=False))
        self.stochastic_depth = _StochasticDepth(sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + self.stochastic_depth(y) if self.use_res else y


# (block, expand, stride, in, out, layers) of EfficientNetV2-S (Tan & Le 2021, Table 4).
EFFNETV2_S_STAGES = (
    ("fused", 1, 1, 24, 24, 2),
    ("fused", 4, 2, 24, 48, 4),
    ("fused", 4, 2, 48, 64, 4),
    ("mb", 4, 2, 64, 128, 6),
    ("mb", 6, 1, 128, 160, 9),
    ("mb", 6, 2, 160, 256, 15),
)


class EfficientNetV2STrunk(nn.Module):
    """EfficientNetV2-S truncated after ``block6a_expand_activation`` (§9.1.2).

    Stem Conv3x3/2 (24) + stages 1-5 (24, 48, 64, 128, 160 channels; stride 16 in all), then the
    1x1 expansion conv + BN + SiLU of the first block of the 256-channel stage (160 -> 960). At
    384^2 the output is (960, 24, 24). Layer names follow torchvision's ``features`` numbering
    (``features.0`` stem, ``features.1-5`` stages, ``features.6`` the expansion) so that an
    ImageNet checkpoint could be mapped. ``width_mult`` / ``depth_mult`` shrink it for tests.
    """

    def __init__(self, width_mult: float = 1.0, depth_mult: float = 1.0,
                 stochastic_depth: float = 0.2) -> None:
        super().__init__()

        def ch(c):
            return _make_divisible(c * width_mult)

        def reps(n):
            return int(math.ceil(n * depth_mult))

        stages = [(k, e, s, ch(i), ch(o), reps(n)) for k, e, s, i, o, n in EFFNETV2_S_STAGES]
        total = sum(n for *_, n in stages)  # stochastic depth ramps over the full network
        feats: list[nn.Module] = [_ConvBNAct(3, stages[0][3], 3, 2)]
        bid = 0
        for kind, e, s, cin, cout, n in stages[:5]:
            blocks = []
            for j in range(n):
                sd = stochastic_depth * bid / total
                block = _FusedMBConv if kind == "fused" else _MBConv
                blocks.append(block(cin if j == 0 else cout, cout, e, s if j == 0 else 1, sd))
                bid += 1
            feats.append(nn.Sequential(*blocks))
        kind, e, s, cin, cout, n = stages[5]
        self.out_channels = _make_divisible(cin * e)
        feats.append(_ConvBNAct(cin, self.out_channels, 1))
        self.features = nn.Sequential(*feats)
        self.stride = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _CNNEncoder(nn.Module):
    """Stem (ContextBlock or identity) + truncated EfficientNetV2-S."""

    def __init__(self, cfg: CellCentroidFormerConfig) -> None:
        super().__init__()
        self.stem = ContextBlock() if cfg.context_block else nn.Identity()
        self.backbone = EfficientNetV2STrunk(cfg.width_mult, cfg.depth_mult,
                                             cfg.stochastic_depth)
        self.out_channels = self.backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.stem(x))


class _UpsamplingBlock(nn.Sequential):
    """Bilinear x2, then [Conv3x3(f) + ReLU -> BN] twice."""

    def __init__(self, cin: int, f: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(cin, f, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(f),
                         nn.Conv2d(f, f, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(f))


class _CNNHead(nn.Module):
    def __init__(self, cin: int, filters: tuple[int, int, int], out: int,
                 activation: str | None = "sigmoid") -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c = cin
        for f in filters:
            blocks.append(_UpsamplingBlock(c, f))
            c = f
        blocks += [nn.Conv2d(c, 32, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.out = nn.Conv2d(32, out, 3, padding=1)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.out(self.body(x))
        return torch.sigmoid(x) if self.activation == "sigmoid" else x


class CellCentroidFormer(nn.Module):
    """CNN detector: ContextBlock + EfficientNetV2-S trunk + MobileViT-K neck + two heads (§9.1.2).

    Detection mode: ``forward`` returns ``heatmap`` (B, 1, H, W) and ``sizes`` (B, 2, H, W;
    relative h/H, w/W), both sigmoid. ``pretext=True`` (§6.1): both heads end in
    Conv3x3(32 -> ``pretext_channels``) (+ sigmoid unless ``pretext_activation=None``) and
    ``forward`` returns ``head_1`` and ``head_2``, each (B, pretext_channels, H, W).
    """

    variant = "cnn"

    def __init__(self, cfg: CellCentroidFormerConfig | None = None, *, pretext: bool = False,
                 pretext_channels: int = 3, pretext_activation: str | None = "sigmoid",
                 **overrides) -> None:
        super().__init__()
        if cfg is None:
            cfg = CellCentroidFormerConfig(**overrides)
        elif overrides:
            cfg = CellCentroidFormerConfig.model_validate({**cfg.model_dump(), **overrides})
        self.cfg = cfg
        self.pretext = pretext
        self.encoder = _CNNEncoder(cfg)
        d0, d1 = cfg.neck_dims
        cin = self.encoder.out_channels

        def conv_relu_ln(ci, co):
            return [nn.Conv2d(ci, co, 3, padding=1), nn.ReLU(), _ChannelLayerNorm(co)]

        self.neck = nn.Sequential(
            MobileViTKBlock(cin, d0, cfg.mvit_depth, cfg.mvit_heads, cfg.dropout),
            *conv_relu_ln(d0, d0), *conv_relu_ln(d0, d0),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            MobileViTKBlock(d0, d1, cfg.mvit_depth, cfg.mvit_heads, cfg.dropout),
            *conv_relu_ln(d1, 2 * d1), *conv_relu_ln(2 * d1, 2 * d1))
        if pretext:
            self.heatmap_head = _CNNHead(2 * d1, cfg.head_filters, pretext_channels,
                                         pretext_activation)
            self.size_head = _CNNHead(2 * d1, cfg.head_filters, pretext_channels,
                                      pretext_activation)
        else:
            self.heatmap_head = _CNNHead(2 * d1, cfg.head_filters, 1)
            self.size_head = _CNNHead(2 * d1, cfg.head_filters, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.cfg.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise InputError(f"expected input (B, 3, {s}, {s}), got {tuple(x.shape)}")
        f = self.neck(self.encoder(x))
        a, b = self.heatmap_head(f), self.size_head(f)
        if self.pretext:
            return {"head_1": a, "head_2": b}
        return {"heatmap": a, "sizes": b}


# -- transfer ------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What :func:`load_encoder` did: keys loaded, missing, unexpected, mismatched, skipped."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]
    skipped: list[str]

    def as_dict(self) -> dict:
        return {"loaded": len(self.loaded), "missing": self.missing,
                "unexpected": self.unexpected, "shape_mismatch": self.shape_mismatch,
                "skipped": self.skipped}


def _head_final_keys(model: nn.Module) -> set[str]:
    keys = set()
    for head in ("heatmap_head", "size_head"):
        if hasattr(model, head):
            keys |= {f"{head}.out.{k}" for k in getattr(model, head).out.state_dict()}
    return keys


def encoder_state_dict(model: nn.Module, scope: str = "encoder") -> dict[str, torch.Tensor]:
    """The transferable weights of ``model`` (tensors detached, on CPU).

    scope "encoder": ``model.encoder`` (ContextBlock + patch embedding + ViT, or ContextBlock +
    EfficientNetV2-S trunk), keys relative to the encoder. scope "all" (CNN pretext → detector,
    §6.1): every weight except the two heads' final convolutions, keys relative to the model.
    """
    if scope == "encoder":
        sd = model.encoder.state_dict()
    elif scope == "all":
        skip = _head_final_keys(model)
        sd = {k: v for k, v in model.state_dict().items() if k not in skip}
    else:
        raise InputError(f"scope must be 'encoder' or 'all', got {scope!r}")
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def load_encoder(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                 scope: str = "encoder") -> LoadReport:
    """Load transferable weights into ``model`` and report what happened.

    ``state`` is what :func:`encoder_state_dict` returned (keys relative to the encoder, or, for
    scope "all", to the model); keys prefixed ``encoder.`` are accepted for scope "encoder" and
    other prefixed keys are then reported as skipped. Strict (default): every target key must be
    present with the same shape and no key may be left over, else :class:`CheckpointError`.
    With scope "all" the heads' final convolutions are never loaded (they are replaced, §6.1).
    """
    if scope == "encoder":
        target = model.encoder
        src = {}
        skipped = []
        prefixed = any(k.startswith("encoder.") for k in state)
        for k, v in state.items():
            if prefixed:
                if k.startswith("encoder."):
                    src[k[len("encoder."):]] = v
                else:
                    skipped.append(k)
            else:
                src[k] = v
        exclude: set[str] = set()
    elif scope == "all":
        target = model
        exclude = _head_final_keys(model)
        src = {k: v for k, v in state.items() if k not in exclude}
        skipped = sorted(k for k in state if k in exclude)
    else:
        raise InputError(f"scope must be 'encoder' or 'all', got {scope!r}")
    own = {k: v for k, v in target.state_dict().items() if k not in exclude}
    missing = sorted(k for k in own if k not in src)
    unexpected = sorted(k for k in src if k not in own)
    mismatch = sorted(k for k in own if k in src and tuple(src[k].shape) != tuple(own[k].shape))
    report = LoadReport(loaded=[], missing=missing, unexpected=unexpected,
                        shape_mismatch=mismatch, skipped=skipped)
    if strict and (missing or unexpected or mismatch):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatch:
            k = mismatch[0]
            parts.append(f"{len(mismatch)} shape mismatches (e.g. {k}: "
                         f"{tuple(src[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError("encoder weights do not match the model: " + "; ".join(parts))
    load = {k: src[k] for k in own if k in src and k not in mismatch}
    with torch.no_grad():
        target.load_state_dict(load, strict=False)
    report.loaded = sorted(load)
    return report


def build_detector(cfg) -> nn.Module:
    """The detector of a :class:`~musplit.pretrain.config.DetectionConfig`."""
    m = cfg.model_config_resolved
    return CCFViT(m) if cfg.model == "ccf_vit" else CellCentroidFormer(m)
