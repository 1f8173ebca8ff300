"""The six synthetic-cell presets and their scaling to other frame sizes.

docs/detection.md, "The six presets": stand-ins for Cell Tracking Challenge datasets (all
numbers are our own choices). :func:`preset_config` applies overrides and rescales a preset.
"""

from __future__ import annotations

from musplit.errors import InputError
from musplit.pretrain.config import SynthPresetConfig

__all__ = ["PRESETS", "preset_config"]


def _presets() -> dict[str, SynthPresetConfig]:
    """The six presets (all numbers are our stand-ins for CTC datasets)."""
    p = {
        # Fluo-N2DH-SIM+: simulated HL60 nuclei, round, textured, bright/dark spots.
        "sim_nuclei": SynthPresetConfig(
            name="sim_nuclei", cells=(8, 30), axis_long=(14, 28), aspect_max=1.4, epsilon=0.06,
            sigma_b=0.15, tau=0.25, sigma_t=2.0, spots=(1, 4), spot_radius=(2, 4),
            spot_factors=[0.5, 1.8], sigma_psf=1.5, n_peak=(300, 800), sigma_read=2.0,
            background=0.03, ramp=0.0, mask_covers="nucleus"),
        # Fluo-N2DL-HeLa: many small touching nuclei, a few bright mitotic ones.
        "dense_small_nuclei": SynthPresetConfig(
            name="dense_small_nuclei", cells=(60, 160), axis_long=(5, 11), aspect_max=1.6,
            epsilon=0.10, gap=0, sigma_b=0.35, tau=0.15, sigma_t=1.5, mitotic_fraction=0.05,
            sigma_psf=1.2, n_peak=(100, 300), sigma_read=3.0, background=0.05, ramp=0.1,
            mask_covers="nucleus"),
        # Fluo-N2DH-GOWT1: heterogeneous brightness (some nuclei near background), low SNR.
        "hetero_lowsnr_nuclei": SynthPresetConfig(
            name="hetero_lowsnr_nuclei", cells=(10, 30), axis_long=(12, 24), aspect_max=1.4,
            epsilon=0.08, sigma_b=0.8, tau=0.35, sigma_t=1.0, spots=(0, 3),
            spot_radius=(2, 3), spot_factors=[1.8], sigma_psf=1.8, n_peak=(20, 80),
            sigma_read=4.0, background=0.08, haze=0.1, i_ref=2.5, mask_covers="nucleus"),
        # Fluo-C2DL-MSC: few large elongated, warped cells with short branches.
        "large_elongated_cells": SynthPresetConfig(
            name="large_elongated_cells", cells=(2, 8), axis_long=(30, 90), axis_short=(8, 20),
            epsilon=0.05, elastic_alpha=(8, 15), elastic_sigma=10.0, branches=(0, 2),
            branch_length=(10, 30), branch_width=(3, 5), sigma_b=0.4, tau=0.1, sigma_t=3.0,
            interior_gradient=0.3, sigma_psf=2.0, n_peak=(30, 120), sigma_read=4.0,
            background=0.05, ramp=0.3, mask_covers="whole_cell"),
        # Fluo-C3DH-A549-SIM seen in 2-D: one (sometimes two) big cells with filopodia.
        "single_cell_filopodia": SynthPresetConfig(
            name="single_cell_filopodia", cells=(1, 1), extra_cell_p=0.2, axis_long=(50, 100),
            aspect_max=1.4, epsilon=0.10, filopodia=(6, 20), filopodia_length=(15, 70),
            filopodia_width=(1, 2), filopodia_intensity=(0.4, 0.8), sigma_b=0.0, tau=0.15,
            sigma_t=2.0, sigma_psf=1.5, n_peak=(200, 600), sigma_read=2.0, background=0.03,
            mask_covers="whole_cell"),
        # Fluo-C2DL-Huh7 / cytoplasm stain: bright nucleus inside a dim textured cytoplasm.
        "cyto_halo_cells": SynthPresetConfig(
            name="cyto_halo_cells", cells=(8, 25), axis_long=(8, 14), aspect_max=1.3,
            epsilon=0.12, gap=0, cytoplasm_scale=(1.6, 2.4), cytoplasm_intensity=(0.2, 0.4),
            cytoplasm_tau=0.2, sigma_b=0.5, tau=0.2, sigma_t=1.5, sigma_psf=1.5,
            n_peak=(50, 200), sigma_read=3.0, background=0.05, ramp=0.1,
            mask_covers="whole_cell"),
    }
    return p


PRESETS: dict[str, SynthPresetConfig] = _presets()


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
