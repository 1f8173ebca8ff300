"""Calibration of the predicted std (issue 18, item 5): the binning, the per-channel fit, the
calibration error (ENCE), the stored table and the figure (docs/microsplit.md, "Calibration in
musplit")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musplit.calibration import (
    Calibration,
    bin_errors,
    calibrated_std,
    calibration_error,
    fit_calibration,
)
from musplit.errors import CheckpointError, InputError
from musplit.predict import Prediction


def _synthetic(k, offset=0.0, shape=(4, 64, 64), seed=0):
    """A std uniform in [0.1, 1] and errors drawn from N(0, (k std + offset)^2)."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    err = rng.normal(size=shape) * (k * std + offset)
    return std, err


@pytest.mark.parametrize("k", [0.5, 2.0, 3.0])
def test_a_known_scale_factor_is_recovered_and_the_error_drops(k):
    std, err = _synthetic(k)
    cal = fit_calibration(std[..., None], err[..., None], samples=8)
    assert cal.a[0] == pytest.approx(k, rel=0.05)
    assert abs(cal.b[0]) < 0.03 * k
    assert cal.ence_before[0] == pytest.approx(abs(k - 1), rel=0.1)  # |RMV - k RMV| / RMV
    assert cal.ence_after[0] < 0.05 < cal.ence_before[0]
    assert cal.ence_weighted_after[0] < 0.05 < cal.ence_weighted_before[0]
    assert cal.samples == 8 and cal.pixels == std.size


def test_channels_are_fitted_separately_with_their_offsets():
    s0, e0 = _synthetic(2.0, seed=1)
    s1, e1 = _synthetic(0.7, offset=0.3, seed=2)
    cal = fit_calibration(np.stack([s0, s1], -1), np.stack([e0, e1], -1),
                          channel_names=["nucleus", "actin"])
    assert cal.channel_names == ["nucleus", "actin"]
    assert cal.a[0] == pytest.approx(2.0, rel=0.05) and abs(cal.b[0]) < 0.06
    assert cal.a[1] == pytest.approx(0.7, rel=0.08) and cal.b[1] == pytest.approx(0.3, abs=0.04)
    assert max(cal.ence_after) < 0.05
    assert "nucleus" in cal.table() and "actin" in cal.table()


def test_a_calibrated_std_stays_calibrated():
    std, err = _synthetic(1.0, seed=3)
    cal = fit_calibration(std[..., None], err[..., None])
    assert cal.a[0] == pytest.approx(1.0, rel=0.05) and abs(cal.b[0]) < 0.03
    assert cal.ence_before[0] < 0.05 and cal.ence_after[0] < 0.05


def test_the_largest_std_is_binned_and_bins_are_equal_width():
    std = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    bins = bin_errors(std, std, n_bins=4)
    np.testing.assert_allclose(bins.edges, [0, 0.25, 0.5, 0.75, 1.0])
    assert bins.counts.tolist() == [1, 1, 1, 2]  # 1.0 (the maximum) is in the last bin
    assert bins.counts.sum() == std.size and bins.kept.all()
    np.testing.assert_allclose(bins.rmv[-1], np.sqrt((0.75**2 + 1) / 2))
    np.testing.assert_allclose(bins.rmse, bins.rmv)  # error = std here


def test_empty_bins_are_left_out_of_the_fit_and_the_error():
    rng = np.random.default_rng(4)
    std = np.concatenate([rng.uniform(0.1, 0.2, 500), rng.uniform(0.9, 1.0, 500)])
    err = rng.normal(size=std.size) * 2 * std
    cal = fit_calibration(std[:, None], err[:, None], n_bins=10)
    bins = cal.before[0]
    empty = bins.counts == 0
    assert empty[2:7].all() and not bins.kept[empty].any()
    assert np.isnan(bins.rmv[empty]).all() and np.isnan(bins.rmse[empty]).all()
    assert np.isfinite(cal.a[0]) and np.isfinite(cal.b[0])
    assert cal.a[0] == pytest.approx(2.0, rel=0.15)
    assert np.isfinite(cal.ence_before[0]) and np.isfinite(cal.ence_after[0])
    d = cal.to_dict()["before"][0]
    assert d["rmv"][3] is None and d["counts"][3] == 0  # JSON-safe, no NaN


def test_sparse_tails_are_dropped():
    rng = np.random.default_rng(5)
    std = np.append(rng.uniform(0.1, 0.2, 200_000), 5.0)  # one pixel far above the rest
    err = np.append(rng.normal(size=200_000) * std[:-1], 0.0)
    bins = bin_errors(std, err, n_bins=15)
    assert bins.counts[-1] == 1 and not bins.kept[-1]  # 1 / 200001 < 1 - 0.99999
    assert bins.kept[0]
    kept_all = bin_errors(std, err, n_bins=15, q_end=1.0)
    assert kept_all.kept[-1]


def test_a_constant_std_is_fitted_with_a_scale_only():
    std = np.full((1000, 1), 0.5)
    err = np.random.default_rng(6).normal(size=(1000, 1)) * 1.5
    cal = fit_calibration(std, err)
    assert cal.b[0] == 0.0
    assert cal.a[0] == pytest.approx(np.sqrt(np.mean(err**2)) / 0.5)
    assert int(cal.before[0].kept.sum()) == 1
    assert cal.ence_after[0] == pytest.approx(0.0, abs=1e-6)


def test_a_std_of_zero_everywhere_is_refused_in_one_line():
    with pytest.raises(InputError) as e:
        fit_calibration(np.zeros((10, 10, 1)), np.ones((10, 10, 1)), channel_names=["dna"])
    msg = str(e.value)
    assert "\n" not in msg and "channel dna" in msg and "0 in every pixel" in msg


@pytest.mark.parametrize("which", ["std", "error"])
def test_nan_is_refused_in_one_line(which):
    std, err = _synthetic(1.0, shape=(8, 8))
    (std if which == "std" else err)[2, 3] = np.nan
    with pytest.raises(InputError) as e:
        fit_calibration(std[..., None], err[..., None])
    assert "\n" not in str(e.value) and "NaN" in str(e.value)


def test_bad_inputs_are_refused():
    std, err = _synthetic(1.0, shape=(8, 8))
    with pytest.raises(InputError, match="differ in shape"):
        fit_calibration(std[..., None], err[:4, ..., None])
    with pytest.raises(InputError, match="negative"):
        fit_calibration(-std[..., None], err[..., None])
    with pytest.raises(InputError, match="bins"):
        bin_errors(std, err, n_bins=0)
    with pytest.raises(InputError, match="channel names"):
        fit_calibration(std[..., None], err[..., None], channel_names=["a", "b"])


def test_calibration_error_is_the_mean_relative_gap():
    bins = bin_errors(np.array([1.0, 1.0, 2.0, 2.0, 2.0]), np.array([2.0, 2.0, 2.0, 2.0, 2.0]),
                      n_bins=2)
    # bin 0: RMV 1, RMSE 2 -> gap 1; bin 1: RMV 2, RMSE 2 -> gap 0
    assert calibration_error(bins) == pytest.approx(0.5)
    assert calibration_error(bins, weighted=True) == pytest.approx(2 / 5)


def test_to_dict_from_dict_round_trip():
    std, err = _synthetic(1.7, seed=7)
    cal = fit_calibration(np.stack([std, std * 2], -1), np.stack([err, err], -1),
                          channel_names=["x", "y"], samples=5, n_bins=9)
    d = cal.to_dict()
    text = json.dumps(d, allow_nan=False)  # plain JSON, no NaN
    back = Calibration.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.a == cal.a and back.n_bins == 9 and back.samples == 5
    np.testing.assert_array_equal(back.before[1].counts, cal.before[1].counts)
    with pytest.raises(CheckpointError):
        Calibration.from_dict({**d, "b": [0.0]})  # one offset for two channels


def test_calibrated_std_is_affine_per_channel_and_clamped_at_zero():
    cal = Calibration(a=[2.0, 0.5], b=[-0.3, 0.1])
    std = np.array([[[0.1, 0.1], [1.0, 1.0]]], dtype=np.float32)
    out = calibrated_std(std, cal)
    np.testing.assert_allclose(out, [[[0.0, 0.15], [1.7, 0.6]]], atol=1e-7)
    assert out.dtype == np.float32 and (out >= 0).all()
    # intensity units: the offset is b_k * s_k
    inten = calibrated_std(std * np.array([10.0, 4.0]), cal.to_dict(), target_std=[10.0, 4.0])
    np.testing.assert_allclose(inten, out * np.array([10.0, 4.0]), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="2 channel"):
        calibrated_std(std[..., :1], cal)


def test_old_predictions_say_their_std_is_raw():
    mean = np.zeros((1, 4, 4, 2), np.float32)
    std = np.ones_like(mean)
    alea = np.ones_like(mean)
    old = Prediction(mean, std, alea, meta={"samples": 4})  # a file without the key
    assert old.std_calibrated is False
    np.testing.assert_allclose(old.total_std, np.sqrt(2))
    cal = Prediction(mean, std, alea, meta={"std_calibrated": True})
    assert cal.std_calibrated is True and cal.total_std is cal.std


def test_the_calibration_figure(tmp_path):
    from PIL import Image

    from musplit.figures import plot_calibration

    std, err = _synthetic(2.0, seed=8)
    cal = fit_calibration(np.stack([std, std], -1), np.stack([err, err / 2], -1),
                          channel_names=["a", "b"])
    out = plot_calibration(cal, tmp_path / "cal.png", title="t")
    assert out == tmp_path / "cal.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 1.5 * im.height  # one panel per channel
    assert not list(tmp_path.glob(".*"))  # no temporary left
