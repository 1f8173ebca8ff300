"""The model kinds by name: plain tuples, importable without torch or pydantic.

The command line builds its ``--model`` / ``--kind`` choices from them while ``musplit --help``
loads neither; :mod:`musplit.config.model` re-exports them next to ``ModelConfig``.
"""

from __future__ import annotations

__all__ = ["BASELINE_KINDS", "KINDS", "LADDER_KINDS"]

#: The LadderVAE kinds; the others are the paper's baselines (docs/evaluation.md, "Baselines").
LADDER_KINDS = ("hvae", "hae")
BASELINE_KINDS = ("unet", "ca_unet", "bravenet")
#: Every kind, the LadderVAE's first (the order of ``musplit train --model``).
KINDS = LADDER_KINDS + BASELINE_KINDS
