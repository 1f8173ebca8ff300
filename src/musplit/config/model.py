"""Model configuration: which network, its width, depth, latents and input scales.

The architecture is described in docs/method.md ("Architecture"), the baselines in
docs/evaluation.md ("Baselines"). `ModelConfig` is public as `musplit.config.ModelConfig`
(and, for older code, `musplit.models.config.ModelConfig`). Fields left as None take the
paper's (reference) value for the chosen ``kind`` and ``lc``:

============  ======  =======  ========  =====  =======  ================================
kind          lc      filters  z_dims    depth  dropout  scales
============  ======  =======  ========  =====  =======  ================================
hvae, hae     lean    64       4 x 128   --     0.1      1 (lc none), 5 (LC)
                               (8 x 128
                               for deep)
unet          none    32       --        5      0        1 (lc none), 5 (lc regular,
                                                         at most depth)
ca_unet       none    32       --        5      0        1
bravenet      none    32       --        4      0.1      2 (the primary and one 2x context)
============  ======  =======  ========  =====  =======  ================================

A field that a kind does not use must keep its default (None, or the LadderVAE value for the
LadderVAE-only switches): a config never holds a setting that is silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from musplit.config.base import Strict
from musplit.kinds import (  # noqa: F401  (re-exported)
    BASELINE_KINDS,
    LADDER_KINDS,
    MAX_CHANNELS,
    MIN_CHANNELS,
)

# The kinds of musplit.kinds.KINDS, spelled out for the type (tests/test_cli_layout.py checks).
Kind = Literal["hvae", "hae", "unet", "bravenet", "ca_unet"]
LC = Literal["none", "lean", "regular", "deep"]

# LADDER_KINDS (the LadderVAE) and BASELINE_KINDS (docs/evaluation.md, "Baselines") are
# defined in musplit.kinds, which the command line imports without pydantic.
_LADDER = ", ".join(LADDER_KINDS)  # as error messages name them


def channel_count_message(n: int) -> str:
    """The one line for a channel count musplit cannot split."""
    return (f"{n} target channel(s): musplit splits {MIN_CHANNELS} to {MAX_CHANNELS} structures; "
            "pick them with data.channels (--channels 0,1,2)")


def out_channels_given(model: ModelConfig) -> bool:
    """Whether ``model.out_channels`` was set by the user (else it follows the data)."""
    return "out_channels" in model.model_fields_set

# LadderVAE-only switches and their defaults: a baseline config must leave them alone.
_LADDER_ONLY = {
    "blocks_per_level": 1,
    "batchnorm": True,
    "gated": True,
    "latent_scaling": "reference",
    "sample_mode": "sample",
    "logvar_bound": "hard",
    "logvar_min": -5.0,
    "parity_unused_modules": True,
}


class ModelConfig(Strict):
    """Architecture of one musplit model.

    With the defaults and ``kind`` in :data:`LADDER_KINDS` this is the paper's LadderVAE
    (64 filters, 4x128 latents, 5 LC scales; Deep-LC 8x128). With ``kind="unet"`` it is the
    tuned U-Net (depth 5, width 32: 17,298,594 parameters), with ``lc="regular"`` the U-Net +
    Regular-LC (31,252,834), with ``kind="bravenet"`` the adapted BRAVE-NET (3,513,802) and with
    ``kind="ca_unet"`` the Context-Aware U-Net (all in docs/evaluation.md, "Baselines").

    Attributes
    ----------
    kind : str
        One of :data:`~musplit.kinds.KINDS`: a LadderVAE kind or a baseline.
    lc : {"none", "lean", "regular", "deep"}, optional
        Lateral contextualisation. The U-Net takes "none" or "regular"; the Context-Aware
        U-Net and BRAVE-NET take "none" (BRAVE-NET's context encoder is part of its own
        architecture and is not µSplit's pixel-aligned LC). Default: "lean" for the LadderVAE,
        "none" for the baselines.
    filters : int, optional
        LadderVAE trunk width ``F``; for the baselines the width of the first level, doubled
        at each level below (U-Net ``inc``, BRAVE-NET ``num_kernels[0]``).
    z_dims : list of int, optional
        LadderVAE latent channels per level (its number of levels).
    depth : int, optional
        Baselines only: the U-Net's number of ``Down`` blocks (the paper's "BU blocks") or
        BRAVE-NET's number of encoder levels (``len(num_kernels)``).
    scales : int, optional
        Input scales ``S``: the primary patch plus ``S - 1`` lateral-context inputs. The run
        config also has ``data.scales``; :class:`musplit.config.Config` fills it from this one
        when it is unset and refuses the two when they differ.
    dropout : float, optional
        LadderVAE: ``Dropout2d`` in every residual block. U-Net + LC: in the LC branches'
        residual blocks (the reference uses 0; the U-Net trunk has no dropout). BRAVE-NET:
        ``Dropout`` after the first convolution of every level.
    patch : int
        µSplit's training crop ``P`` (pixels on a side of the primary patch and of every
        lateral-context crop), which the model must be able to halve ``levels`` times. Not the
        ViT token size of the pre-training configs (``ViTConfig.patch_size``). The run config
        also has ``data.patch``; the two must be equal.
    output_dropout : bool
        BRAVE-NET only: also apply ``dropout`` to its 2-channel output heads in training, as
        the reference does (a quirk: it makes the deep-supervised outputs noisy).
        Off by default.
    """

    kind: Kind = "hvae"
    lc: LC | None = None
    filters: int | None = Field(None, ge=1)
    z_dims: list[int] | None = None
    depth: int | None = Field(None, ge=1)
    scales: int | None = Field(None, ge=1)
    out_channels: int = Field(2, description="structures to split, 2 to 4; left out, the "
                              "data's channel count")
    patch: int = Field(64, ge=4)
    blocks_per_level: int = Field(1, ge=1)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    output_dropout: bool = False
    batchnorm: bool = True
    gated: bool = True
    latent_scaling: Literal["reference", "paper", "none"] = "reference"
    sample_mode: Literal["sample", "mean"] = "sample"
    logvar_bound: Literal["hard", "soft"] = "hard"
    logvar_min: float = -5.0
    parity_unused_modules: bool = True

    @model_validator(mode="after")
    def _fill_variant_defaults(self) -> ModelConfig:
        if not MIN_CHANNELS <= self.out_channels <= MAX_CHANNELS:
            raise ValueError(f"out_channels is {self.out_channels}: musplit splits "
                             f"{MIN_CHANNELS} to {MAX_CHANNELS} structures")
        if self.kind in LADDER_KINDS:
            self._check_ladder()
        else:
            self._check_baseline()
        return self

    def _fill(self, name: str, value) -> None:
        if getattr(self, name) is None:
            object.__setattr__(self, name, value)

    # -- the LadderVAE (docs/method.md, "LadderVAE") ------------------------------------
    def _check_ladder(self) -> None:
        self._fill("lc", "lean")
        self._fill("filters", 64)
        self._fill("dropout", 0.1)
        if self.depth is not None:
            raise ValueError(f"depth applies to the baselines, not to kind '{self.kind}' (its "
                             "number of levels is len(z_dims))")
        if self.output_dropout:
            raise ValueError("output_dropout applies to kind 'bravenet' only")
        if self.z_dims is None:
            levels = 8 if self.lc == "deep" else 4
            object.__setattr__(self, "z_dims", [128] * levels)
        if self.scales is None:
            object.__setattr__(self, "scales", 1 if self.lc == "none" else 5)
        if self.lc == "none" and self.scales != 1:
            raise ValueError(f"lc='none' takes scales=1, got scales={self.scales}")
        if self.lc != "none" and self.scales < 2:
            raise ValueError(f"lc='{self.lc}' needs scales >= 2, got {self.scales}")
        levels = len(self.z_dims)
        if levels < 1 or any(z < 1 for z in self.z_dims):
            raise ValueError(f"z_dims must be a non-empty list of positive ints, got {self.z_dims}")
        if self.scales > levels + 1:
            raise ValueError(
                f"{self.scales} LC scales need at least {self.scales - 1} hierarchy levels, "
                f"z_dims has {levels}"
            )
        if self.patch % (2**levels) != 0 and self.lc in ("none", "lean"):
            # Vanilla and Lean-LC pad to a multiple of 2^L internally, but training patches
            # that the model cannot take without padding are almost always a mistake.
            raise ValueError(
                f"patch {self.patch} is not divisible by 2^{levels} = {2**levels} "
                f"(the model halves it {levels} times)"
            )
        halvings = levels + 1 - self.scales
        if self.lc in ("regular", "deep") and (self.patch % 2 or self.patch % 2**halvings):
            # Regular/Deep-LC keep P x P through the LC levels and halve it on the
            # remaining L+1-S levels; the top prior is P/2^(L+1-S) on a side
            # (docs/method.md, "Lateral Contextualisation").
            raise ValueError(
                f"patch {self.patch} must be even and divisible by 2^{halvings} = "
                f"{2**halvings} for {self.lc}-LC with {levels} levels and {self.scales} "
                "scales"
            )

    # -- the baselines (docs/evaluation.md, "Baselines") -----------------------------------
    def _check_baseline(self) -> None:
        kind = self.kind
        self._fill("lc", "none")
        self._fill("filters", 32)
        self._fill("depth", 4 if kind == "bravenet" else 5)
        self._fill("dropout", 0.1 if kind == "bravenet" else 0.0)
        if self.z_dims is not None:
            raise ValueError(f"z_dims applies to the LadderVAE ({_LADDER}), not to kind "
                             f"'{kind}'; leave it unset")
        for name, default in _LADDER_ONLY.items():
            if getattr(self, name) != default:
                raise ValueError(f"{name} applies to the LadderVAE ({_LADDER}), not to kind "
                                 f"'{kind}'; leave it at {default!r}")
        if self.output_dropout and kind != "bravenet":
            raise ValueError("output_dropout applies to kind 'bravenet' only")
        allowed = ("none", "regular") if kind == "unet" else ("none",)
        if self.lc not in allowed:
            raise ValueError(f"kind '{kind}' takes lc in {allowed}, got lc='{self.lc}'")
        d, p = self.depth, self.patch
        if kind == "bravenet":
            self._fill("scales", 2)
            if self.scales != 2:
                raise ValueError("bravenet reads exactly 2 scales (the primary patch and the "
                                 f"2x downsampled context), got scales={self.scales}")
            if d < 2:
                raise ValueError(f"bravenet needs depth >= 2 (encoder levels), got {d}")
            if p % 2 ** (d - 1):
                raise ValueError(f"patch {p} is not divisible by 2^{d - 1} = {2 ** (d - 1)} "
                                 f"(bravenet max-pools it {d - 1} times)")
            return
        self._fill("scales", min(5, d) if self.lc == "regular" else 1)
        if self.lc == "none":
            if self.scales != 1:
                raise ValueError(f"lc='none' takes scales=1, got scales={self.scales}")
            if self.dropout:
                raise ValueError(f"kind '{kind}' without LC has no dropout (the reference "
                                 "U-Net has none); leave dropout at 0")
            if p < 2**d:
                raise ValueError(f"patch {p} is smaller than 2^depth = {2**d} (the U-Net "
                                 f"halves it {d} times)")
            return
        # U-Net + Regular-LC: LC input i merges into the output of Down_i, i = 1..S-1.
        if not 2 <= self.scales <= d:
            # LC input i joins Down_i for i < S; the bottleneck Down_D takes none (as in the
            # reference, whose LC merges are twice Down_i's input width).
            raise ValueError(f"unet with lc='regular' takes 2 <= scales <= depth = {d}, got "
                             f"scales={self.scales}")
        halvings = d + 1 - self.scales
        if p % 2 or p < 2**halvings:
            raise ValueError(f"patch {p} must be even and at least 2^{halvings} = "
                             f"{2**halvings} for unet + Regular-LC with depth {d} and "
                             f"{self.scales} scales")

    @property
    def levels(self) -> int:
        """Number of levels: ``len(z_dims)`` for the LadderVAE, ``depth`` for the baselines."""
        return len(self.z_dims) if self.z_dims is not None else int(self.depth)
