"""The model configuration's old import path: everything lives in :mod:`musplit.config.model`.

Kept so that ``from musplit.models.config import ModelConfig`` (and ``LADDER_KINDS`` ...) keeps
working; new code imports from :mod:`musplit.config`.
"""

from __future__ import annotations

from musplit.config.model import (  # noqa: F401  (re-exported)
    _LADDER_ONLY,
    BASELINE_KINDS,
    LADDER_KINDS,
    LC,
    Kind,
    ModelConfig,
)

__all__ = ["BASELINE_KINDS", "LADDER_KINDS", "LC", "Kind", "ModelConfig"]
