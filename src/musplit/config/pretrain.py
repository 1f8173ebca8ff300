"""Configs of the PCMC detection side: synthetic datasets, ViT / CNN models, detection.

Every config derives from the strict base (:class:`musplit.config.base.Strict`: unknown fields
refused, assignments validated); every top-level config carries a ``version``. Cross-field
checks run when a config is built, so a model that cannot take its image size is refused before
any training starts. The synthetic-cell preset config is in :mod:`musplit.config.synth`, the
pretext side (colormap, masks, objectives, pre-training run) in :mod:`musplit.config.pretext`
(docs/pretraining.md, "Pretext models"; docs/detection.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from musplit.config.base import Strict, validated
from musplit.config.presets import PRETRAIN_PRESETS
from musplit.config.synth import PCMC_CONFIG_VERSION, SynthPresetConfig

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


class SynthDatasetConfig(Strict):
    """A generated dataset: which preset, how many frames, which namespace and seed
    (docs/detection.md, "Cell simulator")."""

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
        if self.preset not in PRETRAIN_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from "
                             f"{sorted(PRETRAIN_PRESETS)}")
        return self


# -- models (docs/pretraining.md, "Pretext models"; docs/detection.md, "Detectors") ----------
def _pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


class ViTConfig(Strict):
    """Plain ViT encoder of PcolorMAE / CCFViT (docs/pretraining.md, "Pretext models").

    Defaults: patch 8, dim 512, depth 6. ``patch_size`` is the ViT token size (pixels on a side
    of one token), not µSplit's training crop ``patch`` of the run and model configs.
    """

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


class _ViTBacked(Strict):
    """The fields every ViT-based PCMC model starts with: ``version`` and its ViT encoder."""

    version: int = PCMC_CONFIG_VERSION
    vit: ViTConfig = Field(default_factory=ViTConfig)


class PcolorMAEConfig(_ViTBacked):
    """PcolorMAE: ViT encoder + MAE decoder regressing masked pcolor patches
    (docs/pretraining.md, "Pretext models")."""

    decoder_dim: int = Field(512, ge=8)
    decoder_depth: int = Field(3, ge=1)
    decoder_heads: int = Field(8, ge=1)
    decoder_dim_head: int = Field(64, ge=1)
    decoder_mlp_dim: int = Field(2048, ge=1)
    masking_ratio: float = Field(0.33, ge=0.0, lt=1.0)
    zero_masked_pixels_before_stem: bool = False
    out_channels: int = Field(3, ge=1, description="channels per output pixel (1 for edges)")


class CCFViTConfig(_ViTBacked):
    """CCFViT detector: ContextBlock + ViT + MobileViT neck + two heads (docs/detection.md,
    "Detectors"). ``mvit_patch`` is the MobileViT unfold window, in ViT tokens."""

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


class CellCentroidFormerConfig(Strict):
    """CellCentroidFormer: ContextBlock + truncated EfficientNetV2-S + MobileViT-K neck
    (docs/detection.md, "Detectors").

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


# -- detection (docs/detection.md, "Fine-tuning") -----------------------------
_REFERENCE_FORCED = {"threshold": 0.75, "nms_kernel": 3, "candidate_threshold": 0.75}


class DetectionConfig(Strict):
    """Detector fine-tuning, decoding and evaluation (docs/detection.md, "Fine-tuning").

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
