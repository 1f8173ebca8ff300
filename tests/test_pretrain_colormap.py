"""The pseudo-spectral target (spec/pcmc.md section 3, test plan item 1)."""

import matplotlib
import numpy as np
import pytest
import torch

from musplit.errors import InputError
from musplit.pretrain.colormap import COLORMAPS, lut, minmax_normalize, pcolor

VECTORS = [
    (0.0, (0.0, 0.0, 0.0)),
    (0.05, (0.4392, 0.0, 0.5019)),
    (0.25, (0.0, 0.4693, 0.8667)),
    (0.5, (0.0, 0.7385, 0.0)),
    (0.75, (1.0, 0.7882, 0.0)),
    (0.9, (0.8641, 0.0, 0.0)),
    (0.999, (0.8, 0.8, 0.8)),
    (1.0, (0.8, 0.8, 0.8)),
]


@pytest.mark.parametrize(("u", "rgb"), VECTORS)
def test_spec_vectors(u, rgb):
    out = pcolor(np.full((1, 1), u, dtype=np.float32))
    assert out.shape == (3, 1, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], rgb, atol=1e-4)
    t = pcolor(torch.full((2, 1, 1), u, dtype=torch.float64))
    assert t.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(t[1, :, 0, 0].numpy(), rgb, atol=1e-4)


@pytest.mark.parametrize("name", ["nipy_spectral", "rainbow", "seismic", "viridis"])
def test_lut_matches_matplotlib(name):
    ref = matplotlib.colormaps[name](np.arange(256))[:, :3]
    assert np.abs(lut(name) - ref).max() < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lookup_matches_matplotlib_on_a_ramp_with_under_and_over(dtype):
    u = np.linspace(-0.2, 1.2, 4001, dtype=dtype).reshape(1, -1)
    ref = np.moveaxis(matplotlib.colormaps["nipy_spectral"](u)[..., :3], -1, 0)
    assert np.abs(pcolor(u) - ref).max() < 1e-6
    assert np.abs(pcolor(torch.from_numpy(u)).numpy() - ref).max() < 1e-6


def test_quantised_to_256_levels_and_continuous_variant_is_not():
    u = np.linspace(0, 1, 10001, dtype=np.float32).reshape(1, -1)
    assert len(np.unique(pcolor(u)[:, 0], axis=1).T) <= 256
    cont = pcolor(u, quantize=False)
    assert len(np.unique(cont[:, 0], axis=1).T) > 1000
    # the continuous map passes through the control points (nipy_spectral at 0.5)
    np.testing.assert_allclose(pcolor(np.full((1, 1), 0.5, np.float32), quantize=False)[:, 0, 0],
                               (0, 0.7333, 0), atol=1e-6)
    np.testing.assert_allclose(pcolor(torch.from_numpy(u), quantize=False).numpy(), cont,
                               atol=1e-5)


def test_gray_is_u_and_not_quantised():
    u = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    out = pcolor(u, "gray")
    for c in range(3):
        np.testing.assert_array_equal(out[c], u)


@pytest.mark.parametrize("bad", [np.arange(6, dtype=np.uint16).reshape(2, 3),
                                 np.ones((2, 2), dtype=np.int64),
                                 torch.ones(2, 2, dtype=torch.int32)])
def test_integer_input_raises(bad):
    with pytest.raises(InputError, match="float"):
        pcolor(bad)


def test_nan_raises():
    u = np.zeros((3, 3), np.float32)
    u[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pcolor(u)
    with pytest.raises(InputError, match="NaN"):
        pcolor(torch.from_numpy(u))


def test_unknown_colormap_raises():
    with pytest.raises(InputError, match="unknown colormap"):
        pcolor(np.zeros((2, 2), np.float32), "jet")
    assert set(COLORMAPS) == {"nipy_spectral", "rainbow", "seismic", "viridis", "gray"}


def test_minmax_normalize_per_image_and_constant_gives_zeros():
    x = np.stack([np.arange(12, dtype=np.uint16).reshape(3, 4) * 100,
                  np.full((3, 4), 7, dtype=np.uint16)])
    u = minmax_normalize(x)
    assert u.dtype == np.float32
    assert u[0].min() == 0 and u[0].max() == 1
    np.testing.assert_array_equal(u[1], 0)
    # percentile clipping: one hot pixel no longer squeezes the rest into the bottom band
    img = np.ones((10, 10), np.float32)
    img[:5] = 0
    img[0, 0] = 1000
    assert minmax_normalize(img)[9, 9] < 0.01
    assert minmax_normalize(img, percentiles=(0, 98))[9, 9] == 1.0
