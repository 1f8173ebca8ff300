"""Configuration: every pydantic config of musplit, its YAML round trip and the presets.

One package, one job per module:

- :mod:`~musplit.config.base`: the one strict base (:class:`~musplit.config.base.Strict`) and
  the YAML / validation / merge helpers;
- :mod:`~musplit.config.model`: :class:`ModelConfig` (which network);
- :mod:`~musplit.config.run`: :class:`Config`, everything a run needs (data, model, training,
  prediction), validated as a whole (docs/design.md, "Configuration");
- :mod:`~musplit.config.presets`: every named preset (:func:`preset`, :data:`RUN_PRESETS`, the
  demos', and the synthetic-cell :data:`~musplit.config.presets.PRETRAIN_PRESETS`);
- :mod:`~musplit.config.synth`, :mod:`~musplit.config.pretrain`, :mod:`~musplit.config.pretext`:
  the configs of pre-training and detection (docs/pretraining.md, docs/detection.md).

The modules import nothing from musplit but :mod:`musplit.errors` and each other.
"""

from __future__ import annotations

from musplit.config.base import (  # noqa: F401  (re-exported; _deep_merge is the old name)
    deep_merge as _deep_merge,
)
from musplit.config.base import (  # noqa: F401  (re-exported)
    format_validation_error,
    read_yaml_mapping,
)
from musplit.config.model import ModelConfig
from musplit.config.presets import RUN_PRESETS, preset
from musplit.config.run import (
    CONFIG_VERSION,
    Config,
    CrittersConfig,
    DataConfig,
    PredictConfig,
    TrainConfig,
)

#: The run presets under their old name (the same dict as :data:`RUN_PRESETS`).
PRESETS = RUN_PRESETS

__all__ = [
    "CONFIG_VERSION",
    "Config",
    "CrittersConfig",
    "DataConfig",
    "ModelConfig",
    "PredictConfig",
    "TrainConfig",
    "preset",
    "PRESETS",
]
