"""Pixel noise models (musplit.noise): the mixture, its fit, its files, its checks, its figure."""

import logging
import math

import numpy as np
import pytest
import torch

from musplit.errors import InputError
from musplit.noise import (
    GaussianMixtureNoiseModel,
    MultiChannelNoiseModel,
    bootstrap_signal,
    check_range,
    fit_noise_model,
    fit_noise_model_bootstrap,
    load_noise_model,
    load_noise_models,
    sample_pairs,
    save_noise_model,
)

GAIN, READ = 2.0, 5.0  # synthetic camera: x = GAIN * Poisson(s / GAIN) + N(0, READ²)


def _random_model(k=3, d=3, seed=0, dtype=torch.float64, **kw):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3 * k, d, generator=g, dtype=dtype)
    w[k:2 * k] += 4.0  # variances of order e^4 ~ 55 in [100, 1100]
    return GaussianMixtureNoiseModel(w, 100.0, 1100.0, 2.0, **kw)


def _camera(clean, repeats, seed=0):
    rng = np.random.default_rng(seed)
    s = np.repeat(clean, repeats, axis=0)
    return (GAIN * rng.poisson(s / GAIN) + rng.normal(0, READ, s.shape)).astype(np.float32)


def _quadrature(model, s, n=40001):
    mean, var, _ = model.mixture(torch.tensor([s], dtype=torch.float64))
    half = float((mean - s).abs().max() + 15 * var.sqrt().max())
    x = torch.linspace(s - half, s + half, n, dtype=torch.float64)
    return x, model.density(x, torch.full_like(x, s))


@pytest.mark.parametrize("s", [100.0, 480.0, 1100.0, 1500.0])
def test_the_density_integrates_to_one_and_its_mean_is_the_signal(s):
    model = _random_model()
    x, p = _quadrature(model, s)
    assert float(torch.trapezoid(p, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(torch.trapezoid(p * x, x)) == pytest.approx(s, abs=1e-5 * s)
    mean, _ = model.moments(torch.tensor([s], dtype=torch.float64))
    assert float(mean) == pytest.approx(s, abs=1e-9 * s)  # E[x|s] = s, also outside the range


def test_weights_sum_to_one_and_logsumexp_matches_the_direct_form():
    model = _random_model()
    s = torch.linspace(50, 1200, 37, dtype=torch.float64)
    mean, var, log_w = model.mixture(s)
    assert torch.allclose(log_w.exp().sum(-1), torch.ones_like(s), atol=1e-12)
    x = s + torch.linspace(-300, 300, 37, dtype=torch.float64)
    direct = (log_w.exp() * torch.exp(-(x[:, None] - mean) ** 2 / (2 * var))
              / torch.sqrt(2 * math.pi * var)).sum(-1)
    ours = model.log_likelihood(x, s)
    keep = direct > 1e-8
    assert keep.sum() > 10
    assert torch.allclose(ours[keep], direct[keep].log(), atol=1e-5, rtol=0)


def test_a_far_outlier_keeps_a_finite_likelihood_with_a_gradient():
    model = _random_model()
    s = torch.tensor([500.0], dtype=torch.float64, requires_grad=True)
    ll = model.log_likelihood(torch.tensor([5000.0], dtype=torch.float64), s)
    assert torch.isfinite(ll).all() and float(ll.detach()) < -100  # exp-then-log would floor at -23
    ll.sum().backward()
    assert float(s.grad) > 0  # moving the signal towards the outlier helps


def test_half_precision_inputs_are_evaluated_in_float32():
    model = _random_model(dtype=torch.float32)
    s = torch.linspace(120, 1000, 50)
    x = s + 3.0
    ll16 = model.log_likelihood(x.half(), s.half())
    assert ll16.dtype == torch.float32
    assert torch.allclose(ll16, model.log_likelihood(x.half().float(), s.half().float()))
    assert model.log_likelihood(x.double(), s.double()).dtype == torch.float64


def test_signals_outside_the_range_are_clamped_and_counted():
    model = _random_model()
    above = model.log_likelihood(torch.tensor([1300.0 + 7]), torch.tensor([1300.0]))
    at_top = model.log_likelihood(torch.tensor([1100.0 + 7]), torch.tensor([1100.0]))
    assert torch.allclose(above, at_top)  # same shape as at s_max, centred on s
    model.reset_clamp_counts()
    s = torch.tensor([[50.0, 100.0, 500.0, 1100.0], [1200.0, 1300.0, 700.0, 20.0]])
    model.log_likelihood(s, s)
    c = model.clamp_counts()
    assert (c.evaluated, c.below, c.above, c.fraction) == (8, 2, 2, 0.5)
    model.reset_clamp_counts()
    assert model.clamp_counts().evaluated == 0


def test_samples_follow_the_model():
    model = _random_model()
    g = torch.Generator().manual_seed(1)
    s = torch.full((200_000,), 600.0, dtype=torch.float64)
    x = model.sample(s, generator=g)
    _, var = model.moments(s[:1])
    assert float(x.mean()) == pytest.approx(600.0, abs=5 * math.sqrt(float(var) / s.numel()))
    assert float(x.var()) == pytest.approx(float(var), rel=0.02)
    grid, p = _quadrature(model, 600.0)
    cdf = torch.cumulative_trapezoid(p, grid)
    for q in (0.1, 0.5, 0.9):
        t = grid[1:][torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype))]
        assert float((x <= t).double().mean()) == pytest.approx(q, abs=0.005)


def test_a_fit_recovers_the_variance_of_shot_and_read_noise():
    rng = np.random.default_rng(0)
    clean = rng.uniform(20, 1000, size=(2, 48, 48)).astype(np.float32)
    noisy = _camera(clean, 6)
    model = fit_noise_model(noisy, clean, n_gaussian=2, n_coeff=2, iterations=150,
                            batch_size=5000, seed=0)
    s = torch.linspace(70, 950, 12, dtype=torch.float64)
    mean, var = model.moments(s)
    true = GAIN * s + READ**2
    assert torch.allclose(var / true, torch.ones_like(s), atol=0.05), (var / true).tolist()
    assert torch.allclose(mean, s)
    assert not model.weight.requires_grad
    rep = model.fit_report
    assert rep.n_pairs == rep.n_used == noisy.size and rep.n_clipped == 0
    assert rep.empty_bins == () and rep.iterations == 150
    assert rep.signal_range == (float(clean.min()), float(clean.max()))
    assert rep.nll == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 1000), abs=0.5)
    assert model.clamp_counts().evaluated == 0  # the fit's own evaluations are not counted


def test_the_bootstrap_mean_of_a_static_series_gives_a_usable_model():
    yy, xx = np.mgrid[:40, :40]
    clean = (100 + 900 * (xx + yy) / 78.0)[None].astype(np.float32)
    noisy = _camera(clean, 40, seed=2)
    est = bootstrap_signal(noisy, "mean")
    assert est.shape == (1, 40, 40)
    np.testing.assert_allclose(est[0], noisy.mean(0), rtol=1e-6)
    model = fit_noise_model_bootstrap(noisy, method="mean", n_gaussian=1, iterations=150,
                                      batch_size=5000)
    s = torch.linspace(200, 900, 8, dtype=torch.float64)
    _, var = model.moments(s)
    assert torch.allclose(var / (GAIN * s + READ**2), torch.ones_like(s), atol=0.1)
    smooth = bootstrap_signal(noisy[:2, :, :, None], "gaussian", 2.0)
    assert smooth.shape == (2, 40, 40) and smooth.std() < noisy[:2].std()
    with pytest.raises(InputError, match="at least 2 frames"):
        bootstrap_signal(noisy[:1], "mean")
    with pytest.raises(InputError, match="one of gaussian, mean"):
        bootstrap_signal(noisy, "median")


def test_noisy_frames_pair_with_clean_frame_i_over_the_ratio():
    n_pix = 12
    clean = np.arange(2)[:, None] * 1000.0 + np.arange(n_pix)  # value = 1000*frame + pixel
    noisy = np.arange(6)[:, None] * 1000.0 + np.arange(n_pix)
    clean, noisy = clean.reshape(2, 3, 4), noisy.reshape(6, 3, 4)
    obs, sig, n = sample_pairs(noisy, clean)
    assert n == 6 * n_pix
    frame, pix = np.divmod(obs, 1000)
    np.testing.assert_array_equal(sig, (frame // 3) * 1000 + pix)
    obs, sig, n = sample_pairs(noisy, clean, max_pairs=20, seed=3)
    assert n == 6 * n_pix and 10 <= obs.size <= 20
    frame, pix = np.divmod(obs, 1000)
    np.testing.assert_array_equal(sig, (frame // 3) * 1000 + pix)
    with pytest.raises(InputError, match="multiple of the clean count"):
        sample_pairs(noisy[:5], clean)
    with pytest.raises(InputError, match="differ in frame shape"):
        sample_pairs(noisy, clean[:, :2])


@pytest.mark.parametrize("which", ["noisy", "clean"])
def test_nan_in_the_inputs_is_refused(which):
    data = {"noisy": np.ones((2, 8, 8), np.float32), "clean": np.ones((1, 8, 8), np.float32)}
    data[which][0, 3, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN or Inf"):
        fit_noise_model(data["noisy"], data["clean"], iterations=1)


def test_a_diverging_fit_stops_with_an_error():
    rng = np.random.default_rng(0)
    clean = rng.uniform(10, 100, (1, 16, 16)).astype(np.float32)
    noisy = np.repeat(clean, 2, 0)
    noisy[0, 0, 0] = 1e30  # finite, but its squared residual overflows float32
    with pytest.raises(InputError, match="diverged at iteration 0"):
        fit_noise_model(noisy, clean, iterations=5)


def test_clipping_and_empty_signal_bins_are_reported(caplog):
    rng = np.random.default_rng(0)
    clean = np.concatenate([rng.uniform(0, 100, 500), rng.uniform(900, 1000, 500)])
    clean = clean.reshape(1, 40, 25).astype(np.float32)
    noisy = _camera(clean, 2)
    with caplog.at_level(logging.WARNING, logger="musplit.noise.fit"):
        model = fit_noise_model(noisy, clean, n_gaussian=1, iterations=5, n_bins=10,
                                upper_clip=90)
    rep = model.fit_report
    assert rep.n_clipped == pytest.approx(0.1 * noisy.size, abs=4)
    assert rep.n_used + rep.n_clipped == rep.n_pairs
    assert len(rep.empty_bins) >= 6 and "signal bins" in caplog.text
    assert "empty" in rep.summary()
    with pytest.raises(InputError, match="constant"):
        fit_noise_model(noisy, np.full_like(clean, 5.0), iterations=1)


def test_save_and_load_are_exact(tmp_path):
    model = fit_noise_model(_camera(np.full((1, 16, 16), 300, np.float32), 2) / 1.0,
                            np.linspace(50, 900, 256, dtype=np.float32).reshape(1, 16, 16),
                            n_gaussian=2, n_coeff=3, iterations=3, channel_name="actin")
    path = save_noise_model(model, tmp_path / "nm_ch0.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nm_ch0.npz"]  # no temporary left
    back = load_noise_model(path)
    assert back.weight.dtype == model.weight.dtype == torch.float32
    assert torch.equal(back.weight, model.weight)
    for attr in ("min_signal", "max_signal", "min_variance", "channel_name",
                 "observation_range", "n_gaussian", "n_coeff"):
        assert getattr(back, attr) == getattr(model, attr), attr
    assert back.file_format_version == 1 and not back.weight.requires_grad
    s = torch.linspace(0, 1000, 101)
    assert torch.equal(back.log_likelihood(s + 10, s), model.log_likelihood(s + 10, s))
    with np.load(path, allow_pickle=False) as z:  # reference readers' keys are there
        assert {"trained_weight", "min_signal", "max_signal", "min_sigma"} <= set(z.files)
    with pytest.raises(InputError, match="already exists"):
        save_noise_model(model, path)
    save_noise_model(back, path, overwrite=True)
    with pytest.raises(InputError, match=".npz"):
        save_noise_model(model, tmp_path / "nm.npy")


@pytest.mark.parametrize("wkey", ["trained_weight", "weight"])
def test_reference_files_load_and_min_sigma_is_a_variance_floor(tmp_path, wkey):
    k, d = 2, 2
    w = np.full((3 * k, d), -20.0, dtype=np.float32)  # every variance far below the floor
    w[:k] = 0.0
    w[2 * k:] = 0.0
    path = tmp_path / "noise_model_Ch0.npz"
    np.savez(path, **{wkey: w, "min_signal": np.array([10.0]), "max_signal": np.array([500.0]),
                      "min_sigma": np.array([50.0])})
    m = load_noise_model(path)
    assert (m.n_gaussian, m.n_coeff, m.min_signal, m.max_signal, m.min_variance) == (
        2, 2, 10.0, 500.0, 50.0)
    assert m.file_format_version == 0 and m.channel_name is None
    _, var = m.moments(torch.tensor([100.0, 400.0]))
    assert torch.allclose(var, torch.full((2,), 50.0))  # a variance of 50, not a std


def _bad_file(tmp_path, case):
    path = tmp_path / f"{case}.npz"
    good = {"trained_weight": np.zeros((6, 2), np.float32), "min_signal": np.array(0.0),
            "max_signal": np.array(10.0), "min_sigma": np.array(1.0)}
    if case == "nan":
        good["trained_weight"][1, 1] = np.nan
    elif case == "shape":
        good["trained_weight"] = np.zeros((7, 2), np.float32)
    elif case == "missing":
        del good["min_sigma"]
    elif case == "no_weight":
        good["weights"] = good.pop("trained_weight")
    elif case == "range":
        good["max_signal"] = np.array(0.0)
    elif case == "k":
        good["n_gaussian"] = np.array(3)
    elif case == "pickle":
        good["channel_name"] = np.array([{"a": 1}], dtype=object)
    elif case == "newer":
        good["format_version"] = np.array(99)
    if case == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, **good)
    return path


@pytest.mark.parametrize("case, needle", [
    ("nan", "NaN"), ("shape", "(3K, D)"), ("missing", "missing min_sigma"),
    ("no_weight", "missing trained_weight (or weight)"), ("range", "must exceed"),
    ("k", "'n_gaussian' is 3"), ("pickle", "not a readable"), ("newer", "newer"),
    ("garbage", "not a readable"),
])
def test_bad_files_are_refused_in_one_line_naming_the_file(tmp_path, case, needle):
    path = _bad_file(tmp_path, case)
    with pytest.raises(InputError) as e:
        load_noise_model(path)
    msg = str(e.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_one_model_per_channel(tmp_path):
    models = [_random_model(seed=i, channel_name=f"c{i}") for i in range(2)]
    multi = MultiChannelNoiseModel(models, n_channels=2)
    s = 100 + 900 * torch.rand(3, 2, 4, 5, generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
    x = s + 10
    ll = multi.log_likelihood(x, s)
    assert ll.shape == s.shape
    for c in range(2):
        assert torch.equal(ll[:, c], models[c].log_likelihood(x[:, c], s[:, c]))
    assert multi.sample(s).shape == s.shape
    with pytest.raises(InputError, match="one noise model per channel"):
        multi.log_likelihood(x[:, :1], s[:, :1])
    with pytest.raises(InputError, match="2 noise model.s. for 3 channel"):
        MultiChannelNoiseModel(models, n_channels=3)
    paths = [save_noise_model(m, tmp_path / f"nm_ch{i}.npz") for i, m in enumerate(models)]
    loaded = load_noise_models(paths, n_channels=2)
    assert torch.equal(loaded.log_likelihood(x, s), ll)
    with pytest.raises(InputError, match="one file per channel"):
        load_noise_models(paths, n_channels=3)


def test_check_range_warns_with_numbers(caplog):
    model = GaussianMixtureNoiseModel(torch.zeros(3, 2), 100.0, 1000.0, 1.0, channel_name="c0",
                                      observation_range=(80.0, 1050.0))
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="musplit.noise.checks"):
        ok = check_range(model, rng.uniform(90, 1040, 1000))
        assert ok.ok and caplog.text == ""
        scaled = check_range(model, rng.uniform(90, 1040, 1000) / 1000)  # normalised data
        assert not scaled.ok and scaled.below == 1.0
        assert "other intensity units" in caplog.text and "100.00% of the pixels" in caplog.text
        caplog.clear()
        high = check_range(model, np.r_[rng.uniform(200, 900, 900), np.full(100, 2000.0)],
                           kind="signal")
    assert not high.ok and high.above == pytest.approx(0.1)
    assert high.fitted_range == (100.0, 1000.0) and "10.00% above" in caplog.text
    with pytest.raises(InputError, match="NaN"):
        check_range(model, np.array([1.0, np.nan]))


def test_the_figure_is_written_atomically(tmp_path):
    from musplit.noise import plot_noise_model

    rng = np.random.default_rng(0)
    clean = rng.uniform(20, 500, (1, 24, 24)).astype(np.float32)
    noisy = _camera(clean, 3)
    model = fit_noise_model(noisy, clean, n_gaussian=1, iterations=5)
    model.log_likelihood(torch.tensor([1.0]), torch.tensor([1.0]))
    out = plot_noise_model(model, noisy, clean, tmp_path / "nm.png", n_signal_bins=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["nm.png"]
    assert model.clamp_counts().evaluated == 1  # drawing does not count as the user's calls


def test_a_fit_does_not_depend_on_the_intensity_unit():
    rng = np.random.default_rng(1)
    clean = rng.uniform(20, 1000, size=(1, 40, 40)).astype(np.float32)
    noisy = _camera(clean, 4)
    kw = dict(n_gaussian=3, n_coeff=3, iterations=60, batch_size=3000)
    raw = fit_noise_model(noisy, clean, **kw)
    small = fit_noise_model(noisy / 1000, clean / 1000, **kw)  # e.g. data scaled to [0, 1]
    s = torch.linspace(50, 950, 10, dtype=torch.float64)
    _, v_raw = raw.moments(s)
    _, v_small = small.moments(s / 1000)
    assert torch.allclose(v_small * 1e6, v_raw, rtol=1e-3)
    assert small.min_variance == pytest.approx(raw.min_variance * 1e-6, rel=1e-5)


def test_the_fit_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        clean = np.linspace(1, 100, 64, dtype=np.float32).reshape(1, 8, 8)
        fit_noise_model(_camera(clean, 2), clean, iterations=2, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
