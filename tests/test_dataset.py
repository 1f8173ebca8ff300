"""Training and evaluation patches (spec 4 "Epoch", 5.4, 5.8, 5.9, 8.1-8.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musplit.data.context import lateral_context
from musplit.data.dataset import (
    GridPatches,
    TrainPatches,
    apply_d4,
    make_loader,
    tile_corners,
)
from musplit.data.normalize import compute_stats
from musplit.errors import InputError

P, S = 16, 3


def smooth_targets(n=6, h=48, w=40, t=2, seed=0):
    """Random smooth non-negative images (N, H, W, T) with a few bright pixels to clip."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, h, w, t)).astype(np.float32)
    for axis in (1, 2):
        x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    x[:, 5, 5, :] = 50.0  # above the clip quantile
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    targets = smooth_targets()
    stats = compute_stats(targets, [2, 3, 4, 5])
    return targets, stats


def expected(targets, stats, frame, corner, pad):
    """(input, target) from first principles: clip, mix, LC in raw units, then normalise."""
    clipped = stats.clip(targets[frame])
    mix = stats.mix(clipped)
    x = stats.normalize_input(lateral_context(mix, [corner], P, S, pad)[0])
    r, c = corner
    y = stats.normalize_target(clipped[r : r + P, c : c + P], axis=-1)
    return x, np.moveaxis(y, -1, 0)


@pytest.mark.parametrize("pad", ["reflect", "zeros"])
def test_train_shapes_length_and_normalisation(data, pad):
    targets, stats = data
    ds = TrainPatches(targets, stats, [2, 3, 4, 5], patch=P, scales=S, pad=pad, seed=1)
    assert len(ds) == 4 * (48 // P) * (40 // P)
    x, y = ds.__getitems__(list(range(10)))
    assert x.shape == (10, S, P, P) and y.shape == (10, 2, P, P)
    assert x.dtype == y.dtype == torch.float32
    draw = TrainPatches(targets, stats, [2, 3, 4, 5], patch=P, scales=S, pad=pad,
                        seed=1).draw(list(range(10)))
    np.testing.assert_array_equal(draw["frame"], np.arange(10) % 4)  # sample j: frame j mod n
    for k in range(10):
        ex, ey = expected(targets, stats, [2, 3, 4, 5][draw["frame"][k]], draw["corners"][k], pad)
        np.testing.assert_allclose(x[k].numpy(), ex, atol=1e-5)
        np.testing.assert_allclose(y[k].numpy(), ey, atol=1e-5)
    xi, yi = ds[3]
    assert xi.shape == (S, P, P) and yi.shape == (2, P, P)


def test_zero_padding_is_background_intensity(data):
    # Zero padding is intensity 0 before normalisation (the reference's behaviour, spec 5.7).
    targets, stats = data
    ds = TrainPatches(targets, stats, [2], patch=P, scales=S, pad="zeros")
    x, _ = ds.sample([0], [[0, 0]])
    np.testing.assert_allclose(x[0, 2, 0, 0], -stats.input_mean / stats.input_std, rtol=1e-6)


def test_corners_cover_every_offset_including_the_last(data):
    targets, stats = data
    ds = TrainPatches(targets, stats, [2, 3], patch=32, scales=2, seed=0)
    c = ds.draw(np.zeros(4000, dtype=int))["corners"]
    assert set(c[:, 0]) == set(range(48 - 32 + 1)) and set(c[:, 1]) == set(range(40 - 32 + 1))


def test_seeded_and_epoch_dependent(data):
    targets, stats = data

    def first_epoch(seed, workers=0, epochs=1):
        ds = TrainPatches(targets, stats, [2, 3, 4, 5], patch=P, scales=S, seed=seed)
        loader = make_loader(ds, batch_size=8, num_workers=workers, seed=seed)
        out = []
        for _ in range(epochs):
            out.append(torch.cat([x for x, _ in loader]))
        return out

    def corners(seed):
        ds = TrainPatches(targets, stats, [2, 3], patch=P, scales=S, seed=seed)
        return ds.draw(range(8))["corners"]

    np.testing.assert_array_equal(corners(3), corners(3))
    assert not np.array_equal(corners(3), corners(4))
    a, b, c = first_epoch(3)[0], first_epoch(3)[0], first_epoch(4)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    e1, e2 = first_epoch(3, epochs=2)
    assert e1.shape == e2.shape and not torch.equal(e1, e2)
    w1, w2 = first_epoch(5, workers=2)[0], first_epoch(5, workers=2)[0]
    assert torch.equal(w1, w2)


def test_set_epoch_restarts_the_stream(data):
    targets, stats = data
    ds = TrainPatches(targets, stats, [2, 3], patch=P, scales=S, seed=0)
    ds.set_epoch(7)
    first = ds.draw(range(6))["corners"]
    ds.set_epoch(8)
    other = ds.draw(range(6))["corners"]
    ds.set_epoch(7)
    np.testing.assert_array_equal(ds.draw(range(6))["corners"], first)
    assert not np.array_equal(first, other)


def test_d4_augmentation_is_consistent_across_scales_and_targets(data):
    targets, stats = data
    ds = TrainPatches(targets, stats, [2, 3, 4, 5], patch=P, scales=S, pad="zeros",
                      augment="d4", seed=2)
    draw = ds.draw(list(range(24)) * 2)
    assert len(set(draw["transform"])) == 8
    x, y = ds.sample(**draw)
    x0, y0 = ds.sample(draw["frame"], draw["corners"])  # same patches, not augmented
    for k, t in enumerate(draw["transform"]):
        np.testing.assert_array_equal(apply_d4(x[k], t, inverse=True), x0[k])
        np.testing.assert_array_equal(apply_d4(y[k], t, inverse=True), y0[k])


def test_alpha_range_mixes_per_patch(data):
    targets, stats = data
    ds = TrainPatches(targets, stats, [2, 3], patch=P, scales=S, alpha_range=(0.1, 0.3),
                      augment="d4", seed=0)
    draw = ds.draw(range(12))
    assert ((draw["alpha"] >= 0.1) & (draw["alpha"] <= 0.3)).all()
    x, y = ds.sample(**draw)
    for k in range(12):
        clipped = stats.clip(targets[[2, 3][draw["frame"][k]]])
        a = draw["alpha"][k]
        mix = a * clipped[..., 0] + (1 - a) * clipped[..., 1]
        lc = lateral_context(mix, [draw["corners"][k]], P, S)[0]
        want = apply_d4(stats.normalize_input(lc), draw["transform"][k])
        np.testing.assert_allclose(x[k], want, atol=1e-5)
    # Default alpha reproduces the plain mix (the stats' weights).
    plain = TrainPatches(targets, stats, [2, 3], patch=P, scales=S)
    np.testing.assert_allclose(ds.sample(draw["frame"], draw["corners"])[0],
                               plain.sample(draw["frame"], draw["corners"])[0], atol=1e-5)
    np.testing.assert_allclose(y, plain.sample(**(draw | {"alpha": None}))[1], atol=1e-6)


def test_loader_batches_of_32(data):
    targets, stats = data
    ds = TrainPatches(targets, stats, patch=P, scales=S)
    sizes = [(x.shape, y.shape) for x, y in make_loader(ds, batch_size=32)]
    assert sizes[0] == ((32, S, P, P), (32, 2, P, P))
    assert [s[0][0] for s in sizes] == [32, 4] and len(ds) == 36  # last partial batch kept


def test_grid_indexing(data):
    targets, stats = data
    frames = [0, 1, 2]
    grid = GridPatches(targets, stats, frames, patch=P, scales=S, pad="reflect")
    n_r, n_c = 48 // P, 40 // P
    assert len(grid) == 3 * n_r * n_c and grid.grid_shape == (n_r, n_c)
    x, y = grid.__getitems__(list(range(len(grid))))
    seen = set()
    for j in range(len(grid)):
        f, cell = j % 3, j // 3
        corner = (cell // n_c * P, cell % n_c * P)
        seen.add((f,) + corner)
        ex, ey = expected(targets, stats, frames[f], corner, "reflect")
        np.testing.assert_allclose(x[j].numpy(), ex, atol=1e-5)
        np.testing.assert_allclose(y[j].numpy(), ey, atol=1e-5)
    assert len(seen) == len(grid)
    assert [b[0].shape[0] for b in make_loader(grid, 4)] == [4] * 4 + [2]


@pytest.mark.parametrize(("h", "w", "patch", "grid"), [(203, 317, 64, 16), (10, 7, 8, 4),
                                                        (64, 64, 64, 64), (5, 3, 16, 2)])
def test_tile_corners_cover_every_pixel_once(h, w, patch, grid):
    corners = tile_corners(h, w, patch, grid)
    n_r, n_c = -(-h // grid), -(-w // grid)
    assert corners.shape == (n_r * n_c, 2)
    margin = (patch - grid) // 2
    canvas = np.zeros((n_r * grid, n_c * grid), dtype=int)
    for r, c in corners + margin:  # each tile is the centre G x G of its patch
        canvas[r : r + grid, c : c + grid] += 1
    assert (canvas == 1).all()
    rows, cols = corners.reshape(n_r, n_c, 2).transpose(2, 0, 1)  # row-major tile order
    np.testing.assert_array_equal(rows, np.arange(n_r)[:, None] * grid - margin + 0 * cols)
    np.testing.assert_array_equal(cols, np.arange(n_c)[None, :] * grid - margin + 0 * rows)


def test_tile_corners_paper_and_errors():
    assert tile_corners(2720, 2720, 64, 64, cover=False).shape == (42 * 42, 2)
    assert tile_corners(2720, 2720, 64, 64).shape == (43 * 43, 2)
    with pytest.raises(InputError, match="margin"):
        tile_corners(100, 100, 64, 15)
    with pytest.raises(InputError, match="margin"):
        tile_corners(100, 100, 16, 32)


def test_bad_inputs(data):
    targets, stats = data
    with pytest.raises(InputError, match="smaller than the patch"):
        TrainPatches(targets[:, :12], stats, patch=P, scales=S)
    with pytest.raises(InputError, match="smaller than the patch"):
        GridPatches(targets[:, :, :15], stats, patch=P, scales=S)
    bad = targets.copy()
    bad[3, 7, 7, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        TrainPatches(bad, stats, [2, 3], patch=P, scales=S)
    with pytest.raises(InputError, match="channels"):
        TrainPatches(targets[..., :1], stats, patch=P, scales=S)
    with pytest.raises(InputError, match="shape"):
        TrainPatches(targets[0], stats, patch=P, scales=S)
    with pytest.raises(InputError, match="does not exist"):
        TrainPatches(targets, stats, [6], patch=P, scales=S)
    with pytest.raises(InputError, match="augment"):
        TrainPatches(targets, stats, patch=P, scales=S, augment="rot")
    with pytest.raises(InputError, match="alpha_range"):
        TrainPatches(targets, stats, patch=P, scales=S, alpha_range=(0.8, 0.2))


def test_bounded_cache_gives_the_same_samples(data):
    targets, stats = data
    eager = TrainPatches(targets, stats, [1, 2, 3, 4], patch=P, scales=S, pad="zeros",
                         alpha_range=(0.2, 0.9), augment="d4", seed=5)
    lazy = TrainPatches(targets, stats, [1, 2, 3, 4], patch=P, scales=S, pad="zeros",
                        alpha_range=(0.2, 0.9), augment="d4", seed=5, cache_frames=1)
    draw = eager.draw(range(16))
    for a, b in zip(eager.sample(**draw), lazy.sample(**draw), strict=True):
        np.testing.assert_array_equal(a, b)
    assert lazy.nbytes * 4 == eager.nbytes
