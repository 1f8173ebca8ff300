"""Detector networks: CCFViT (ViT + MobileViT neck) and CellCentroidFormer (CNN + MobileViT neck).

docs/detection.md, "Detectors". Both return a centroid ``heatmap`` and box ``sizes``; their
``encoder`` (from :mod:`musplit.pretrain.backbones`) is what pre-training initialises.
CellCentroidFormer with ``pretext=True`` is also the CNN variant's pretext model
(docs/pretraining.md, "Pretext models").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from musplit.errors import InputError
from musplit.pretrain.backbones import Transformer, ViTEncoder, _CNNEncoder, unpatchify
from musplit.pretrain.config import CCFViTConfig, CellCentroidFormerConfig

__all__ = [
    "CCFViT",
    "CellCentroidFormer",
    "MobileViTBlock",
    "MobileViTKBlock",
    "build_detector",
]


def _with_overrides(config_cls, cfg, overrides: dict):
    """``cfg`` (default ``config_cls()``) with keyword ``overrides`` applied and validated."""
    if cfg is None:
        return config_cls(**overrides)
    if overrides:
        return config_cls.model_validate({**cfg.model_dump(), **overrides})
    return cfg


# -- MobileViT (vit-pytorch flavour) -----------------------------------------------------
def _conv_bn_silu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


class MobileViTBlock(nn.Module):
    """MobileViT block, vit-pytorch style (docs/detection.md, "Detectors", CCFViT).

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
    """MobileViT block, Keras flavour of the TF CellCentroidFormer (docs/detection.md, "Detectors").

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


# -- CCFViT ------------------------------------------------------------------------------
class _LayerNormCHW(nn.Module):
    """LayerNorm over (C, H, W) with its shape derived from the config (the reference hard-codes
    384/48)."""

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
    """Hybrid detector: ContextBlock + ViT (all tokens) + MobileViT neck + two heads
    (docs/detection.md, "Detectors").

    ``forward(x)`` returns a dict with ``heatmap`` (B, 1, H, W) and ``sizes`` (B, 2, H, W;
    channel 0 height, channel 1 width), and ``pcolor`` (B, 3, H, W) when ``aux_pcolor``.
    """

    variant = "vit"

    def __init__(self, cfg: CCFViTConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = _with_overrides(CCFViTConfig, cfg, overrides)
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
    """CNN detector: ContextBlock + EfficientNetV2-S trunk + MobileViT-K neck + two heads
    (docs/detection.md, "Detectors").

    Detection mode: ``forward`` returns ``heatmap`` (B, 1, H, W) and ``sizes`` (B, 2, H, W;
    relative h/H, w/W), both sigmoid. ``pretext=True`` (docs/pretraining.md, "Pretext models"):
    both heads end in
    Conv3x3(32 -> ``pretext_channels``) (+ sigmoid unless ``pretext_activation=None``) and
    ``forward`` returns ``head_1`` and ``head_2``, each (B, pretext_channels, H, W).
    """

    variant = "cnn"

    def __init__(self, cfg: CellCentroidFormerConfig | None = None, *, pretext: bool = False,
                 pretext_channels: int = 3, pretext_activation: str | None = "sigmoid",
                 **overrides) -> None:
        super().__init__()
        cfg = _with_overrides(CellCentroidFormerConfig, cfg, overrides)
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


def build_detector(cfg) -> nn.Module:
    """The detector of a :class:`~musplit.pretrain.config.DetectionConfig`."""
    m = cfg.model_config_resolved
    return CCFViT(m) if cfg.model == "ccf_vit" else CellCentroidFormer(m)
