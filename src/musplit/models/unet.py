"""The U-Net baselines of the paper (docs/evaluation.md, "Baselines": U-Net, U-Net with
Regular-LC, Context-Aware U-Net).

* **U-Net** (``kind="unet"``, ``lc="none"``): the widely used U-Net layout with bilinear
  upsampling, ``depth`` ``Down`` blocks (the paper's "BU blocks") and width ``filters``; MSE on
  normalised targets. Depth 5, width 32 (the paper's tuned setting): 17,298,594 parameters.
* **U-Net + Regular-LC** (``lc="regular"``): LC input ``i = 1 .. S-1`` passes its own
  ``Conv5x5 -> ELU -> Res`` stem and a separately weighted copy of ``Down_i``'s double
  convolution (without the max-pool), and is merged with ``Down_i``'s output by an LC merge:
  the primary is centre zero-padded to the LC feature's size, so the two are pixel-aligned,
  exactly as in the LadderVAE (docs/method.md, "LadderVAE"). LC levels stay ``P x P``; in the
  decoder an upsampled map larger than its skip is centre-cropped. With 5 scales: 31,252,834
  parameters.
* **Context-Aware U-Net** (``kind="ca_unet"``): the plain U-Net with a
  :class:`~musplit.models.context_transfer.ContextTransfer` module on every skip tensor but the
  bottleneck (Leng et al. 2018).

All return :class:`BaselineOutput`: means in channels ``[0, C)`` and, for the pipeline's
``(B, 2C, H, W)`` contract, log-variances fixed at 0 in ``[C, 2C)`` -- the unit variance under
which the MSE loss is the Gaussian negative log-likelihood. They are deterministic
(``stochastic = False``) and predict no variance (``predicts_variance = False``): tiled
prediction runs them once per tile and reports no aleatoric uncertainty.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musplit.config.model import ModelConfig
from musplit.errors import InputError
from musplit.models.blocks import Merge, Stem, centre_crop, centre_pad
from musplit.models.context_transfer import ContextTransfer

__all__ = ["BaselineOutput", "DoubleConv", "UNet"]


class BaselineOutput(NamedTuple):
    """What the baselines' ``forward`` returns.

    Attributes
    ----------
    params : Tensor, shape (B, 2C, H, W)
        Channels ``[0, C)`` the predicted means, ``[C, 2C)`` log-variances fixed at 0;
        normalised target units.
    aux : tuple of Tensor
        Further predictions of the means ``(B, C, H, W)`` that the loss also fits (BRAVE-NET's
        deep supervision, docs/method.md, "Baselines"); empty for the U-Nets.
    """

    params: Tensor
    aux: tuple[Tensor, ...] = ()

    @property
    def mean(self) -> Tensor:
        """``(B, C, H, W)`` predicted means."""
        return self.params[:, : self.params.shape[1] // 2]


def with_unit_logvar(mean: Tensor) -> Tensor:
    """``(B, C, H, W)`` means -> ``(B, 2C, H, W)`` likelihood parameters with ``l = 0``."""
    return torch.cat([mean, torch.zeros_like(mean)], dim=1)


class DoubleConv(nn.Module):
    """``[Conv3x3 (no bias) -> BN -> ReLU] x 2``: ``in -> mid -> out`` (docs/method.md,
    "Baselines")."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.conv1 = nn.Conv2d(in_channels, mid, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(x)), inplace=True)


class Down(nn.Module):
    """MaxPool 2x2, then :class:`DoubleConv` ``in -> out`` (sizes floor-halved)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.max_pool2d(x, 2))


class Up(nn.Module):
    """Bilinear x2 (``align_corners=True``), centre pad or crop to the skip's size,
    concatenate ``[skip, up]``, :class:`DoubleConv` ``in -> out`` with ``mid = in/2``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        size = tuple(skip.shape[-2:])
        x = centre_pad(centre_crop(x, size), size)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net, U-Net + Regular-LC or Context-Aware U-Net, as ``config`` says (docs/method.md,
    "Baselines" to "Context-Aware U-Net").

    Parameters
    ----------
    config : ModelConfig
        ``kind`` "unet" (``lc`` "none" or "regular") or "ca_unet"; ``filters`` is the width of
        the first level, ``depth`` the number of ``Down`` blocks, ``scales`` the LC inputs.

    Notes
    -----
    Channel plan for width ``w`` and depth ``D``: ``inc 1 -> w``, ``Down_i`` doubling to
    ``w 2^(D-1)``, bottleneck ``Down_D`` keeping it, ``Up_1 .. Up_(D-1)`` = ``Up(2c, c/2)``,
    ``Up_D`` = ``Up(2w, w)``, head ``Conv1x1 w -> C``.

    The module names of the LC path are ``lc_stems``, ``lc_convs`` (the copies of the ``Down``
    double convolutions) and ``lc_merges``; of the context transfer ``context``.
    """

    #: Capabilities (:mod:`musplit.models.protocol`): one pass gives every sample, and the
    #: log-variance output is a constant. ``stochastic`` is the older name of the first.
    is_stochastic = False
    stochastic = False
    predicts_variance = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.kind not in ("unet", "ca_unet"):
            raise ValueError(f"UNet builds kind 'unet' or 'ca_unet', not {config.kind!r}")
        self.config = config
        w, d = config.filters, config.depth
        self.depth = d
        self.scales = config.scales
        self.lc = config.lc == "regular"
        widths = [w * 2**i for i in range(d)]  # inc and Down_1 .. Down_(D-1) outputs
        self.inc = DoubleConv(1, w)
        outs = widths[1:] + [widths[-1]]  # the bottleneck keeps its width (bilinear U-Net)
        self.downs = nn.ModuleList(Down(widths[i], outs[i]) for i in range(d))
        ups, ch = [], 2 * widths[-1]
        for _ in range(d - 1):
            ups.append(Up(ch, ch // 4))
            ch //= 2
        ups.append(Up(ch, ch // 2))
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(ch // 2, config.out_channels, 1)
        if self.lc:
            # LC input i (1-based) joins the output of Down_i: input width widths[i-1].
            kw = {"batchnorm": True, "dropout": config.dropout}
            lc_levels = range(1, self.scales)
            self.lc_stems = nn.ModuleList(
                Stem(widths[i - 1], kernel=5, **kw) for i in lc_levels)
            self.lc_convs = nn.ModuleList(
                DoubleConv(widths[i - 1], outs[i - 1]) for i in lc_levels)
            self.lc_merges = nn.ModuleList(Merge(outs[i - 1], **kw) for i in lc_levels)
        self.context = None
        if config.kind == "ca_unet":
            # one module per skip tensor (inc, Down_1 .. Down_(D-1)), tied to the patch size
            sizes = [config.patch >> i for i in range(d)]
            self.context = nn.ModuleList(
                ContextTransfer(widths[i], (sizes[i], sizes[i])) for i in range(d))

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.scales:
            raise InputError(
                f"model input must have shape (B, {self.scales}, H, W) ({self.scales} LC "
                f"scale(s)), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        halvings = self.depth - (self.scales - 1)  # LC levels keep the input size
        if min(h, w) < 2**halvings or (self.lc and (h % 2 or w % 2)):
            need = f"even sides of at least {2**halvings}" if self.lc else \
                f"sides of at least {2**halvings}"
            raise InputError(f"this U-Net (depth {self.depth}, {self.scales} scale(s)) needs "
                             f"{need}, got {h}x{w}")

    def encode(self, x: Tensor) -> list[Tensor]:
        """The encoder half: the ``inc`` output, then each ``Down_i`` output (with its LC
        merge); the last one is the bottleneck."""
        self._check(x)
        h = self.inc(x[:, :1])
        feats = [h]
        for i, down in enumerate(self.downs, start=1):
            h = down(h)
            if self.lc and i < self.scales:
                # LC input i has the resolution of Down_i's output and the same centre: pad
                # the primary to its size and merge (docs/method.md, "Baselines", as
                # docs/method.md, "LadderVAE").
                e = self.lc_convs[i - 1](self.lc_stems[i - 1](x[:, i : i + 1]))
                h = self.lc_merges[i - 1](h, e, pad_a=True)
            feats.append(h)
        return feats

    def forward(self, x: Tensor) -> BaselineOutput:
        """``x (B, S, H, W)`` (normalised LC stack) -> :class:`BaselineOutput`."""
        size = tuple(x.shape[-2:])
        *skips, h = self.encode(x)
        if self.context is not None:
            skips = [ct(s) for ct, s in zip(self.context, skips, strict=True)]
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            h = up(h, skip)
        mean = centre_crop(self.head(h), size)
        return BaselineOutput(with_unit_logvar(mean))
