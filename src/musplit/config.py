"""Run configuration: pydantic models, YAML round trip and presets.

A :class:`Config` holds everything a run needs (data, model, training, prediction) and is
validated as a whole when it is built, so an inconsistent run fails before it starts rather
than at step 3,000 (ecosystem spec CFG-3). Every config carries a ``version``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from musplit.errors import ConfigError
from musplit.models.config import ModelConfig

CONFIG_VERSION = 1

__all__ = [
    "CONFIG_VERSION",
    "Config",
    "CrittersConfig",
    "DataConfig",
    "ModelConfig",
    "PredictConfig",
    "TrainConfig",
    "preset",
    "PRESETS",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CrittersConfig(_Strict):
    """Built-in SinosoidalCritters data (spec 6)."""

    frames: int = Field(1000, ge=3)
    size: int = Field(256, ge=16)
    connector: int = Field(25, ge=0)
    seed: int = 0
    pairing: Literal["paper", "shared-low", "shared-high"] = "paper"


class DataConfig(_Strict):
    """Where the training channels come from and how patches are made (spec 5)."""

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
    alpha_range: tuple[float, float] | None = None
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
        if self.patch % 2:
            raise ValueError(f"data.patch must be even, got {self.patch}")
        return self

    @property
    def n_channels(self) -> int | None:
        if self.channels is not None:
            return len(self.channels)
        if self.channel_paths is not None:  # one entry: a folder, counted when it is read
            return len(self.channel_paths) if len(self.channel_paths) > 1 else None
        if self.synthetic is not None:
            return 2
        return None


class TrainConfig(_Strict):
    """Optimisation settings (spec 4)."""

    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr_patience: int = Field(15, ge=0)
    early_stopping_patience: int = Field(100, ge=1)
    grad_clip_norm: float | None = Field(0.5, gt=0)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
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
        "initialise the model, loaded strictly (spec/pcmc.md 13.6)")


class PredictConfig(_Strict):
    """Tiled prediction settings (spec 8)."""

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


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The mapping a YAML file holds; a missing file, bad YAML or a non-mapping is a
    :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


class Config(_Strict):
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
        if n is not None and n != m.out_channels:
            raise ValueError(
                f"data has {n} target channels, model.out_channels is {m.out_channels}"
            )
        if d.alpha is not None and len(d.alpha) != m.out_channels:
            raise ValueError(f"{len(d.alpha)} alpha weights for {m.out_channels} channels")
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
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        os.replace(tmp, path)
        return path

    def updated(self, overrides: dict) -> Config:
        """A new validated config with nested ``overrides`` (e.g. {"train": {"max_steps": 5}})."""
        merged = _deep_merge(self.model_dump(mode="json"), overrides)
        return Config.validated(merged)


def format_validation_error(e: ValidationError) -> str:
    """One line per problem, joined with '; ' (field path: message)."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _paper(name: str, data: dict, epochs: int, lr_patience: int, stop_patience: int) -> dict:
    """The paper's recipe (spec 4): Regular-LC HVAE, fp16 AMP, inner padding G = 16."""
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


# Presets: the paper's settings (spec 4) and a laptop-sized one. Each is a dict of overrides
# applied to the defaults, so that a preset plus user flags is one merge.
PRESETS: dict[str, dict] = {
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
                  "early_stopping_patience": 20, "precision": "32", "nll_beta": 1.0},
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
                  "lr_patience": 3, "early_stopping_patience": 1000, "precision": "32",
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
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    # Start from the preset's own overrides (not a dump of the defaults), so that values the
    # model derives from its variant (z_dims, scales) follow a user's `lc` override.
    merged = _deep_merge({}, PRESETS[name])
    if overrides:
        merged = _deep_merge(merged, overrides)
    return Config.validated(merged, source=f"preset {name}")
