"""Networks: the µSplit LadderVAE (HVAE/HAE with Vanilla, Lean-, Regular- and Deep-LC) and the
paper's supervised baselines (U-Net, U-Net + Regular-LC, Context-Aware U-Net, BRAVE-NET).

The one entry point is :func:`build`. The unsupervised Double-DIP baseline fits each image on
its own and is not built from a config: see :mod:`musplit.doubledip`.

What every built model provides, and how callers test its optional capabilities (``encode``,
``sample_many``, ``is_stochastic``, ...), is written once in :mod:`musplit.models.protocol`.
"""

from __future__ import annotations

from torch import nn

from musplit.config.model import ModelConfig
from musplit.errors import ConfigError
from musplit.kinds import LADDER_KINDS
from musplit.models.bravenet import BraveNet
from musplit.models.lvae import EncoderState, LadderOutput, LadderVAE
from musplit.models.unet import BaselineOutput, UNet

__all__ = ["BaselineOutput", "EncoderState", "LadderOutput", "LadderVAE", "ModelConfig",
           "build", "count_parameters"]


def build(config: ModelConfig) -> nn.Module:
    """Build the network a :class:`ModelConfig` describes.

    Parameters
    ----------
    config : ModelConfig
        ``kind`` "hvae" or "hae" gives a :class:`LadderVAE`; "unet" and "ca_unet" a
        :class:`~musplit.models.unet.UNet`; "bravenet" a :class:`~musplit.models.bravenet.BraveNet`.

    Returns
    -------
    torch.nn.Module
        ``model(x)`` with ``x (B, S, P, P)`` returns a tuple whose first element is the
        likelihood parameters ``(B, 2C, P, P)``.

    Raises
    ------
    ConfigError
        For a kind that this version cannot build.
    """
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"build() takes a ModelConfig, got {type(config).__name__}")
    if config.kind in LADDER_KINDS:
        return LadderVAE(config)
    if config.kind in ("unet", "ca_unet"):
        return UNet(config)
    if config.kind == "bravenet":
        return BraveNet(config)
    raise ConfigError(f"model kind '{config.kind}' is not available in this version of musplit")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())

