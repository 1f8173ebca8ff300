"""The denoiSplit / MicroSplit losses (issue 18, item 2): the noise-model reconstruction term
against a slow float64 reference, gradients (network yes, noise models no), denoiSplit's KL
and its restricted form, the combined weights, float32 under mixed precision, the checkpoint
records, and the config refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from musplit.config import Config, ModelConfig, preset
from musplit.errors import CheckpointError, ConfigError
from musplit.losses import (
    RestrictedKL,
    denoisplit_kl,
    denoisplit_loss,
    noise_model_nll,
    noise_model_records,
    noise_models_from_records,
    split_elbo,
)
from musplit.models import build
from musplit.noise import GaussianMixtureNoiseModel, MultiChannelNoiseModel

MEAN, STD = [10.0, 30.0], [4.0, 9.0]


def gmm(seed, k=3, d=3, lo=0.0, hi=60.0, floor=0.5):
    g = np.random.default_rng(seed)
    w = g.normal(size=(3 * k, d)).astype(np.float32)
    w[k:2 * k, 1] = math.log(hi - lo)
    return GaussianMixtureNoiseModel(w, lo, hi, floor)


def two_models():
    return MultiChannelNoiseModel([gmm(1), gmm(2, lo=5.0, hi=90.0)])


def slow_log_p(model, x, s):
    """log p(x | s) of one pixel, float64, loops over components (docs formulas)."""
    w = model.weight.detach().double().numpy()
    k, d = model.n_gaussian, model.n_coeff
    sn = (min(max(s, model.min_signal), model.max_signal) - model.min_signal) / (
        model.max_signal - model.min_signal)
    poly = [sum(w[r, j] * sn ** j for j in range(d)) for r in range(k)]
    var = [max(sum(math.exp(w[k + r, j]) * sn ** j for j in range(d)), model.min_variance)
           for r in range(k)]
    logit = [sum(w[2 * k + r, j] * sn ** j for j in range(d)) for r in range(k)]
    z = max(logit)
    pi = [math.exp(v - z) for v in logit]
    pi = [p / sum(pi) for p in pi]
    centre = sum(p * m for p, m in zip(pi, poly, strict=True))
    terms = [math.log(pi[r]) - 0.5 * (math.log(2 * math.pi * var[r])
                                      + (x - (poly[r] - centre + s)) ** 2 / var[r])
             for r in range(k)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(2, 4, 3, 4, generator=g) * 1.5  # some signals leave the fitted range
    target = torch.randn(2, 2, 3, 4, generator=g)
    return params, target


def test_the_noise_model_term_matches_a_slow_float64_reference(batch):
    params, target = batch
    nm = two_models()
    nll, outside = noise_model_nll(params[:, :2], target, nm, MEAN, STD)
    assert nll.shape == target.shape and nll.dtype == torch.float32
    ref = torch.zeros_like(nll, dtype=torch.float64)
    n_out = 0
    for b in range(2):
        for c in range(2):
            for i in range(3):
                for j in range(4):
                    s = float(params[b, c, i, j]) * STD[c] + MEAN[c]
                    x = float(target[b, c, i, j]) * STD[c] + MEAN[c]
                    ref[b, c, i, j] = -slow_log_p(nm.models[c], x, s)
                    m = nm.models[c]
                    n_out += not m.min_signal <= s <= m.max_signal
    torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-4)
    assert 0 < n_out < nll.numel()  # both cases were exercised
    assert float(outside) == pytest.approx(n_out / nll.numel())


def test_only_the_mean_half_enters_and_gradients_reach_the_network_not_the_noise_models(batch):
    params, target = batch
    nm = two_models()
    p = params.clone().requires_grad_(True)
    loss, _ = denoisplit_loss(p, target, nm, MEAN, STD, loss="denoisplit")
    loss.backward()
    assert p.grad[:, :2].abs().sum() > 0 and torch.all(p.grad[:, 2:] == 0)
    other = params.clone()
    other[:, 2:] = 7.0  # another log-variance half
    assert torch.equal(denoisplit_loss(other, target, nm, MEAN, STD, loss="denoisplit")[0],
                       loss.detach())
    for m in nm.models:
        assert not m.weight.requires_grad and m.weight.grad is None

    # through a real network: its parameters get gradients, the noise models none
    cfg = ModelConfig(kind="hvae", lc="lean", filters=8, z_dims=[4, 4], patch=16, scales=2,
                      dropout=0.0)
    model = build(cfg).train()
    out = model(torch.randn(2, 2, 16, 16))
    y = torch.randn(2, 2, 16, 16)
    loss, logs = denoisplit_loss(out.params, y, nm, MEAN, STD, out.kl, out.kl_elements)
    loss.backward()
    for q in (model.head.conv.weight, model.encoder.stem.conv.weight,
              model.decoder.levels[0].stochastic.post_conv.weight):
        assert q.grad is not None and q.grad.abs().sum() > 0
    assert all(m.weight.grad is None for m in nm.models)
    assert {"nm_nll", "kl_ds", "distortion", "rate", "usplit_loss", "denoisplit_loss"} <= set(logs)


def test_the_denoisplit_kl_by_hand():
    kl = torch.tensor([[0.5, 300.0], [2.0, 100.0]])
    # level 0: max(0.5, 1), max(2, 1) -> mean 1.5; level 1: mean 200; over 4x4 pixels
    assert float(denoisplit_kl(kl, 16)) == pytest.approx((1.5 + 200.0) / 16)
    assert float(denoisplit_kl(kl, 16, free_nats=0.0)) == pytest.approx((1.25 + 200.0) / 16)


def test_the_combined_loss_weighs_the_two_terms_as_published(batch):
    params, target = batch
    nm = two_models()
    kl = torch.tensor([[40.0, 3.0], [60.0, 0.2]])
    elements = (24, 6)
    beta = 0.5
    nll, _ = noise_model_nll(params[:, :2], target, nm, MEAN, STD)
    ds = nll.mean() + beta * denoisplit_kl(kl, 12)
    us, _ = split_elbo(params, target, kl, elements, beta=beta)
    loss, logs = denoisplit_loss(params, target, nm, MEAN, STD, kl, elements, beta=beta)
    assert float(loss) == pytest.approx(float(0.1 * us + 0.9 * ds), rel=1e-6)
    assert float(logs["usplit_loss"]) == pytest.approx(float(us))
    assert float(logs["denoisplit_loss"]) == pytest.approx(float(ds))
    pure, plogs = denoisplit_loss(params, target, nm, MEAN, STD, kl, elements, beta=beta,
                                  loss="denoisplit")
    assert float(pure) == pytest.approx(float(ds), rel=1e-6) and "distortion" not in plogs
    other, _ = denoisplit_loss(params, target, nm, MEAN, STD, kl, elements, beta=beta,
                               usplit_weight=0.01, denoisplit_weight=0.99)
    assert float(other) == pytest.approx(float(0.01 * us + 0.99 * ds), rel=1e-6)
    t = Config().train
    assert (t.usplit_weight, t.denoisplit_weight, t.denoisplit_free_nats) == (0.1, 0.9, 1.0)


def test_the_noise_model_term_is_float32_under_mixed_precision(batch):
    params, target = batch
    nm = two_models()
    half = params.bfloat16()
    plain, _ = denoisplit_loss(half, target, nm, MEAN, STD, loss="denoisplit")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = denoisplit_loss(half, target, nm, MEAN, STD, loss="denoisplit")
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


def _elementwise_kl(q, p, eps):
    """Elementwise one-sample KL, float64 (stable variance of docs/method.md)."""
    q, p, eps = q.double(), p.double(), eps.double()
    z_dim = q.shape[1] // 2

    def var(ell):
        return ell.clamp(max=0).exp() + ell.clamp(0, 20) + 1e-6

    mu_q, v_q = q[:, :z_dim], var(q[:, z_dim:])
    mu_p, v_p = p[:, :z_dim], var(p[:, z_dim:])
    z = mu_q + v_q.sqrt() * eps
    return 0.5 * (v_p.log() - v_q.log() + (z - mu_p) ** 2 / v_p - eps ** 2)


def test_the_restricted_kl_sums_the_centre_window_and_is_the_kl_without_larger_maps():
    lean = build(ModelConfig(kind="hvae", lc="lean", filters=8, z_dims=[4, 4], patch=16,
                             scales=2, dropout=0.0)).train()
    assert not RestrictedKL.needed(lean)
    rec = RestrictedKL(lean)
    torch.manual_seed(0)
    with rec.recording((16, 16)):
        out = lean(torch.randn(2, 2, 16, 16))
    assert torch.equal(rec.restricted(out.kl), out.kl)  # every map is its window

    cfg = ModelConfig(kind="hvae", lc="regular", filters=8, z_dims=[4, 4], patch=16, scales=2,
                      dropout=0.0)
    model = build(cfg).train()
    assert RestrictedKL.needed(model)
    seen = {}
    for i, level in enumerate(model.decoder.levels):
        def grab(mod, args, kw, output, i=i):
            seen[i] = (mod.post_conv(args[0]).detach(), args[1].detach(), args[2].detach())
        level.stochastic.register_forward_hook(grab, with_kwargs=True)
    x = torch.randn(2, 2, 16, 16)
    torch.manual_seed(1)
    plain = model(x)
    rec = RestrictedKL(model)
    torch.manual_seed(1)
    with rec.recording((16, 16)):
        out = model(x)
    assert torch.equal(out.params, plain.params) and torch.equal(out.kl, plain.kl)
    restricted = rec.restricted(out.kl)
    for i, (q, p, eps) in seen.items():
        h, w = q.shape[-2:]
        wh = max(1, 16 >> (i + 1))
        assert h > wh  # Regular-LC keeps larger maps
        top, left = (h - wh) // 2, (w - wh) // 2
        ref = _elementwise_kl(q, p.expand(q.shape[0], -1, -1, -1), eps)
        window = ref[..., top:top + wh, left:left + wh].sum(dim=(1, 2, 3))
        torch.testing.assert_close(restricted[:, i].double(), window, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(out.kl[:, i].double(), ref.sum(dim=(1, 2, 3)), rtol=1e-4,
                                   atol=1e-3)
    loss, _ = denoisplit_loss(out.params, torch.randn(2, 2, 16, 16), two_models(), MEAN, STD,
                              out.kl, out.kl_elements, kl_restricted=restricted)
    loss.backward()  # the recomputed window carries gradients to the posterior convolution
    assert model.decoder.levels[0].stochastic.post_conv.weight.grad.abs().sum() > 0


def test_records_rebuild_the_same_noise_models_and_a_damaged_one_is_one_line(batch):
    params, target = batch
    nm = two_models()
    recs = noise_model_records(nm)
    again = noise_models_from_records(recs, 2)
    for a, b in zip(nm.models, again.models, strict=True):
        assert torch.equal(a.weight, b.weight) and a.min_variance == b.min_variance
    assert torch.equal(noise_model_nll(params[:, :2], target, again, MEAN, STD)[0],
                       noise_model_nll(params[:, :2], target, nm, MEAN, STD)[0])
    bad = [dict(recs[0]), {k: v for k, v in recs[1].items() if k != "max_signal"}]
    with pytest.raises(CheckpointError, match="noise model of channel 1 is damaged"):
        noise_models_from_records(bad)


def test_the_loss_prefers_the_clean_signal_to_another_noisy_acquisition():
    # The network cannot know the target's own noise: against a noisy target the clean signal
    # scores better than an independent noisy acquisition of it. (The target itself as the
    # prediction would score better still: a density is highest at its mean.)
    nm = two_models()
    g = torch.Generator().manual_seed(3)
    signal = torch.rand(4, 2, 16, 16, generator=g) * 40 + 10
    target, other = nm.sample(signal, generator=g), nm.sample(signal, generator=g)

    def norm(t):
        return (t - torch.tensor(MEAN).view(1, 2, 1, 1)) / torch.tensor(STD).view(1, 2, 1, 1)

    at_clean = noise_model_nll(norm(signal), norm(target), nm, MEAN, STD)[0].mean()
    at_other = noise_model_nll(norm(other), norm(target), nm, MEAN, STD)[0].mean()
    assert at_clean < at_other


def _tiny(**train):
    return dict(data={"synthetic": {"frames": 20, "size": 64}}, train=train)


@pytest.mark.parametrize("train,match", [
    ({"loss": "denoisplit"}, "needs train.noise_models"),
    ({"noise_models": ["a.npz", "b.npz"]}, "train.loss is 'usplit', which does not use"),
    ({"loss": "denoisplit_usplit", "noise_models": ["a.npz"]},
     r"1 noise model\(s\) \(train.noise_models\) for 2 target channels"),
    ({"usplit_weight": 0.5}, "train.usplit_weight set but train.loss 'usplit'"),
    ({"loss": "denoisplit", "noise_models": ["a", "b"], "denoisplit_weight": 1.0},
     "does not use it"),
    ({"loss": "denoisplit_usplit", "noise_models": ["a", "b"], "usplit_weight": 0.0,
      "denoisplit_weight": 0.0}, "must be > 0"),
])
def test_inconsistent_loss_settings_are_refused_at_config_time(train, match):
    with pytest.raises(ConfigError, match=match):
        preset("cpu-small", **_tiny(**train))


def test_other_refusals_and_old_configs_without_the_new_fields():
    with pytest.raises(ConfigError, match="trains the LadderVAE"):
        Config.validated({"model": {"kind": "unet"},
                          **_tiny(loss="denoisplit", noise_models=["a", "b"])})
    with pytest.raises(ConfigError, match="predict.consistent"):
        preset("cpu-real", **_tiny(loss="denoisplit", noise_models=["a", "b"]))
    assert preset("cpu-real", **_tiny(loss="denoisplit_usplit", noise_models=["a", "b"]))
    old = preset("cpu-small", **_tiny()).model_dump(mode="json")
    for k in ("loss", "noise_models", "usplit_weight", "denoisplit_weight",
              "denoisplit_free_nats"):
        del old["train"][k]
    cfg = Config.validated(old)
    assert cfg.train.loss == "usplit" and cfg.train.noise_models is None
