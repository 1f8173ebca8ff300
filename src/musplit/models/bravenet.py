"""BRAVE-NET (Hilbert et al. 2020) as the paper adapted it for splitting (docs/method.md,
"Baselines").

Two identical, separately weighted encoders read the primary patch and **one** lateral-context
input (scale 1: the 2x downsampled crop with the same centre, a 2P field of view). Each input
first passes its own ``BatchNorm2d(1)``. An encoder level is
``[Conv3x3 -> ReLU -> BN -> Dropout] -> [Conv3x3 -> ReLU -> BN]`` with widths
``filters * 2^i`` (``num_kernels = [32, 64, 128, 256]`` at the defaults) and a 2x2 max-pool
between levels. The two deepest outputs are concatenated and mixed by two
``Conv1x1 -> ReLU`` layers. Each decoder level upsamples (nearest, x2), concatenates
``[up, primary skip, context skip]`` and applies the same conv block.

**No pixel alignment** -- the baseline as the paper ran it, and the defect µSplit's LC fixes: the
context skip covers a field twice as large as the primary skip at the same tensor size, so the
two are concatenated pixel by pixel although they show different places (only their centres
coincide).

**Deep supervision.** The outputs of the decoder levels before the last (at the defaults the
P/4 and P/2 levels) are mapped by 1x1 convolutions to ``C`` channels and nearest-upsampled to
``P``; the loss is ``(MSE_main + mean(MSE_aux)) / 2`` (:func:`musplit.losses.deep_supervision_mse`).
Prediction uses the main output only.

**Dropout on the outputs** (``output_dropout``). The reference puts ``Dropout(p)`` on every
2-channel head, active in training, which randomly zeroes predicted pixels that the MSE then
penalises. musplit leaves it off by default; ``output_dropout=True`` restores it for parity.

With the defaults (``filters`` 32, ``depth`` 4, 2 output channels): 3,513,802 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musplit.config.model import ModelConfig
from musplit.errors import InputError
from musplit.models.unet import BaselineOutput, with_unit_logvar

__all__ = ["BraveNet"]


class ConvBlock(nn.Module):
    """``[Conv3x3 -> ReLU -> BN -> Dropout(p)] -> [Conv3x3 -> ReLU -> BN]`` (with biases)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.bn1(F.relu(self.conv1(x), inplace=True)))
        return self.bn2(F.relu(self.conv2(x), inplace=True))


class Encoder(nn.Module):
    """``BatchNorm2d(1)`` on the input, then :class:`ConvBlock` levels with max-pools between."""

    def __init__(self, widths: list[int], dropout: float):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1)
        ins = [1, *widths[:-1]]
        self.levels = nn.ModuleList(
            ConvBlock(i, o, dropout) for i, o in zip(ins, widths, strict=True))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 1, H, W)`` -> the output of every level, full resolution first."""
        h = self.input_bn(x)
        outs = []
        for i, level in enumerate(self.levels):
            if i:
                h = F.max_pool2d(h, 2)
            h = level(h)
            outs.append(h)
        return outs


class Head(nn.Module):
    """Conv1x1 ``in -> C``, nearest-upsampled to the output size, optional output dropout."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # A 1x1 convolution commutes with nearest upsampling: convolve the small map.
        y = self.conv(x)
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="nearest")
        return self.drop(y)


class BraveNet(nn.Module):
    """Adapted BRAVE-NET (``kind="bravenet"``), see the module docstring.

    Parameters
    ----------
    config : ModelConfig
        ``filters`` (first level width), ``depth`` (encoder levels), ``dropout``,
        ``output_dropout``, ``out_channels``; ``scales`` is 2.

    Attributes
    ----------
    encoder, context_encoder : Encoder
        For the primary patch and for the 2x downsampled context.
    merge : Sequential
        ``Conv1x1 2c -> c -> ReLU -> Conv1x1 c -> c -> ReLU`` on the concatenated bottoms.
    decoder : ModuleList of ConvBlock
        Deepest first; level ``i`` takes ``[up (2c), primary skip (c), context skip (c)]``.
    aux_heads : ModuleList of Head
        Deep supervision, for every decoder level but the last (deepest first).
    head : Head
        The main output.
    """

    #: Capabilities (:mod:`musplit.models.protocol`): one pass gives every sample, and the
    #: log-variance output is a constant. ``stochastic`` is the older name of the first.
    is_stochastic = False
    stochastic = False
    predicts_variance = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.kind != "bravenet":
            raise ValueError(f"BraveNet builds kind 'bravenet', not {config.kind!r}")
        self.config = config
        widths = [config.filters * 2**i for i in range(config.depth)]
        p, c = config.dropout, config.out_channels
        self.encoder = Encoder(widths, p)
        self.context_encoder = Encoder(widths, p)
        top = widths[-1]
        self.merge = nn.Sequential(nn.Conv2d(2 * top, top, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(top, top, 1), nn.ReLU(inplace=True))
        # decoder level i (deepest first) outputs widths[-2-i] from [up, skip, context skip]
        self.decoder = nn.ModuleList(
            ConvBlock(4 * widths[-2 - i], widths[-2 - i], p) for i in range(config.depth - 1))
        head_p = p if config.output_dropout else 0.0
        self.aux_heads = nn.ModuleList(
            Head(widths[-2 - i], c, head_p) for i in range(config.depth - 2))
        self.head = Head(widths[0], c, head_p)
        self.multiple = 2 ** (config.depth - 1)

    def forward(self, x: Tensor) -> BaselineOutput:
        """``x (B, 2, H, W)``: the primary patch and its 2x downsampled context.

        Returns
        -------
        BaselineOutput
            ``params`` from the main output; ``aux`` the deep-supervision outputs, deepest first.
        """
        if x.ndim != 4 or x.shape[1] != 2:
            raise InputError(f"bravenet input must have shape (B, 2, H, W) (the primary patch "
                             f"and one 2x context scale), got {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        if size[0] % self.multiple or size[1] % self.multiple:
            raise InputError(f"bravenet input sides must be multiples of {self.multiple}, "
                             f"got {size[0]}x{size[1]}")
        skips = self.encoder(x[:, :1])
        context = self.context_encoder(x[:, 1:2])
        h = self.merge(torch.cat([skips[-1], context[-1]], dim=1))
        aux = []
        for i, level in enumerate(self.decoder):
            j = len(skips) - 2 - i
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            # the context skip is not aligned with the primary one: BRAVE-NET as adapted
            h = level(torch.cat([h, skips[j], context[j]], dim=1))
            if i < len(self.aux_heads):
                aux.append(self.aux_heads[i](h, size))
        return BaselineOutput(with_unit_logvar(self.head(h, size)), tuple(aux))
