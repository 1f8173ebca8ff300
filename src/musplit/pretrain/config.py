"""The PCMC detection-side configs' old import path: they live in :mod:`musplit.config.pretrain`
(and the synthetic-cell preset config in :mod:`musplit.config.synth`).

Kept so that ``from musplit.pretrain.config import DetectionConfig`` (and the rest) keeps
working; new code imports from :mod:`musplit.config.pretrain`.
"""

from __future__ import annotations

from musplit.config import pretrain as _pretrain
from musplit.config.pretrain import (  # noqa: F401  (re-exported)
    _REFERENCE_FORCED,
    CCFViTConfig,
    CellCentroidFormerConfig,
    DetectionConfig,
    PcolorMAEConfig,
    SynthDatasetConfig,
    ViTConfig,
    _pow2,
    validated,
)
from musplit.config.synth import (  # noqa: F401  (re-exported)
    PCMC_CONFIG_VERSION,
    IntRange,
    Range,
    SynthPresetConfig,
    _check_range,
)

__all__ = list(_pretrain.__all__)
