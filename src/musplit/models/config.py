"""Model configuration (spec/usplit.md sections 2 and 10).

`ModelConfig` is re-exported as `musplit.config.ModelConfig`. Fields that depend on the variant
(`z_dims`, `scales`) default to the paper's values for the chosen `lc` when left as None.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Kind = Literal["hvae", "hae", "unet", "bravenet", "ca_unet"]
LC = Literal["none", "lean", "regular", "deep"]


class ModelConfig(BaseModel):
    """Architecture of one musplit model.

    With the defaults and ``kind`` in {"hvae", "hae"} this is the paper's LadderVAE
    (64 filters, 4x128 latents, 5 LC scales; Deep-LC 8x128).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Kind = "hvae"
    lc: LC = "lean"
    filters: int = Field(64, ge=1)
    z_dims: list[int] | None = None
    scales: int | None = Field(None, ge=1)
    out_channels: int = Field(2, ge=2)
    patch: int = Field(64, ge=4)
    blocks_per_level: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    batchnorm: bool = True
    gated: bool = True
    latent_scaling: Literal["reference", "paper", "none"] = "reference"
    sample_mode: Literal["sample", "mean"] = "sample"
    logvar_bound: Literal["hard", "soft"] = "hard"
    logvar_min: float = -5.0
    parity_unused_modules: bool = True

    @model_validator(mode="after")
    def _fill_variant_defaults(self) -> ModelConfig:
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
        if self.kind in ("hvae", "hae"):
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
                # remaining L+1-S levels; the top prior is P/2^(L+1-S) on a side (spec 2.6).
                raise ValueError(
                    f"patch {self.patch} must be even and divisible by 2^{halvings} = "
                    f"{2**halvings} for {self.lc}-LC with {levels} levels and {self.scales} "
                    "scales"
                )
        return self

    @property
    def levels(self) -> int:
        """Number of hierarchy levels L (len(z_dims))."""
        return len(self.z_dims)
