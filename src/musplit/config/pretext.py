"""Configs of the pretext side of PCMC: colormap, intensity normalisation, masks, objective
and the pre-training run (docs/pretraining.md, "Pretext models").

Strict pydantic v2 models (:class:`musplit.config.base.Strict`) with a ``version``. Settings
left as None are filled from the objective and the model when the :class:`PretrainConfig` is
built (the defaults of docs/pretraining.md), so a stored config always says what ran; a setting
that the chosen objective or model would ignore is refused rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from musplit.config.base import Strict
from musplit.config.model import _LADDER, LADDER_KINDS, ModelConfig
from musplit.config.pretrain import CellCentroidFormerConfig, ViTConfig

PRETEXT_CONFIG_VERSION = 1

__all__ = [
    "PRETEXT_CONFIG_VERSION",
    "BlockMaskConfig",
    "ColormapConfig",
    "IntensityNormConfig",
    "MaskConfig",
    "NoMaskConfig",
    "PaddedMaskConfig",
    "PretextConfig",
    "PretrainConfig",
    "TokenMaskConfig",
]

Objective = Literal["pcolor", "masked_gray", "mae", "edge", "simclr", "random"]
ModelName = Literal["ccf_vit", "ccf_cnn", "usplit_encoder"]


class _Versioned(Strict):
    """The strict base with this module's ``version`` (refused when newer than this musplit)."""

    version: int = PRETEXT_CONFIG_VERSION

    @model_validator(mode="after")
    def _version(self):
        if self.version > PRETEXT_CONFIG_VERSION:
            raise ValueError(f"config version {self.version} is newer than this musplit "
                             f"understands ({PRETEXT_CONFIG_VERSION}): upgrade musplit")
        return self


class ColormapConfig(_Versioned):
    """The pretext colormap (docs/pretraining.md, "Colormap"): ``name`` and ``quantize``
    (256-level LUT; False is the continuous variant of ablation A6)."""

    name: Literal["nipy_spectral", "rainbow", "seismic", "viridis", "gray"] = "nipy_spectral"
    quantize: bool = True

    @model_validator(mode="after")
    def _viridis(self) -> ColormapConfig:
        if self.name == "viridis":
            try:
                import matplotlib  # noqa: F401
            except ImportError:  # pragma: no cover - depends on the environment
                raise ValueError("colormap 'viridis' needs matplotlib (pip install "
                                 "matplotlib)") from None
        return self


class IntensityNormConfig(_Versioned):
    """Min-max normalisation to [0, 1] (docs/pretraining.md, "Pre-processing").

    ``method="percentile"`` clips to ``[p_lo, p_hi]`` percentiles first (both required; both
    must stay unset for plain min-max). ``scope``: over each ``image`` the model sees, or over
    the whole ``frame`` a patch comes from (µSplit pre-training); None = ``image``
    for the detection models, ``frame`` for ``usplit_encoder``.
    """

    method: Literal["minmax", "percentile"] = "minmax"
    p_lo: float | None = Field(None, ge=0.0, le=100.0)
    p_hi: float | None = Field(None, ge=0.0, le=100.0)
    scope: Literal["image", "frame"] | None = None

    @model_validator(mode="after")
    def _check(self) -> IntensityNormConfig:
        if self.method == "percentile":
            if self.p_lo is None or self.p_hi is None or not self.p_lo < self.p_hi:
                raise ValueError("percentile normalisation needs p_lo < p_hi")
        elif self.p_lo is not None or self.p_hi is not None:
            raise ValueError("p_lo/p_hi apply to method 'percentile' only")
        return self

    @property
    def percentiles(self) -> tuple[float, float] | None:
        return (self.p_lo, self.p_hi) if self.method == "percentile" else None


class PaddedMaskConfig(_Versioned):
    """Padded masks (docs/pretraining.md, "Masks"): ``patch`` side of one masked square (not
    the training crop of µSplit, nor the ViT token size), probability ``p``, ``per_sample``
    draws (None: True in clean mode, False in reference mode), ``fill`` value in the [0, 1]
    domain."""

    kind: Literal["padded"] = "padded"
    patch: int = Field(12, ge=2)
    p: float = Field(0.5, ge=0.0, le=1.0)
    per_sample: bool | None = None
    fill: float = 0.0


class TokenMaskConfig(_Versioned):
    """ViT token dropping (docs/pretraining.md, "Masks"): ``ratio`` in [0, 1);
    ``zero_masked_pixels_before_stem`` (None: True in clean mode, False in reference mode)."""

    kind: Literal["tokens"] = "tokens"
    ratio: float = Field(0.33, ge=0.0, lt=1.0)
    zero_masked_pixels_before_stem: bool | None = None


class BlockMaskConfig(_Versioned):
    """MAE block masks in pixel space (docs/pretraining.md, "Masks"): ``block`` side, exactly
    ``round(ratio n)`` blocks per sample."""

    kind: Literal["blocks"] = "blocks"
    block: int = Field(24, ge=1)
    ratio: float = Field(0.75, gt=0.0, le=1.0)


class NoMaskConfig(_Versioned):
    """No masking (docs/pretraining.md, "Masks")."""

    kind: Literal["none"] = "none"


MaskConfig = Annotated[
    PaddedMaskConfig | TokenMaskConfig | BlockMaskConfig | NoMaskConfig,
    Field(discriminator="kind"),
]


class PretextConfig(_Versioned):
    """The pretext task (docs/pretraining.md, "Objectives").

    Attributes
    ----------
    objective : {"pcolor", "masked_gray", "mae", "edge", "simclr", "random"}
    colormap : ColormapConfig, optional
        pcolor: default nipy_spectral. masked_gray and mae: gray (the only one allowed).
        Others: must stay unset.
    norm : IntensityNormConfig
    mask : MaskConfig, optional
        Default from the objective and the model (:func:`musplit.pretrain.objectives.default_mask`).
    loss_region : {"all", "masked"}, optional
        Pixel-space masks: loss over all pixels or the masked ones (default: "masked" for mae,
        "all" otherwise). The ViT always scores the masked tokens.
    decoder_dim, decoder_depth, decoder_heads, decoder_dim_head, decoder_mlp_dim : int
        The PcolorMAE decoder (512, depth 3, 8 x 64, MLP 2048; docs/pretraining.md,
        "Pretext models").
    head_width : int
        Width of the µSplit pretext head (64).
    temperature : float
        NT-Xent temperature (0.1).
    intra_view_negatives : bool
        SimCLR with the 2B - 2 negatives of the original paper (default False, the reference).
    projection : list of int
        SimCLR projection widths (256, 128, 64).
    """

    objective: Objective = "pcolor"
    colormap: ColormapConfig | None = None
    norm: IntensityNormConfig = Field(default_factory=IntensityNormConfig)
    mask: MaskConfig | None = None
    loss_region: Literal["all", "masked"] | None = None
    decoder_dim: int = Field(512, ge=1)
    decoder_depth: int = Field(3, ge=1)
    decoder_heads: int = Field(8, ge=1)
    decoder_dim_head: int = Field(64, ge=1)
    decoder_mlp_dim: int = Field(2048, ge=1)
    head_width: int = Field(64, ge=1)
    temperature: float = Field(0.1, gt=0.0)
    intra_view_negatives: bool = False
    projection: list[int] = Field(default_factory=lambda: [256, 128, 64], min_length=1)

    @model_validator(mode="after")
    def _check(self) -> PretextConfig:
        obj = self.objective
        if obj == "pcolor":
            if self.colormap is None:
                object.__setattr__(self, "colormap", ColormapConfig())
        elif obj in ("masked_gray", "mae"):
            if self.colormap is None:
                object.__setattr__(self, "colormap", ColormapConfig(name="gray"))
            elif self.colormap.name != "gray":
                raise ValueError(f"objective {obj!r} reconstructs gray values; its colormap "
                                 f"is 'gray', not {self.colormap.name!r} (use objective "
                                 "'pcolor' for colour)")
        elif self.colormap is not None:
            raise ValueError(f"objective {obj!r} has no colour target: leave colormap unset")
        if self.loss_region is None:
            object.__setattr__(self, "loss_region", "masked" if obj == "mae" else "all")
        return self


class PretrainConfig(_Versioned):
    """One pre-training run (docs/pretraining.md, "Optimisation and augmentation").

    Attributes
    ----------
    model : {"ccf_vit", "ccf_cnn", "usplit_encoder"}
    scope : {"encoder", "network"}, optional
        What is pre-trained and transferred. usplit_encoder: "encoder" (default; the bottom-up
        path with the pretext head) or "network" (the whole network run deterministically
        with a 3-channel head). ccf_vit: "encoder" (stem, patch embedding and ViT encoder).
        ccf_cnn: "network" (everything but the replaced final convolutions); all in
        docs/pretraining.md, "µSplit pre-training" and "Pretext models".
    mode : {"clean", "reference"}
        Clean (default) or reference-compatible behaviour where the method offers both.
    pretext : PretextConfig
    image_size : int
        Side of the frames the detection models see (384).
    geometry : {"resize", "crop"}
        How frames of another size become ``image_size`` (bilinear resize or random crops).
    vit : ViTConfig, optional
        ccf_vit only: the ViT encoder (default: patch 8, dim 512, depth 6); its
        ``image_size`` follows ``image_size``.
    cnn : CellCentroidFormerConfig, optional
        ccf_cnn only: the CellCentroidFormer; its ``image_size`` follows ``image_size``.
    usplit : ModelConfig, optional
        usplit_encoder only: the µSplit network whose encoder is pre-trained (default: the
        paper's HVAE with Lean-LC).
    mask_lc : bool
        usplit_encoder: mask the full-resolution window before the LC pyramid is built (True) or
        only the primary patch (False; leaks through the context levels).
    clip_quantile : float
        usplit_encoder: upper clip quantile of the input statistics (as musplit training).
    pad : {"reflect", "zeros"}
        usplit_encoder: LC padding.
    batch_size : int
    lr : float
        AdamW learning rate at batch 16; scaled linearly with ``batch_size``.
    lr_min : float
        End of the cosine schedule.
    weight_decay : float
    schedule : {"cosine", "cosine_epoch", "constant"}
        Cosine stepped per optimiser step (default), per epoch (reference), or none.
    warmup : float
        Fraction of the steps with a linear warm-up (0; the method's option is 0.05).
    steps, epochs : int, optional
        Budget; ``epochs`` converts to steps with the data size. The ``steps`` argument of
        :func:`musplit.pretrain.train.pretrain` overrides both.
    augmentation : {"reference", "d4", "none"}, optional
        Default: the reference crop/rotation set ("reference") for the detection models, flips
        and 90° rotations ("d4") for usplit_encoder.
    precision : {"32", "bf16-mixed"}
    seed : int
    """

    model: ModelName = "ccf_vit"
    scope: Literal["encoder", "network"] | None = None
    mode: Literal["clean", "reference"] = "clean"
    pretext: PretextConfig = Field(default_factory=PretextConfig)
    image_size: int = Field(384, ge=8)
    geometry: Literal["resize", "crop"] = "resize"
    vit: ViTConfig | None = None
    cnn: CellCentroidFormerConfig | None = None
    usplit: ModelConfig | None = None
    mask_lc: bool = True
    clip_quantile: float = Field(0.995, gt=0.0, le=1.0)
    pad: Literal["reflect", "zeros"] = "reflect"
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    lr_min: float = Field(1e-6, ge=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    schedule: Literal["cosine", "cosine_epoch", "constant"] = "cosine"
    warmup: float = Field(0.0, ge=0.0, lt=1.0)
    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    augmentation: Literal["reference", "d4", "none"] | None = None
    precision: Literal["32", "bf16-mixed"] = "32"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        # Lazy: the objectives registry (musplit.pretrain.objectives) is torch code that comes
        # later in the data flow than the configs, which import nothing but musplit.errors.
        from musplit.pretrain.objectives import default_mask

        # Defaults are filled into a private copy: a PretextConfig given by the caller may be
        # shared with other runs (another model has other defaults).
        pt = self.pretext.model_copy(deep=True)
        object.__setattr__(self, "pretext", pt)
        model, obj = self.model, pt.objective
        usplit = model == "usplit_encoder"
        # -- scope ------------------------------------------------------------------------
        # ccf_cnn transfers all but the final convolutions after a dense objective, stem and
        # backbone only after SimCLR (docs/pretraining.md, "Pretext models").
        fixed = {"ccf_vit": "encoder", "ccf_cnn": "encoder" if obj == "simclr" else "network"}
        if self.scope is None:
            object.__setattr__(self, "scope", fixed.get(model, "encoder"))
        elif model in fixed and self.scope != fixed[model]:
            raise ValueError(f"model {model} transfers its {fixed[model]} (docs/pretraining.md); "
                             f"scope {self.scope!r} applies to usplit_encoder only")
        if usplit and self.scope == "network" and obj in ("simclr",):
            raise ValueError("scope 'network' needs a dense objective (pcolor, masked_gray, "
                             "mae, edge), not simclr")
        # -- model-specific fields --------------------------------------------------------
        if usplit:
            if self.usplit is None:
                object.__setattr__(self, "usplit", ModelConfig())
            if self.usplit.kind not in (*LADDER_KINDS, "unet"):
                raise ValueError(f"usplit_encoder pre-trains the LadderVAE ({_LADDER}) or the "
                                 f"U-Net (unet), not kind {self.usplit.kind!r}")
        elif self.usplit is not None:
            raise ValueError(f"the usplit model config applies to usplit_encoder, not {model}")
        for name, owner, cls in (("vit", "ccf_vit", ViTConfig),
                                 ("cnn", "ccf_cnn", CellCentroidFormerConfig)):
            sub = getattr(self, name)
            if model != owner:
                if sub is not None:
                    raise ValueError(f"{name} settings apply to {owner}, not {model}")
                continue
            data = sub.model_dump() if sub is not None else {}
            if sub is not None and "image_size" in sub.model_fields_set and \
                    sub.image_size != self.image_size:
                raise ValueError(f"{name}.image_size {sub.image_size} differs from image_size "
                                 f"{self.image_size}")
            data["image_size"] = self.image_size
            object.__setattr__(self, name, cls.model_validate(data))
        # -- normalisation scope ----------------------------------------------------------
        if pt.norm.scope is None:
            object.__setattr__(pt.norm, "scope", "frame" if usplit else "image")
        # -- augmentation -----------------------------------------------------------------
        if self.augmentation is None:
            object.__setattr__(self, "augmentation", "d4" if usplit else "reference")
        if usplit and self.augmentation == "reference":
            raise ValueError("usplit_encoder augments with flips and 90° rotations ('d4') or "
                             "not at all ('none'); the reference crop/rotation set needs whole "
                             "frames")
        # -- masks ------------------------------------------------------------------------
        if pt.mask is None:
            object.__setattr__(pt, "mask", _mask_from(default_mask(obj, model)))
        mask = pt.mask
        if mask.kind == "padded" and mask.per_sample is None:
            object.__setattr__(mask, "per_sample", self.mode == "clean")
        if mask.kind == "tokens" and mask.zero_masked_pixels_before_stem is None:
            object.__setattr__(mask, "zero_masked_pixels_before_stem", self.mode == "clean")
        allowed = ("tokens", "none") if model == "ccf_vit" else ("padded", "blocks", "none")
        if mask.kind not in allowed:
            raise ValueError(f"model {model} takes mask kinds {allowed}, got {mask.kind!r}")
        if obj in ("edge", "simclr", "random") and mask.kind != "none" and not (
                mask.kind == "tokens" and mask.ratio == 0):
            raise ValueError(f"objective {obj!r} does not mask its input: use mask kind "
                             "'none'")
        if mask.kind == "tokens" and mask.ratio == 0 and obj not in ("edge", "simclr"):
            raise ValueError("token ratio 0 is only for the no-mask objectives (edge); for "
                             "pcolor without masks (ablation A1) use mask kind 'none'")
        side = self.usplit.patch if usplit else self.image_size
        if mask.kind == "padded" and side // (mask.patch + mask.patch // 2) == 0:
            raise ValueError(f"padded masks with patch {mask.patch} leave no candidates on a "
                             f"{side}-px image (need >= {mask.patch + mask.patch // 2} px)")
        if mask.kind == "blocks" and side // mask.block == 0:
            raise ValueError(f"block masks of {mask.block} px do not fit a {side}-px image")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give steps or epochs, not both")
        return self

    @property
    def effective_lr(self) -> float:
        """``lr`` scaled linearly from batch 16 to ``batch_size``."""
        return self.lr * self.batch_size / 16


def _mask_from(data: dict):
    kinds = {"padded": PaddedMaskConfig, "tokens": TokenMaskConfig, "blocks": BlockMaskConfig,
             "none": NoMaskConfig}
    return kinds[data["kind"]](**data)
