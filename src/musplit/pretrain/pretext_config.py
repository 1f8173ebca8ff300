"""The PCMC pretext-side configs' old import path: they live in :mod:`musplit.config.pretext`.

Kept so that ``from musplit.pretrain.pretext_config import PretrainConfig`` (and the rest)
keeps working; new code imports from :mod:`musplit.config.pretext`.
"""

from __future__ import annotations

from musplit.config import pretext as _pretext
from musplit.config.pretext import (  # noqa: F401  (re-exported)
    PRETEXT_CONFIG_VERSION,
    BlockMaskConfig,
    ColormapConfig,
    IntensityNormConfig,
    MaskConfig,
    ModelName,
    NoMaskConfig,
    Objective,
    PaddedMaskConfig,
    PretextConfig,
    PretrainConfig,
    TokenMaskConfig,
    _mask_from,
)

__all__ = list(_pretext.__all__)
