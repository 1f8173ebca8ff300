"""What prediction asks of a model beyond ``model(x)``: the optional parts, probed in one place.

Every model maps ``x (B, S, P, P)`` to likelihood parameters ``(B, 2C, P, P)`` (or a tuple that
starts with them; docs/design.md, "Public API"). A model may offer more, and prediction uses
it when it is there:

* ``encode(x)`` and ``decode(state, noise=, compute_kl=, sample_mode=)``: the bottom-up pass
  runs once per patch for all posterior samples (the LadderVAE);
* ``sample_many(x, k, noise=, batch=)``: ``k`` samples in one call, ``(k, B, 2C, P, P)``;
* ``stochastic``: ``False`` for a deterministic model (U-Nets), so one pass is every sample;
* ``sample_mode``: the LadderVAE's default (``"sample"`` or ``"mean"``);
* ``predicts_variance``: ``False`` when the log-variances are a constant (MSE baselines), so
  no aleatoric std is reported.

These attributes are looked up by name here and nowhere else in :mod:`musplit.predict`, so that
pointing prediction at a declared model protocol is a change to this file only.
"""

from __future__ import annotations

from torch import nn


def _has_encoder(model: nn.Module) -> bool:
    """The model splits into ``encode`` (once per patch) and ``decode`` (once per sample)."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))


def _can_sample_many(model: nn.Module) -> bool:
    """The model draws several samples in one call (``sample_many``)."""
    return callable(getattr(model, "sample_many", None))


def _sample_mode(model: nn.Module, default: str | None) -> str | None:
    """The model's own ``sample_mode``, or ``default`` when it has none."""
    return getattr(model, "sample_mode", default)


def _is_stochastic(model: nn.Module, mode: str | None) -> bool:
    """Whether predictions differ from sample to sample under ``mode``.

    A LadderVAE in eval mode is deterministic when it is an HAE or samples ``z = mu_q``
    (``mode == "mean"``); any module may declare ``stochastic = False`` (U-Nets). A module that
    declares nothing counts as stochastic.
    """
    return not (getattr(model, "stochastic", True) is False
                or (hasattr(model, "stochastic") and mode == "mean"))


def _predicts_variance(model: nn.Module) -> bool:
    """Whether the model's log-variances are predicted (not a constant)."""
    return getattr(model, "predicts_variance", True) is not False
