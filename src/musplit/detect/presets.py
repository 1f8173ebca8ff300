"""The six synthetic-cell presets and their scaling to other frame sizes.

docs/detection.md, "Presets": stand-ins for Cell Tracking Challenge datasets (all
numbers are our own choices). :func:`preset_config` applies overrides and rescales a preset.
"""

from __future__ import annotations

from musplit.config.presets import PRETRAIN_PRESETS
from musplit.errors import InputError
from musplit.pretrain.config import SynthPresetConfig

__all__ = ["PRESETS", "preset_config"]


#: The cell presets; defined once, with the other presets, in musplit.config.presets.
PRESETS: dict[str, SynthPresetConfig] = PRETRAIN_PRESETS


def preset_config(preset: str | SynthPresetConfig, size: int | None = None,
                  overrides: dict | None = None) -> SynthPresetConfig:
    """The preset's config, with ``overrides`` applied and scaled to a frame side ``size``.

    At another size the cell *sizes* stay (cells must stay ≥ ``min_box`` px), the counts scale
    with the frame area (at least one cell) and semi-axes and protrusions are capped so that a
    cell fits the frame.
    """
    if isinstance(preset, SynthPresetConfig):
        cfg = preset
    else:
        if preset not in PRESETS:
            raise InputError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[preset]
    if overrides:
        try:
            cfg = SynthPresetConfig.model_validate({**cfg.model_dump(), **overrides})
        except Exception as e:  # pydantic ValidationError: a user mistake in the overrides
            raise InputError(f"invalid preset overrides for {cfg.name}: {e}") from None
    if size is None or size == cfg.size:
        return cfg
    if size < 32:
        raise InputError(f"synthetic frames must be at least 32 px on a side, got {size}")
    a = (size / cfg.size) ** 2
    lo = max(1, round(cfg.cells[0] * a)) if cfg.cells[0] > 0 else 0
    hi = max(lo, 1, round(cfg.cells[1] * a))
    cap = 0.35 * size

    def capped(r):
        return None if r is None else (min(r[0], cap), min(r[1], cap))

    return cfg.model_copy(update={
        "size": size,
        "cells": (lo, hi),
        "axis_long": capped(cfg.axis_long),
        "axis_short": capped(cfg.axis_short),
        "filopodia_length": (min(cfg.filopodia_length[0], 0.3 * size),
                             min(cfg.filopodia_length[1], 0.3 * size)),
        "branch_length": (min(cfg.branch_length[0], 0.2 * size),
                          min(cfg.branch_length[1], 0.2 * size)),
    })
