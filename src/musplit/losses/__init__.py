"""Training losses: µSplit's split ELBO (:mod:`musplit.losses.elbo`; docs/method.md, "Split
ELBO") and the noise-model losses of denoiSplit and MicroSplit (:mod:`musplit.losses.denoisplit`;
docs/microsplit.md, "Training with noise models").

Every public name of both modules is importable from here, as it was when this package was the
single module ``musplit.losses``.
"""

from __future__ import annotations

from musplit.losses.denoisplit import (
    LOSSES,
    NOISE_MODEL_LOSSES,
    RestrictedKL,
    denoisplit_kl,
    denoisplit_loss,
    noise_model_nll,
    noise_model_records,
    noise_models_from_records,
)
from musplit.losses.elbo import (
    NonFiniteGuard,
    deep_supervision_mse,
    gaussian_nll,
    is_finite,
    kl_annealing_beta,
    split_elbo,
)

__all__ = [
    "LOSSES",
    "NOISE_MODEL_LOSSES",
    "NonFiniteGuard",
    "RestrictedKL",
    "deep_supervision_mse",
    "denoisplit_kl",
    "denoisplit_loss",
    "gaussian_nll",
    "is_finite",
    "kl_annealing_beta",
    "noise_model_nll",
    "noise_model_records",
    "noise_models_from_records",
    "split_elbo",
]
