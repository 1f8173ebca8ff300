"""The model kinds by name and how many structures a model splits: plain values, importable
without torch or pydantic.

The command line builds its ``--model`` / ``--kind`` choices from them while ``musplit --help``
loads neither; :mod:`musplit.config.model` re-exports them next to ``ModelConfig``.
"""

from __future__ import annotations

__all__ = ["BASELINE_KINDS", "KINDS", "LADDER_KINDS", "MAX_CHANNELS", "MIN_CHANNELS"]

#: The LadderVAE kinds; the others are the paper's baselines (docs/evaluation.md, "Baselines").
LADDER_KINDS = ("hvae", "hae")
BASELINE_KINDS = ("unet", "ca_unet", "bravenet")
#: Every kind, the LadderVAE's first (the order of ``musplit train --model``).
KINDS = LADDER_KINDS + BASELINE_KINDS

#: How many structures one model splits (MicroSplit, Nature Methods 2026: 2, 3 and 4).
MIN_CHANNELS, MAX_CHANNELS = 2, 4
