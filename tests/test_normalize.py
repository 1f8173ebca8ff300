import json

import numpy as np
import pytest

from musplit.data.normalize import NormStats, compute_stats
from musplit.errors import InputError


def _targets(seed=0, n=6, h=20, w=24):
    rng = np.random.default_rng(seed)
    t = rng.gamma(2.0, 3.0, size=(n, h, w, 2)).astype(np.float32)
    t[..., 1] *= 2.5
    return t


def test_stats_follow_the_reference_recipe():
    t = _targets()
    train = [2, 3, 4, 5]
    st = compute_stats(t, train, quantile=0.995)
    pix = t[train]
    clip = np.quantile(pix.astype(np.float64), 0.995)
    assert st.clip_max == pytest.approx(clip, rel=1e-6)
    c = np.minimum(pix.astype(np.float64), clip)
    assert st.target_mean == pytest.approx([c[..., 0].mean(), c[..., 1].mean()], rel=1e-6)
    assert st.target_std == pytest.approx([c[..., 0].std(), c[..., 1].std()], rel=1e-6)
    # Input statistics pool all clipped training pixels of both channels (spec 5.3 step 2).
    assert st.input_mean == pytest.approx(c.mean(), rel=1e-6)
    assert st.input_std == pytest.approx(c.std(), rel=1e-6)
    assert st.alpha == [0.5, 0.5]


def test_only_training_frames_are_used():
    t = _targets()
    a = compute_stats(t, [0, 1])
    t2 = t.copy()
    t2[3:] = 1e6  # frames outside the training split must not matter
    b = compute_stats(t2, [0, 1])
    assert a == b


def test_sum_input_is_normalised_properly():
    t = _targets()
    st = compute_stats(t, None, input_is_sum=True, quantile=1.0)
    m, s = st.target_mean, st.target_std
    assert st.input_mean == pytest.approx(m[0] + m[1])
    assert st.input_std == pytest.approx(np.hypot(s[0], s[1]))
    x = st.mix(t)
    np.testing.assert_allclose(x, t.sum(-1), rtol=1e-6)


def test_channelwise_quantile_and_clip():
    t = _targets()
    st = compute_stats(t, None, channelwise_quantile=True, quantile=0.9)
    assert isinstance(st.clip_max, list) and len(st.clip_max) == 2
    assert st.clip_max[1] > st.clip_max[0]
    c = st.clip(t)
    assert c[..., 0].max() <= st.clip_max[0] and c[..., 1].max() <= st.clip_max[1]


def test_round_trips_and_inverse_transforms():
    t = _targets()
    st = compute_stats(t, None, alpha=[0.3, 0.7])
    back = NormStats.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back == st
    n = st.normalize_target(t)
    np.testing.assert_allclose(st.denormalize_target(n), t, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(st.mix(t), 0.3 * t[..., 0] + 0.7 * t[..., 1], rtol=1e-5)
    x = st.normalize_input(st.mix(t))
    np.testing.assert_allclose(st.denormalize_input(x), st.mix(t), rtol=1e-5, atol=1e-4)
    # channel axis other than last
    nc = st.normalize_target(np.moveaxis(t, -1, 1), axis=1)
    np.testing.assert_allclose(np.moveaxis(nc, 1, -1), n, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": [0.2, 0.2]}, "sum to 1"),
        ({"alpha": [1.0]}, "1 alpha weights"),
        ({"quantile": 0.0}, "quantile"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        compute_stats(_targets(), None, **kwargs)


def test_bad_data():
    t = _targets()
    t[1, 2, 3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        compute_stats(t, None)
    with pytest.raises(InputError, match="constant"):
        compute_stats(np.ones((2, 4, 4, 2), np.float32), None)
    with pytest.raises(InputError, match="empty"):
        compute_stats(_targets(), [])
    with pytest.raises(InputError, match=r"\(N, H, W, T\)"):
        compute_stats(np.ones((4, 4, 2), np.float32), None)
