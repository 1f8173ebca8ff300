"""Pixel noise models: signal-dependent Gaussian mixtures p(observation | signal), one per channel
(docs/noise_models.md, "The model").

- :class:`GaussianMixtureNoiseModel` (one channel) and :class:`MultiChannelNoiseModel` (one per
  channel): elementwise ``log_likelihood(observation, signal)``, usable as a reconstruction
  likelihood in raw intensity units, and ``sample`` for synthetic data;
- :func:`fit_noise_model` from calibration pairs, :func:`fit_noise_model_bootstrap` from the
  noisy data alone (docs/noise_models.md, "Fitting");
- :func:`save_noise_model` / :func:`load_noise_model` (``.npz``; docs/noise_models.md, "Files");
- :func:`check_range` and the reports (docs/noise_models.md, "Checks");
- :func:`plot_noise_model` (loaded on first use: it sits in the figures layer).

The package imports only :mod:`musplit.errors` and :mod:`musplit.files` below it.
"""

from __future__ import annotations

from musplit.noise.checks import FitReport, RangeReport, check_finite, check_range
from musplit.noise.fit import (
    BOOTSTRAP_METHODS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_PAIRS,
    bootstrap_signal,
    fit_noise_model,
    fit_noise_model_bootstrap,
    sample_pairs,
)
from musplit.noise.gmm import ClampCounts, GaussianMixtureNoiseModel, MultiChannelNoiseModel
from musplit.noise.storage import (
    FORMAT,
    FORMAT_VERSION,
    load_noise_model,
    load_noise_models,
    save_noise_model,
)

__all__ = [
    "BOOTSTRAP_METHODS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ITERATIONS",
    "DEFAULT_MAX_PAIRS",
    "FORMAT",
    "FORMAT_VERSION",
    "ClampCounts",
    "FitReport",
    "GaussianMixtureNoiseModel",
    "MultiChannelNoiseModel",
    "RangeReport",
    "bootstrap_signal",
    "check_finite",
    "check_range",
    "fit_noise_model",
    "fit_noise_model_bootstrap",
    "load_noise_model",
    "load_noise_models",
    "plot_noise_model",
    "sample_pairs",
    "save_noise_model",
]


def __getattr__(name: str):
    # The figure lives one layer up (it draws through musplit.figures): loaded on first use.
    if name == "plot_noise_model":
        from musplit.noise.plot import plot_noise_model

        return plot_noise_model
    raise AttributeError(f"module 'musplit.noise' has no attribute {name!r}")
