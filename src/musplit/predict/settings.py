"""The arguments of a prediction: their checks, what they resolve to, and the settings a
prediction records (``Prediction.meta``, ``attrs["musplit"]`` of a Zarr output).
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from musplit import __version__
from musplit.config import Config
from musplit.data.io import _check_pixel_size
from musplit.data.mixing import mixing_summary
from musplit.data.normalize import NormStats
from musplit.data.tiling import Tiling, _is_int, make_tiling
from musplit.errors import ConfigError, InputError
from musplit.models.protocol import predicts_variance, sample_mode_of
from musplit.predict.brightness import input_clip


def _check_common(config, stats, samples, batch_size, seed, keep_samples, input_scale,
                  sample_batch):
    if not isinstance(config, Config):
        raise ConfigError(f"config must be a musplit Config, got {type(config).__name__}")
    if not isinstance(stats, NormStats):
        raise ConfigError("prediction needs the training normalisation statistics (NormStats); "
                          "the checkpoint carries none")
    if stats.n_channels != config.model.out_channels:
        raise ConfigError(f"the statistics describe {stats.n_channels} channels, the model "
                          f"predicts {config.model.out_channels}")
    for name, v, lo in (("samples", samples, 1), ("batch_size", batch_size, 1),
                        ("keep_samples", keep_samples, 0)):
        if not _is_int(v) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    if sample_batch is not None and (not _is_int(sample_batch) or sample_batch < 1):
        raise InputError(f"sample_batch must be a positive integer or None, got {sample_batch!r}")
    if keep_samples > samples:
        raise InputError(f"keep_samples ({keep_samples}) cannot exceed samples ({samples})")
    if not _is_int(seed):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if not (isinstance(input_scale, (int, float, np.floating)) and math.isfinite(input_scale)
            and input_scale > 0):
        raise InputError(f"input_scale must be a positive number, got {input_scale!r}")


def _channel_names(config: Config, stats: NormStats, names) -> list[str]:
    c = stats.n_channels
    if names is None:
        names = config.data.channel_names or [f"channel_{k}" for k in range(c)]
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    if len(names) != c:
        raise InputError(f"{len(names)} channel names given for {c} channels: {names}")
    return names


def _pixel_size(pixel_size) -> tuple[float, float] | None:
    """A validated ``(y, x)`` pixel size in micrometres, or None."""
    return _check_pixel_size(pixel_size)


def _resolve(model: nn.Module, config: Config, stats: NormStats, *, padding, grid, blend,
             blend_width, paper_geometry, aleatoric, channel_names
             ) -> tuple[Tiling, list[str], bool]:
    """The tiling, the channel names, and whether the aleatoric std is computed."""
    aleatoric = aleatoric and predicts_variance(model)
    tiling = make_tiling(config, padding, grid, blend=blend, blend_width=blend_width,
                         paper_geometry=paper_geometry)
    return tiling, _channel_names(config, stats, channel_names), aleatoric


def _settings(config, stats, tiling, *, samples, seed, sample_mode, normalized, input_scale,
              model, amp: str | None = None) -> dict:
    mode = sample_mode_of(model, sample_mode, None)
    return {
        **tiling.as_meta(),
        "precision": "fp32" if amp in (None, "fp32") else amp,
        "samples": int(samples),
        "seed": int(seed),
        "sample_mode": mode,
        "std_ddof": 0,
        "units": "normalised" if normalized else "intensity",
        "patch": int(config.data.patch),
        "scales": int(config.data.scales),
        "pad": config.data.pad,
        "lc_alignment": config.data.lc_alignment,
        "input_scale": float(input_scale),
        "consistent": bool(config.predict.consistent),
        "clip": input_clip(stats),
        "stats": stats.to_dict(),
        "mixing": mixing_summary(config.data, stats),
        "model": {"kind": config.model.kind, "lc": config.model.lc},
        "musplit_version": __version__,
    }
