"""Configs of the PCMC detection side: synthetic data, models, detection (spec/pcmc.md §9-14).

pydantic v2 models with ``extra="forbid"`` and ``validate_assignment=True``; every top-level
config carries a ``version``. Cross-field checks run when a config is built, so a model that
cannot take its image size is refused before any training starts. The pretext-side configs
(colormap, masks, objectives, pre-training loop) live in ``pretext_config.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from musplit.errors import ConfigError

PCMC_CONFIG_VERSION = 1

__all__ = [
    "PCMC_CONFIG_VERSION",
    "CCFViTConfig",
    "CellCentroidFormerConfig",
    "DetectionConfig",
    "PcolorMAEConfig",
    "SynthDatasetConfig",
    "SynthPresetConfig",
    "ViTConfig",
    "validated",
]

Range = tuple[float, float]
IntRange = tuple[int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_range(name: str, r: tuple | None) -> None:
    if r is not None and r[0] > r[1]:
        raise ValueError(f"{name}: lower bound {r[0]} exceeds upper bound {r[1]}")


def validated(cls: type[BaseModel], data: dict, source: str = "config") -> BaseModel:
    """Build ``cls`` from ``data``; pydantic errors become one readable :class:`ConfigError`."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<root>"
            parts.append(f"{loc}: {err['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(parts)) from None


# -- synthetic data (§11) -------------------------------------------------------------------
class SynthPresetConfig(_Strict):
    """One synthetic fluorescence preset (§11.3). All lengths in pixels at ``size``.

    Intensities are relative: a cell of brightness 1 at the centre of its radial profile has
    object intensity 1 before optics; ``i_ref`` is the preset's nominal maximum (§11.2 step 7).
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


class SynthDatasetConfig(_Strict):
    """A generated dataset: which preset, how many frames, which namespace and seed (§11.6)."""

    version: int = PCMC_CONFIG_VERSION
    preset: str = "sim_nuclei"
    namespace: Literal["pretrain", "detect-train", "detect-val", "detect-test", "split-pool",
                       "split-train", "split-val", "split-test"] = "detect-train"
    frames: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    size: int | None = Field(None, ge=32, description="frame side; None = the preset's")
    dtype: Literal["uint16", "uint8"] = "uint16"
    overrides: dict = Field(default_factory=dict, description="SynthPresetConfig fields")

    @model_validator(mode="after")
    def _preset(self) -> SynthDatasetConfig:
        from musplit.pretrain.synth import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        return self


# -- models (§6.2, §9.1) ---------------------------------------------------------------------
def _pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


class ViTConfig(_Strict):
    """Plain ViT encoder of PcolorMAE / CCFViT (§6.2). Defaults: patch 8, dim 512, depth 6."""

    image_size: int = Field(384, ge=8)
    patch_size: int = Field(8, ge=2)
    dim: int = Field(512, ge=8)
    depth: int = Field(6, ge=1)
    heads: int = Field(8, ge=1)
    dim_head: int = Field(64, ge=1)
    mlp_dim: int = Field(1024, ge=1)
    channels: int = Field(3, ge=1)
    final_norm: bool = Field(False, description="final LayerNorm (vit-pytorch 1.2.x: none)")

    @model_validator(mode="after")
    def _divisible(self) -> ViTConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size "
                             f"{self.patch_size}")
        if self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 (2-D sin-cos embedding)")
        return self


class PcolorMAEConfig(_Strict):
    """PcolorMAE: ViT encoder + MAE decoder regressing masked pcolor patches (§6.2)."""

    version: int = PCMC_CONFIG_VERSION
    vit: ViTConfig = Field(default_factory=ViTConfig)
    decoder_dim: int = Field(512, ge=8)
    decoder_depth: int = Field(3, ge=1)
    decoder_heads: int = Field(8, ge=1)
    decoder_dim_head: int = Field(64, ge=1)
    decoder_mlp_dim: int = Field(2048, ge=1)
    masking_ratio: float = Field(0.33, ge=0.0, lt=1.0)
    zero_masked_pixels_before_stem: bool = False
    out_channels: int = Field(3, ge=1, description="channels per output pixel (1 for edges)")


class CCFViTConfig(_Strict):
    """CCFViT detector: ContextBlock + ViT + MobileViT neck + two heads (§9.1.1)."""

    version: int = PCMC_CONFIG_VERSION
    vit: ViTConfig = Field(default_factory=ViTConfig)
    neck_dim: int = Field(256, ge=8)
    mvit_depth: int = Field(2, ge=1)
    mvit_heads: int = Field(4, ge=1)
    mvit_dim_head: int = Field(8, ge=1)
    mvit_mlp_dim: int = Field(1024, ge=1)
    mvit_patch: int = Field(16, ge=1, description="MobileViT unfold patch side")
    neck_dual_conv: bool = False
    heads_add_3x3_convs: bool = False
    heads_add_activation: bool = False
    aux_pcolor: bool = False
    aux_depth: int = Field(3, ge=1)
    aux_mlp_dim: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _geometry(self) -> CCFViTConfig:
        g = self.vit.image_size // self.vit.patch_size
        if not _pow2(self.vit.patch_size):
            raise ValueError(f"patch_size {self.vit.patch_size} must be a power of two (the "
                             "heads upsample by 2 log2(patch) - 1 times after the neck)")
        if g % self.mvit_patch:
            raise ValueError(f"the token grid {g}x{g} is not divisible by mvit_patch "
                             f"{self.mvit_patch}")
        return self


class CellCentroidFormerConfig(_Strict):
    """CellCentroidFormer: ContextBlock + truncated EfficientNetV2-S + MobileViT-K neck (§9.1.2).

    ``width_mult`` / ``depth_mult`` shrink the backbone (channels rounded to multiples of 8,
    layer repeats rounded up) for tests; 1.0 / 1.0 is efficientnet_v2_s.
    """

    version: int = PCMC_CONFIG_VERSION
    image_size: int = Field(384, ge=16)
    context_block: bool = True
    width_mult: float = Field(1.0, gt=0)
    depth_mult: float = Field(1.0, gt=0)
    stochastic_depth: float = Field(0.2, ge=0, lt=1)
    neck_dims: tuple[int, int] = (256, 128)
    head_filters: tuple[int, int, int] = (128, 64, 32)
    mvit_heads: int = Field(2, ge=1)
    mvit_depth: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _geometry(self) -> CellCentroidFormerConfig:
        if self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} must be divisible by 16 (the "
                             "backbone has stride 16)")
        return self


# -- detection (§9) -------------------------------------------------------------------------
_REFERENCE_FORCED = {"threshold": 0.75, "nms_kernel": 3, "candidate_threshold": 0.75}


class DetectionConfig(_Strict):
    """Detector fine-tuning, decoding and evaluation (§9.2-9.6, §12.2).

    ``mode="reference"`` reproduces the reference evaluation (GT decoded from target maps,
    constant scores, max_dets [1, 10, 100], threshold 0.75, NMS 3); explicit conflicting
    decoding values are refused.
    """

    version: int = PCMC_CONFIG_VERSION
    model: Literal["ccf_vit", "ccf_cnn"] = "ccf_vit"
    vit: CCFViTConfig | None = None
    cnn: CellCentroidFormerConfig | None = None
    rel_dims: bool = Field(False, description="ViT size maps divided by the image size")
    size_scheme: Literal["auto", "block3", "central_half"] = "auto"
    size_loss_norm: Literal["map", "mask"] = "map"
    huber_delta: float = Field(1.0, gt=0)
    size_weight: float = Field(0.5, ge=0)
    aux_pcolor_weight: float = Field(1.0, ge=0)
    threshold: float = Field(0.75, ge=0, le=1, description="decoding / F1 threshold τ")
    nms_kernel: int = Field(3, ge=0, description="max-pool NMS window; 0 or 1 = no NMS")
    candidate_threshold: float = Field(0.3, ge=0, le=1, description="clean-mode candidates")
    mode: Literal["clean", "reference"] = "clean"
    max_dets: list[int] | None = Field(None, description="None = [10, 100, 1000] (clean) or "
                                       "[1, 10, 100] (reference)")
    steps: int = Field(4000, ge=1)
    batch: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_min: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    backbone_frozen: bool = False
    augment: bool = True
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _reference(cls, data):
        if isinstance(data, dict) and data.get("mode") == "reference":
            data = dict(data)
            for k, v in _REFERENCE_FORCED.items():
                if k in data and data[k] is not None and float(data[k]) != v:
                    raise ValueError(f"reference mode forces {k} = {v}; got {data[k]}")
                data[k] = v
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DetectionConfig:
        if self.model == "ccf_vit" and self.cnn is not None:
            raise ValueError("cnn settings given for model ccf_vit")
        if self.model == "ccf_cnn" and self.vit is not None:
            raise ValueError("vit settings given for model ccf_cnn")
        if self.max_dets is not None and (not self.max_dets or min(self.max_dets) < 1):
            raise ValueError("max_dets must be a non-empty list of positive integers")
        if self.mode == "reference":
            for k, v in _REFERENCE_FORCED.items():
                if getattr(self, k) != v:
                    raise ValueError(f"reference mode forces {k} = {v}")
        return self

    def with_mode(self, mode: str) -> DetectionConfig:
        """This config in evaluation ``mode``; decoding values and max_dets take that mode's
        defaults (clean: candidate threshold 0.3; reference: the forced values)."""
        if mode == self.mode:
            return self
        data = self.model_dump()
        for k in (*_REFERENCE_FORCED, "max_dets"):
            data.pop(k, None)
        data["mode"] = mode
        if mode == "clean":
            data["threshold"] = self.threshold
            data["nms_kernel"] = self.nms_kernel
        return DetectionConfig.model_validate(data)

    @property
    def model_config_resolved(self) -> CCFViTConfig | CellCentroidFormerConfig:
        if self.model == "ccf_vit":
            return self.vit or CCFViTConfig()
        return self.cnn or CellCentroidFormerConfig()

    @property
    def image_size(self) -> int:
        m = self.model_config_resolved
        return m.vit.image_size if isinstance(m, CCFViTConfig) else m.image_size

    @property
    def scheme(self) -> str:
        """The size-map scheme: explicit, or the model variant's (block3 ViT, central_half CNN)."""
        if self.size_scheme != "auto":
            return self.size_scheme
        return "block3" if self.model == "ccf_vit" else "central_half"

    @property
    def relative_sizes(self) -> bool:
        """Whether size maps hold sizes / image size (always for the sigmoid CNN heads)."""
        return True if self.model == "ccf_cnn" else self.rel_dims

    @property
    def max_dets_resolved(self) -> list[int]:
        if self.max_dets is not None:
            return list(self.max_dets)
        return [1, 10, 100] if self.mode == "reference" else [10, 100, 1000]
