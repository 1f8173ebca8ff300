"""The synthetic-cell preset config of the cell simulator (pre-training and detection data).

One :class:`SynthPresetConfig` describes how the simulator draws cells, texture, optics and
noise (docs/detection.md, "Cell simulator"); the named presets are
:data:`musplit.config.presets.PRETRAIN_PRESETS`. Also the version and range types shared by the
PCMC configs (:mod:`musplit.config.pretrain`, :mod:`musplit.config.pretext`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from musplit.config.base import Strict

PCMC_CONFIG_VERSION = 1

__all__ = ["PCMC_CONFIG_VERSION", "IntRange", "Range", "SynthPresetConfig"]

Range = tuple[float, float]
IntRange = tuple[int, int]


def _check_range(name: str, r: tuple | None) -> None:
    if r is not None and r[0] > r[1]:
        raise ValueError(f"{name}: lower bound {r[0]} exceeds upper bound {r[1]}")


class SynthPresetConfig(Strict):
    """One synthetic fluorescence preset (docs/detection.md, "Cell simulator"). All lengths in
    pixels at ``size``.

    Intensities are relative: a cell of brightness 1 at the centre of its radial profile has
    object intensity 1 before optics; ``i_ref`` is the preset's nominal maximum (the
    simulator's intensity scaling step).
    """

    version: int = PCMC_CONFIG_VERSION
    name: str
    size: int = Field(384, ge=32)
    cells: IntRange = (8, 30)
    extra_cell_p: float = Field(0.0, ge=0, le=1, description="probability of one more cell")
    axis_long: Range = (14.0, 28.0)
    axis_short: Range | None = Field(
        None, description="short semi-axis range; None = long / U(1, aspect_max)")
    aspect_max: float = Field(1.4, ge=1.0)
    epsilon: float = Field(0.06, ge=0, le=0.5, description="star-convex harmonic amplitude")
    elastic_alpha: Range | None = None
    elastic_sigma: float = Field(10.0, gt=0)
    branches: IntRange | None = Field(None, description="short protrusions per cell")
    branch_length: Range = (10.0, 30.0)
    branch_width: Range = (2.0, 4.0)
    filopodia: IntRange | None = None
    filopodia_length: Range = (15.0, 70.0)
    filopodia_width: Range = (1.0, 2.0)
    filopodia_intensity: Range = (0.4, 0.8)
    gap: int = Field(2, ge=0, description="minimum separation between supports")
    brightness: float = Field(1.0, gt=0)
    sigma_b: float = Field(0.15, ge=0)
    tau: float = Field(0.25, ge=0)
    sigma_t: float = Field(2.0, gt=0)
    spots: IntRange = (0, 0)
    spot_radius: Range = (2.0, 4.0)
    spot_factors: list[float] = Field(default_factory=lambda: [0.5, 1.8])
    mitotic_fraction: float = Field(0.0, ge=0, le=1)
    interior_gradient: float = Field(0.0, ge=0, le=0.9)
    cytoplasm_scale: Range | None = Field(
        None, description="cell outline / nucleus size; None = no cytoplasm")
    cytoplasm_intensity: Range = (0.2, 0.4)
    cytoplasm_tau: float = 0.2
    sigma_psf: float = Field(1.5, ge=0)
    n_peak: Range = (300.0, 800.0)
    sigma_read: float = Field(2.0, ge=0)
    background: float = Field(0.03, ge=0, description="flat background b0 (relative)")
    ramp: float = Field(0.0, ge=0, description="amplitude of the linear ramp")
    background_noise: float = Field(0.01, ge=0, description="smooth noise amplitude (σ 40 px)")
    haze: float = Field(0.0, ge=0, description="κ: haze = κ · objects blurred with σ 8")
    i_ref: float = Field(1.5, gt=0)
    mask_covers: Literal["nucleus", "whole_cell"] = "nucleus"
    min_box: int = Field(8, ge=1, description="short box side of every fully visible cell")
    min_area: int = Field(30, ge=1)
    attempts: int = Field(200, ge=1)
    gain: float = Field(1.0, gt=0)
    offset: float = Field(100.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> SynthPresetConfig:
        for n in ("cells", "axis_long", "axis_short", "elastic_alpha", "branches",
                  "branch_length", "branch_width", "filopodia", "filopodia_length",
                  "filopodia_width", "filopodia_intensity", "spots", "spot_radius",
                  "cytoplasm_scale", "cytoplasm_intensity", "n_peak"):
            _check_range(n, getattr(self, n))
        if self.cells[0] < 0:
            raise ValueError("cells: counts must be non-negative")
        if not self.spot_factors:
            raise ValueError("spot_factors: give at least one factor")
        return self
