import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from musplit import metrics
from musplit.errors import InputError


def _pair(seed=0, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=shape).cumsum(0).cumsum(1)
    p = g + rng.normal(scale=2.0, size=shape)
    return g, p


def _ri_psnr_float64_by_hand(g, p):
    g = g.ravel().astype(np.float64)
    p = p.ravel().astype(np.float64)
    s = np.std(g, ddof=1)
    gn = (g - g.mean()) / s
    rng = (g.max() - g.min()) / s
    p0 = p - p.mean()
    a = (gn * p0).sum() / (p0 * p0).sum()
    return 20 * np.log10(rng / np.sqrt(((gn - a * p0) ** 2).mean()))


def test_ri_psnr_matches_hand_computation_and_is_affine_invariant():
    g, p = _pair()
    ref = _ri_psnr_float64_by_hand(g, p)
    v = metrics.range_invariant_psnr(g, p)
    assert v == pytest.approx(ref, abs=1e-6)
    for a, b in [(3.0, 5.0), (0.01, -100.0), (1e4, 1.0)]:
        assert metrics.range_invariant_psnr(g, a * p + b) == pytest.approx(v, abs=1e-6)
    # ... but not to the target's scale-free degradation
    noise = np.random.default_rng(1).normal(size=g.shape) * 5
    assert metrics.range_invariant_psnr(g, p + noise) < v


def test_ri_psnr_perfect_and_float32_inputs():
    g, _ = _pair()
    assert metrics.range_invariant_psnr(g, 2 * g + 1) > 250 or math.isinf(
        metrics.range_invariant_psnr(g, 2 * g + 1))
    g32, p32 = (x.astype(np.float32) for x in _pair(2))
    assert metrics.range_invariant_psnr(g32, p32) == pytest.approx(
        _ri_psnr_float64_by_hand(g32, p32), abs=1e-6)


def test_plain_psnr_rmse_ssim():
    g, p = _pair(3)
    mse = np.mean((g - p) ** 2)
    assert metrics.rmse(g, p) == pytest.approx(np.sqrt(mse))
    assert metrics.psnr(g, p) == pytest.approx(20 * np.log10((g.max() - g.min()) / np.sqrt(mse)))
    ref = structural_similarity(g, p, data_range=g.max() - g.min())
    assert metrics.ssim(g, p) == pytest.approx(ref)
    assert metrics.ssim(g, g) == pytest.approx(1.0)


def test_evaluate_summary():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 24, 24, 2)).cumsum(1)
    p = t + rng.normal(scale=0.3, size=t.shape)
    res = metrics.evaluate(t, p, channel_names=["actin", "tubulin"])
    ri = np.array(res["per_frame"]["ri_psnr"])
    assert ri.shape == (3, 2)
    assert ri[1, 0] == pytest.approx(metrics.range_invariant_psnr(t[1, ..., 0], p[1, ..., 0]))
    s = res["summary"]["ri_psnr"]
    assert s["actin"]["mean"] == pytest.approx(ri[:, 0].mean())
    assert s["tubulin"]["sem"] == pytest.approx(ri[:, 1].std(ddof=1) / np.sqrt(3))
    assert s["mean"]["mean"] == pytest.approx(ri.mean())


def test_bad_inputs():
    g, p = _pair()
    with pytest.raises(InputError, match="differ in shape"):
        metrics.psnr(g, p[:-1])
    with pytest.raises(InputError, match="2-D"):
        metrics.rmse(g[None], p[None])
    q = p.copy()
    q[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.ssim(g, q)
    with pytest.raises(InputError, match="constant"):
        metrics.range_invariant_psnr(np.ones((5, 5)), p[:5, :5])
