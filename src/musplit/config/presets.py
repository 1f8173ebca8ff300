"""Every named preset: run presets (µSplit training), the demos' settings and the synthetic
cell presets of pre-training and detection.

Two families, two names: :data:`RUN_PRESETS` are override dicts for a :class:`Config` (``musplit
train --preset``, :func:`preset`; the old name ``musplit.config.PRESETS``), and
:data:`PRETRAIN_PRESETS` are :class:`SynthPresetConfig` s of the cell simulator (the old name
``musplit.pretrain.synth.PRESETS``). Presets and CLI flags: docs/design.md ("Presets").
"""

from __future__ import annotations

from musplit.config.base import deep_merge
from musplit.config.run import Config
from musplit.config.synth import SynthPresetConfig
from musplit.errors import ConfigError

__all__ = [
    "DEMO_PAIRING",
    "PRETRAIN_PRESETS",
    "RUN_PRESETS",
    "demo_preset",
    "preset",
    "real_demo_preset",
]


# -- run presets ------------------------------------------------------------------------------
def _paper(name: str, data: dict, epochs: int, lr_patience: int, stop_patience: int) -> dict:
    """The paper's recipe (docs/method.md, "Training recipe"): Regular-LC HVAE, fp16 AMP,
    inner padding G = 16."""
    return {
        "name": name,
        "data": data,
        "model": {"kind": "hvae", "lc": "regular"},
        "train": {"max_epochs": epochs, "lr_patience": lr_patience,
                  "early_stopping_patience": stop_patience, "precision": "16-mixed"},
        "predict": {"grid": 16},
    }


def _critters(connector: int) -> dict:
    return {"synthetic": {"frames": 1000, "size": 256, "connector": connector}, "pad": "zeros"}


# Run presets: the paper's settings (docs/method.md, "Training recipe") and laptop-sized ones.
# Each is a dict of overrides applied to the defaults, so that a preset plus user flags is one
# merge.
RUN_PRESETS: dict[str, dict] = {
    "paper-pavia": _paper("paper-pavia", {"channels": [2, 3], "pad": "reflect"}, 200, 15, 100),
    "paper-hagen": _paper("paper-hagen", {"pad": "reflect", "split": "hagen"}, 200, 15, 100),
    "paper-critters-n0": _paper("paper-critters-n0", _critters(0), 4800, 180, 1200),
    "paper-critters-n25": _paper("paper-critters-n25", _critters(25), 2400, 90, 300),
    # Small enough to train in minutes on two CPU cores: fewer filters and latents.
    "cpu-small": {
        "name": "cpu-small",
        "data": {},
        "model": {"kind": "hvae", "lc": "lean", "filters": 32, "z_dims": [32, 32, 32, 32]},
        # β-NLL with β = 1: on short CPU budgets the plain NLL barely moves the means (measured:
        # no gain over a linear fit in 1000 steps where β = 1 gains 4-7 dB); see musplit.losses.
        "train": {"batch_size": 16, "max_steps": 2000, "lr_patience": 5,
                  "early_stopping_patience": 20, "precision": "auto", "nll_beta": 1.0},
        "predict": {"grid": 32, "batch_size": 64},
    },
    # cpu-small for real acquisitions (measured in BENCHMARKS.md, "Real data"): the input is
    # the sum of the channels (a superimposed acquisition adds photons), nothing is clipped
    # (a pooled quantile clip falls inside the brighter channel's structures), patches are
    # flipped and rotated (a few frames hold few objects), and predicted samples add up to the
    # input. Narrower (16 filters) so that 1000 steps take about 5 minutes on two CPU cores.
    "cpu-real": {
        "name": "cpu-real",
        "data": {"input_is_sum": True, "clip_quantile": 1.0, "augment": "d4", "pad": "reflect"},
        "model": {"kind": "hvae", "lc": "lean", "filters": 16, "z_dims": [16, 16, 16, 16]},
        "train": {"batch_size": 16, "max_steps": 1000, "val_every_steps": 125,
                  "lr_patience": 3, "early_stopping_patience": 1000, "precision": "auto",
                  "nll_beta": 1.0},
        "predict": {"grid": 32, "batch_size": 128, "samples": 3, "consistent": True},
    },
}


def preset(preset_name: str, /, **overrides) -> Config:
    """A named preset as a validated :class:`Config`, with optional nested overrides.

    Examples
    --------
    >>> cfg = preset("cpu-small", train={"max_steps": 100})
    """
    name = preset_name
    if name not in RUN_PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(RUN_PRESETS)}")
    # Start from the preset's own overrides (not a dump of the defaults), so that values the
    # model derives from its variant (z_dims, scales) follow a user's `lc` override.
    merged = deep_merge({}, RUN_PRESETS[name])
    if overrides:
        merged = deep_merge(merged, overrides)
    return Config.validated(merged, source=f"preset {name}")


# -- the demos (``musplit demo``, ``musplit demo --real``) --------------------------------------
#: Critters pairing of the demo (see :data:`musplit.data.synthetic.PAIRINGS`). With the paper's
#: pairing only the *pair* of frequencies identifies a channel, a relation that takes the paper's
#: hundreds of thousands of steps to learn: on 2 CPU cores neither model learned any of it within
#: 3000 steps (both stay at the "half the input" level, ~15.5 dB). In "shared-low" the
#: high-frequency half of a critter identifies its channel and the low-frequency half is shared:
#: Vanilla can assign the first from its patch, the second needs the rest of the critter in view.
DEMO_PAIRING = "shared-low"


def demo_preset(lc: str, *, frames: int, size: int, steps: int, seed: int) -> Config:
    """The synthetic demo's run: the ``cpu-small`` preset on critters N25 (pairing
    :data:`DEMO_PAIRING`) with a fixed step budget."""
    return preset(
        "cpu-small",
        name=f"demo-{lc}",
        data={"synthetic": {"frames": frames, "size": size, "connector": 25, "seed": seed,
                            "pairing": DEMO_PAIRING},
              "pad": "zeros"},
        model={"lc": lc, "filters": 16, "z_dims": [16, 16, 16, 16]},
        train={"max_steps": steps, "batch_size": 16, "val_every_steps": max(1, steps // 8),
               "early_stopping_patience": 1000, "lr_patience": 3, "seed": seed},
        predict={"grid": 32, "batch_size": 128},
    )


def real_demo_preset(path, channels, lc: str, *, steps: int, split: str, seed: int = 0,
                     filters: int = 16, batch_size: int = 16) -> Config:
    """The real-data demo's run: the ``cpu-real`` preset on ``channels`` of ``path``."""
    return preset(
        "cpu-real",
        name=f"real-{lc}",
        data={"path": str(path), "channels": list(channels), "split": split},
        model={"lc": lc, "filters": filters, "z_dims": [filters] * 4},
        train={"max_steps": steps, "batch_size": batch_size,
               "val_every_steps": max(1, steps // 8), "seed": seed},
    )


# -- synthetic cell presets (pre-training and detection) ----------------------------------------
def _pretrain_presets() -> dict[str, SynthPresetConfig]:
    """The six synthetic-cell presets (docs/detection.md, "Cell simulator"; all numbers are
    [ours] stand-ins for CTC datasets)."""
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


#: The cell simulator's presets by name (``musplit.pretrain.synth.PRESETS``).
PRETRAIN_PRESETS: dict[str, SynthPresetConfig] = _pretrain_presets()
