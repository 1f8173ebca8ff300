"""The run configuration: data, model, training and prediction settings of one run.

A :class:`Config` holds everything a run needs and is validated as a whole when it is built,
so an inconsistent run fails before it starts rather than at step 3,000 (docs/design.md,
"Configuration"). Every config carries a ``version``. The model part is
:class:`~musplit.config.model.ModelConfig`; the named presets are in :mod:`musplit.config.presets`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from musplit.config.base import (
    Strict,
    deep_merge,
    format_validation_error,
    read_yaml_mapping,
    write_yaml,
)
from musplit.config.model import (
    MAX_CHANNELS,
    MIN_CHANNELS,
    ModelConfig,
    channel_count_message,
    out_channels_given,
)
from musplit.errors import ConfigError
from musplit.kinds import LADDER_KINDS

CONFIG_VERSION = 1

__all__ = [
    "CONFIG_VERSION",
    "Config",
    "CrittersConfig",
    "DataConfig",
    "PredictConfig",
    "TrainConfig",
]


class CrittersConfig(Strict):
    """Built-in SinosoidalCritters data (docs/data.md, "Synthetic data")."""

    frames: int = Field(1000, ge=3)
    size: int = Field(256, ge=16)
    connector: int = Field(25, ge=0)
    seed: int = 0
    pairing: Literal["paper", "shared-low", "shared-high"] = "paper"


class DataConfig(Strict):
    """Where the training channels come from and how patches are made (docs/data.md).

    ``patch`` is µSplit's training crop ``P`` (pixels on a side) and ``scales`` the number of
    lateral-context scales; both are also model settings (``model.patch``, ``model.scales``)
    because the network is built from its :class:`ModelConfig` alone. :class:`Config` fills
    ``scales`` from the model's when it is None and refuses a run where either differs.
    """

    path: str | list[str] | None = Field(
        None, description="multi-channel data: a file (TIFF, Zarr, npy), a folder or glob of "
        "such files, or a list of them (one or more frames each, the same channels)")
    channel_paths: list[str] | None = Field(
        None, description="one file per target channel (or one folder holding them)")
    axes: str | None = Field(None, description="axes of the file(s), e.g. SYXC; None = metadata")
    channels: list[int] | None = Field(None, description="channel indices in `path`")
    channel_names: list[str] | None = None
    synthetic: CrittersConfig | None = None
    patch: int = Field(64, ge=4)
    scales: int | None = Field(None, ge=1, description="LC scales; None = the model's")
    pad: Literal["reflect", "zeros"] = "reflect"
    lc_alignment: Literal["exact", "floor"] = "exact"
    clip_quantile: float = Field(0.995, gt=0.0, le=1.0)
    channelwise_quantile: bool = False
    alpha: list[float] | None = None
    input_is_sum: bool = False
    alpha_range: tuple[float, float] | None = Field(
        None, description="two channels: per training patch the weight of channel 0 is drawn "
        "uniformly from (lo, hi), channel 1 gets one minus it")
    alpha_ranges: list[tuple[float, float]] | None = Field(
        None, description="one (lo, hi) per target channel: per training patch each channel's "
        "weight is drawn uniformly from its range, then the weights are normalised to sum to 1 "
        "(MicroSplit's unknown mixing ratio; docs/data.md, \"Input formation\")")
    augment: Literal["none", "d4"] = "none"
    split: str = Field("default", description="'default' (frames; a spatial split when there "
                       "are too few frames), 'spatial', 'hagen' or a split.json file")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5,
                                description="spatial split: share of the pixels for validation")
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5,
                                 description="spatial split: share held out for testing (0: none)")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        sources = sum(x is not None for x in (self.path, self.channel_paths, self.synthetic))
        if sources > 1:
            raise ValueError("give only one of data.path, data.channel_paths, data.synthetic")
        if self.channel_paths is not None and not self.channel_paths:
            raise ValueError("data.channel_paths needs at least two files, one per channel")
        if self.channels is not None:
            if len(self.channels) < 2:
                raise ValueError("data.channels needs at least two channel indices")
            if len(set(self.channels)) != len(self.channels):
                raise ValueError(f"data.channels repeats a channel: {self.channels}")
        if self.alpha is not None and abs(sum(self.alpha) - 1.0) > 1e-6:
            raise ValueError(f"data.alpha must sum to 1, got {self.alpha}")
        ar = self.alpha_range
        if ar is not None and not 0 <= ar[0] <= ar[1] <= 1:
            raise ValueError(f"data.alpha_range must satisfy 0 <= lo <= hi <= 1: {ar}")
        if self.alpha_ranges is not None:
            self._check_alpha_ranges()
        if self.patch % 2:
            raise ValueError(f"data.patch must be even, got {self.patch}")
        return self

    def _check_alpha_ranges(self) -> None:
        """``alpha_ranges``: one ``0 <= lo <= hi`` per channel, alone (the length against the
        channel count is :class:`Config`'s check)."""
        for other, why in (("alpha_range", "its two-channel form"),
                           ("alpha", "fixed weights"),
                           ("input_is_sum", "the plain sum of the channels")):
            if getattr(self, other) not in (None, False):
                raise ValueError(f"data.alpha_ranges draws the mixing weights per patch, "
                                 f"data.{other} sets {why}: give only one of them")
        rs = self.alpha_ranges
        if len(rs) < 2:
            raise ValueError(f"data.alpha_ranges needs one (lo, hi) per target channel, got "
                             f"{len(rs)}")
        for c, (lo, hi) in enumerate(rs):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"data.alpha_ranges: channel {c}'s range ({lo:g}, {hi:g}) "
                                 "must satisfy 0 <= lo <= hi")
        if not any(hi > 0 for _, hi in rs):
            raise ValueError("data.alpha_ranges: every range is (0, 0), so every weight would "
                             "be 0")

    @property
    def n_channels(self) -> int | None:
        if self.channels is not None:
            return len(self.channels)
        if self.channel_paths is not None:  # one entry: a folder, counted when it is read
            return len(self.channel_paths) if len(self.channel_paths) > 1 else None
        if self.synthetic is not None:
            return 2
        return None


class TrainConfig(Strict):
    """Optimisation settings (docs/method.md, "Training recipe")."""

    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr_patience: int = Field(15, ge=0)
    early_stopping_patience: int = Field(100, ge=1)
    grad_clip_norm: float | None = Field(0.5, gt=0)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16 autocast where the hardware has bf16 arithmetic (a CPU "
        "with AVX512-BF16 or AMX, a CUDA GPU from Ampere on), fp32 elsewhere; 32 (fp32), "
        "bf16-mixed, 16-mixed as Lightning takes them; also spelled fp32, bf16, fp16")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    loss_normalisation: Literal["reference", "elbo"] = "reference"
    kl_estimator: Literal["mc", "analytic"] = "mc"
    free_bits: float = Field(0.0, ge=0)
    kl_annealing: bool = False
    nll_beta: float = Field(0.0, ge=0.0, le=1.0, description="β-NLL exponent; 0 = paper NLL")
    val_every_steps: int | None = Field(None, ge=1)
    init_from: str | None = Field(
        None, description="pre-training checkpoint (musplit pretrain) whose encoder weights "
        "initialise the model, loaded strictly (docs/pretraining.md, \"Transfer to µSplit\")")
    loss: Literal["usplit", "denoisplit", "denoisplit_usplit"] = Field(
        "usplit", description="training loss (docs/microsplit.md, \"Training with noise "
        "models\"): usplit (clean targets: the Gaussian split ELBO), denoisplit (noisy "
        "targets: noise-model likelihood + denoiSplit KL), denoisplit_usplit (noisy targets: "
        "MicroSplit's weighted sum of both)")
    noise_models: list[str] | None = Field(
        None, description="one noise-model .npz file per target channel, in channel order "
        "(musplit noise-model fit); needed by the denoisplit losses, stored in the checkpoints")
    usplit_weight: float = Field(0.1, ge=0.0, description="w_µS of denoisplit_usplit")
    denoisplit_weight: float = Field(0.9, ge=0.0, description="w_dS of denoisplit_usplit")
    denoisplit_free_nats: float = Field(
        1.0, ge=0.0, description="free bits of the denoiSplit KL, in nats per latent level")
    # Where the run trains (docs/training.md, "Several GPUs or a SLURM cluster"): Lightning's
    # Trainer settings of the same names. They say nothing about the model, so a resumed run
    # may change them (musplit.config.resume.RESUMABLE).
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = Field(
        "auto", description="Lightning accelerator: auto (a GPU when there is one), cpu, gpu")
    devices: int | str = Field(
        1, description="processes per node: a count (each trains on its own device with its "
        "own batch_size patches), GPU indices such as '0,1', or 'auto' (Lightning's choice: "
        "every GPU of the machine); 1 by default, whatever the machine has")
    strategy: str = Field(
        "auto", description="Lightning strategy: auto (one device), ddp (data parallel, one "
        "process per device), ddp_spawn, ddp_find_unused_parameters_true, ...")
    num_nodes: int = Field(1, ge=1, description="machines of a data-parallel run (on SLURM: "
                           "the job's --nodes)")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_aliases(cls, v):
        aliases = {"fp32": "32", "32-true": "32", "bf16": "bf16-mixed", "fp16": "16-mixed"}
        return aliases.get(v.strip().lower(), v.strip()) if isinstance(v, str) else \
            ("32" if v == 32 else v)

    @field_validator("devices", mode="before")
    @classmethod
    def _check_devices(cls, v):
        if isinstance(v, bool):
            raise ValueError("train.devices must be 'auto', a count or device indices")
        if isinstance(v, str):
            text = v.strip()
            if text.lstrip("-").isdigit():
                v = int(text)
            elif text != "auto" and not re.fullmatch(r"\d+(,\d+)*,?", text):
                raise ValueError(f"train.devices must be 'auto', a count such as 2 or GPU "
                                 f"indices such as '0,1', got {v!r}")
            else:
                return text
        if isinstance(v, int) and v < 1 and v != -1:
            raise ValueError(f"train.devices must be at least 1 (or -1: all), got {v}")
        return v

    @field_validator("strategy")
    @classmethod
    def _check_strategy(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("train.strategy is empty: give auto, ddp, ddp_spawn, ...")
        return v.strip()

    @model_validator(mode="after")
    def _check_loss(self) -> TrainConfig:
        defaults = {k: TrainConfig.model_fields[k].default
                    for k in ("usplit_weight", "denoisplit_weight", "denoisplit_free_nats")}
        if self.loss == "usplit":
            if self.noise_models is not None:
                raise ValueError("train.noise_models are given but train.loss is 'usplit', "
                                 "which does not use them: choose train.loss denoisplit_usplit "
                                 "or denoisplit (--loss)")
            changed = [k for k, v in defaults.items() if getattr(self, k) != v]
        else:
            if not self.noise_models:
                raise ValueError(f"train.loss '{self.loss}' needs train.noise_models: one "
                                 "noise-model .npz file per target channel (--noise-models "
                                 "a.npz,b.npz; fit them with musplit noise-model fit)")
            if any(not str(p).strip() for p in self.noise_models):
                raise ValueError(f"train.noise_models has an empty path: {self.noise_models}")
            changed = [k for k in ("usplit_weight", "denoisplit_weight")
                       if self.loss == "denoisplit" and getattr(self, k) != defaults[k]]
        if changed:
            raise ValueError(f"train.{', train.'.join(changed)} set but train.loss "
                             f"'{self.loss}' does not use {'it' if len(changed) == 1 else 'them'}")
        if self.loss == "denoisplit_usplit" and self.usplit_weight + self.denoisplit_weight <= 0:
            raise ValueError("train.usplit_weight + train.denoisplit_weight must be > 0")
        return self


class PredictConfig(Strict):
    """Tiled prediction settings (docs/tiling.md)."""

    padding: Literal["inner", "outer", "none"] = "inner"
    grid: int | None = Field(None, ge=2, description="tile size G; None = variant default")
    samples: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    blend: Literal["none", "linear", "cosine"] = "none"
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="network arithmetic: fp32 (parity) or bf16/fp16 autocast, faster "
        "where the hardware has it (CUDA; CPUs with AVX512-BF16 or AMX)")
    consistent: bool = Field(
        False, description="make each predicted sample add up to the input: the residual "
        "(input - mix of the predicted channels) is shared out in proportion to each channel's "
        "predicted variance (the Gaussian likelihood conditioned on the observed mix)")
    brightness: Literal["check", "match", "off"] = Field(
        "check", description="compare the image's brightness (99.9th percentile) with the "
        "training mixes': 'check' refuses an image more than 2x brighter or dimmer (another "
        "gain, exposure, or a mean-vs-sum mix) with the reason; 'match' rescales it to the "
        "training brightness and returns the channels in the image's units; 'off' skips it")


class Config(Strict):
    """Everything one run needs, validated as a whole."""

    version: int = CONFIG_VERSION
    name: str = "musplit"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        if self.version > CONFIG_VERSION:
            raise ValueError(
                f"config version {self.version} is newer than this musplit understands "
                f"({CONFIG_VERSION}): upgrade musplit"
            )
        d, m = self.data, self.model
        if d.patch != m.patch:
            raise ValueError(f"data.patch ({d.patch}) differs from model.patch ({m.patch})")
        if d.scales is None:
            object.__setattr__(d, "scales", m.scales)
        if d.scales != m.scales:
            raise ValueError(
                f"data.scales ({d.scales}) differs from model.scales ({m.scales}): the model "
                f"has {m.scales} input branches"
            )
        n = d.n_channels
        if n is not None and not MIN_CHANNELS <= n <= MAX_CHANNELS:
            raise ValueError(channel_count_message(n))
        if n is None and self.train.noise_models:
            n = len(self.train.noise_models)  # one noise model per channel (checked below)
        if n is not None and n != m.out_channels:
            if out_channels_given(m):
                raise ValueError(
                    f"data has {n} target channels, model.out_channels is {m.out_channels}"
                )
            if MIN_CHANNELS <= n <= MAX_CHANNELS:
                object.__setattr__(m, "out_channels", n)  # follows the data; stays unset
        if d.alpha is not None and len(d.alpha) != m.out_channels:
            raise ValueError(f"{len(d.alpha)} alpha weights for {m.out_channels} channels")
        if d.alpha_ranges is not None and len(d.alpha_ranges) != m.out_channels:
            raise ValueError(f"data.alpha_ranges has {len(d.alpha_ranges)} (lo, hi) ranges for "
                             f"{m.out_channels} target channels (model.out_channels): give one "
                             "per channel")
        t = self.train
        if t.loss != "usplit":
            if m.kind not in LADDER_KINDS:
                raise ValueError(f"train.loss '{t.loss}' trains the LadderVAE ("
                                 f"{', '.join(LADDER_KINDS)}), not model.kind '{m.kind}'")
            if len(t.noise_models) != m.out_channels:
                raise ValueError(f"{len(t.noise_models)} noise model(s) (train.noise_models) "
                                 f"for {m.out_channels} target channels (model.out_channels): "
                                 "give one noise-model file per channel, in channel order")
            if t.loss == "denoisplit" and self.predict.consistent:
                raise ValueError("predict.consistent shares the residual by the predicted "
                                 "variances, which train.loss 'denoisplit' does not train: use "
                                 "denoisplit_usplit or predict.consistent: false")
        g = self.predict.grid
        if g is not None and self.predict.padding == "inner":
            if g > d.patch or (d.patch - g) % 2:
                raise ValueError(
                    f"predict.grid {g} must be <= patch {d.patch} with an even difference "
                    "(the inner padding (P-G)/2 must be a whole number of pixels)"
                )
        return self

    # -- YAML ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Config:
        """Read and validate a YAML config; errors are :class:`ConfigError` naming the file."""
        return cls.validated(read_yaml_mapping(path), source=str(path))

    @classmethod
    def validated(cls, data: dict, source: str = "config") -> Config:
        """Build from a dict, turning pydantic errors into one readable :class:`ConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{source}: {format_validation_error(e)}") from None

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write as YAML (temporary name, then rename)."""
        return write_yaml(self.model_dump(mode="json"), path)

    def updated(self, overrides: dict) -> Config:
        """A new validated config with nested ``overrides`` (e.g. {"train": {"max_steps": 5}}).

        A ``model.out_channels`` that followed the data still follows it (new data channels
        in ``overrides`` change it)."""
        merged = deep_merge(self.model_dump(mode="json"), overrides)
        if not out_channels_given(self.model) and "out_channels" not in (
                overrides.get("model") or {}):
            merged["model"].pop("out_channels", None)
        return Config.validated(merged)

    def with_channels(self, n: int) -> Config:
        """This config for data of ``n`` target channels, found when the data was read: the
        model's ``out_channels`` follows unless it was given (then a mismatch is an error)."""
        if n == self.model.out_channels:
            return self
        if not MIN_CHANNELS <= n <= MAX_CHANNELS:
            raise ConfigError(channel_count_message(n))
        if out_channels_given(self.model):
            raise ConfigError(f"the data has {n} target channels, model.out_channels is "
                              f"{self.model.out_channels}: remove model.out_channels from the "
                              "config (it follows the data) or pick channels with --channels")
        return self.updated({"model": {"out_channels": n}})
