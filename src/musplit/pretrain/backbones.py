"""Encoders that pre-training produces and detection fine-tuning consumes.

The ContextBlock stem, the ViT encoder (patchify, fixed sin-cos positions, pre-norm
Transformer) and the truncated EfficientNetV2-S trunk of the CNN variant (docs/pretraining.md,
"ContextBlock" and "Pretext models"; docs/detection.md, "Detectors"). Everything is
channels-first: images are ``(B, C, H, W)``, token sequences ``(B, N, D)`` in row-major (h, w)
order, patch vectors laid out as (p1, p2, c).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from musplit.errors import InputError
from musplit.pretrain.config import CellCentroidFormerConfig, ViTConfig

__all__ = [
    "Attention",
    "ContextBlock",
    "EfficientNetV2STrunk",
    "FeedForward",
    "Transformer",
    "ViTEncoder",
    "patchify",
    "posemb_sincos_2d",
    "unpatchify",
]


# -- ContextBlock ----------------------------------------------------------------------------
class ContextBlock(nn.Module):
    """Intensity-gated local-contrast stem: ``(r, g, b) -> (r', g, b')``, 222 parameters.

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
    """Fixed 2-D sin-cos embedding ``(h*w, dim)`` (Beyer et al. 2022).

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


# -- ViT encoder ---------------------------------------------------------------------------
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


# -- EfficientNetV2-S trunk (written from the paper's table, random init) -------------
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
    """EfficientNetV2-S truncated after ``block6a_expand_activation`` (docs/detection.md,
    "Detectors").

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
