"""The optional model contract of prediction, and the old import paths of musplit.predict."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import musplit.predict as mp
from musplit.config import Config
from musplit.data.normalize import NormStats
from musplit.models import build
from musplit.predict.contract import (
    _can_sample_many,
    _has_encoder,
    _is_stochastic,
    _predicts_variance,
    _sample_mode,
)
from musplit.splitter import Splitter

P = 16


class _Plain(nn.Module):
    """Means = the input's scale 0, log-variances 0: declares nothing optional."""

    def forward(self, x):
        return torch.cat([x[:, :1], x[:, :1], torch.zeros_like(x[:, :2])], 1)


def _config() -> Config:
    return Config.validated({"model": dict(kind="hvae", lc="lean", filters=8, z_dims=[4, 4],
                                           scales=2, patch=P, dropout=0.0),
                             "data": {"patch": P}})


def _stats() -> NormStats:
    return NormStats(clip_max=1e6, input_mean=0.0, input_std=1.0, target_mean=[0.0, 0.0],
                     target_std=[1.0, 1.0], alpha=[0.5, 0.5])


def test_a_plain_module_is_stochastic_with_variance_and_nothing_else():
    m = _Plain()
    assert not _has_encoder(m) and not _can_sample_many(m)
    assert _is_stochastic(m, "sample") and _is_stochastic(m, "mean")
    assert _predicts_variance(m) and _sample_mode(m, "sample") == "sample"


def test_the_ladder_vae_offers_its_encoder_and_is_deterministic_at_the_mean():
    m = build(_config().model)
    assert _has_encoder(m)
    assert _is_stochastic(m, "sample") and not _is_stochastic(m, "mean")


def test_declared_attributes_are_honoured():
    m = _Plain()
    m.stochastic, m.predicts_variance, m.sample_mode = False, False, "mean"
    m.sample_many = lambda x, k, noise=None, batch=None: None
    assert not _is_stochastic(m, "sample") and not _predicts_variance(m)
    assert _can_sample_many(m) and _sample_mode(m, None) == "mean"


def test_a_deterministic_model_gives_no_aleatoric_std_when_it_predicts_none():
    m = _Plain()
    m.stochastic, m.predicts_variance = False, False
    img = np.random.default_rng(0).uniform(0, 10, (1, 20, 24)).astype(np.float32)
    out = mp.predict_image(m, _config(), _stats(), img, samples=3, brightness="off")
    assert out.aleatoric_std is None
    np.testing.assert_array_equal(out.std, 0)  # one pass stands for every sample
    np.testing.assert_allclose(out.mean[..., 0], img, rtol=1e-6)


def test_the_names_of_the_old_module_still_import():
    for name in ("Prediction", "Tiling", "default_grid", "make_tiling", "predict_image",
                 "predict_to_zarr", "fast_precision", "brightness_factor", "input_clip",
                 "refuse_existing", "_sample_pixels", "_file_kind", "_sibling", "_Engine",
                 "_Canvas", "_block_halo", "_settings", "BLENDS", "PADDINGS",
                 "BRIGHTNESS_MODES", "BRIGHTNESS_TOLERANCE", "AMP_DTYPES"):
        assert hasattr(mp, name), name


def test_splitter_calls_prediction_through_the_package(monkeypatch):
    calls = []
    monkeypatch.setattr(mp, "predict_image", lambda *a, **k: calls.append(k) or "patched")
    s = Splitter(_Plain(), _config(), _stats())
    assert s.predict(np.zeros((20, 24), np.float32), samples=2) == "patched"
    assert calls[0]["samples"] == 2 and calls[0]["padding"] == "inner"
