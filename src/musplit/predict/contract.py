"""Old home of prediction's model probes; the contract is :mod:`musplit.models.protocol`.

Prediction (:mod:`musplit.predict.engine`, :mod:`musplit.predict.settings`) asks a model what it
offers beyond ``model(x)`` through the functions of that module: ``can_encode``,
``can_sample_many``, ``sample_mode_of``, ``is_deterministic`` and ``predicts_variance``. The
private names below are kept for code written against this module; each is one of those
functions under its old name and signature.
"""

from __future__ import annotations

from torch import nn

from musplit.models.protocol import (
    can_encode,
    can_sample_many,
    is_deterministic,
    predicts_variance,
    sample_mode_of,
)

#: The model splits into ``encode`` (once per patch) and ``decode`` (once per sample).
_has_encoder = can_encode
#: The model draws several samples in one call (``sample_many``).
_can_sample_many = can_sample_many
#: Whether the model's log-variances are predicted (not a constant).
_predicts_variance = predicts_variance


def _sample_mode(model: nn.Module, default: str | None) -> str | None:
    """The model's own ``sample_mode``, or ``default`` when it has none."""
    return sample_mode_of(model, None, default)


def _is_stochastic(model: nn.Module, mode: str | None) -> bool:
    """Whether predictions differ from sample to sample under ``mode``
    (not :func:`~musplit.models.protocol.is_deterministic`)."""
    return not is_deterministic(model, mode)
