"""Masking schemes (spec/pcmc.md section 4, test plan items 2 and 3)."""

import numpy as np
import pytest
import torch

from musplit.errors import InputError
from musplit.pretrain.masks import (
    apply_mask,
    block_mask,
    no_mask,
    padded_grid,
    padded_mask,
    token_mask,
    tokens_to_pixels,
)


def test_padded_grid_has_441_candidates_at_384():
    assert padded_grid(384, 384, 12) == (21, 21)
    assert padded_grid(64, 64, 6) == (7, 7)


def test_padded_mask_full_coverage_and_gaps_never_masked():
    m = padded_mask(384, 384, batch=1, patch=12, p=1.0)[0]
    assert m.sum() == 441 * 144
    assert m.mean() == pytest.approx(0.4307, abs=5e-5)
    # every masked pixel lies in a candidate patch, every gap pixel is free
    rows = np.zeros(384, bool)
    for i in range(21):
        rows[6 + 18 * i: 18 + 18 * i] = True
    np.testing.assert_array_equal(m, rows[:, None] & rows[None, :])


def test_padded_mask_mean_coverage_over_500_draws():
    m = padded_mask(384, 384, batch=500, p=0.5, rng=np.random.default_rng(1))
    assert abs(m.mean() - 0.2153) < 0.01
    gaps = ~padded_mask(384, 384, p=1.0)[0]
    assert not m[:, gaps].any()


def test_padded_mask_per_sample_on_and_off():
    rng = np.random.default_rng(0)
    on = padded_mask(96, 96, batch=4, p=0.5, per_sample=True, rng=rng)
    assert len({m.tobytes() for m in on}) == 4
    off = padded_mask(96, 96, batch=4, p=0.5, per_sample=False, rng=rng)
    assert all((m == off[0]).all() for m in off)
    assert 0 < off[0].mean() < 0.43


def test_padded_mask_same_seed_same_mask_and_bad_sizes():
    a = padded_mask(64, 64, patch=6, batch=2, rng=np.random.default_rng(5))
    b = padded_mask(64, 64, patch=6, batch=2, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="no padded-mask candidates"):
        padded_mask(16, 16, patch=12)
    with pytest.raises(InputError, match="p must be"):
        padded_mask(64, 64, p=1.5)


def test_block_mask_exact_count():
    m = block_mask(384, 384, batch=3, block=24, ratio=0.75, rng=np.random.default_rng(0))
    blocks = m.reshape(3, 16, 24, 16, 24)[:, :, 0, :, 0]
    assert (blocks.sum(axis=(1, 2)) == 192).all()
    # blocks are all-or-nothing
    assert (m.reshape(3, 16, 24, 16, 24).all(axis=(2, 4)) == blocks).all()
    assert len({b.tobytes() for b in blocks}) == 3


def test_token_mask_counts_760_of_2304():
    g = torch.Generator().manual_seed(0)
    masked, visible = token_mask(4, 2304, 0.33, generator=g)
    assert masked.shape == (4, 760) and visible.shape == (4, 1544)
    for b in range(4):
        both = torch.cat([masked[b], visible[b]]).sort().values
        assert torch.equal(both, torch.arange(2304))
    sets = {tuple(sorted(masked[b].tolist())) for b in range(4)}
    assert len(sets) == 4
    assert token_mask(2, 2304, 0.75)[0].shape == (2, 1728)


def test_token_ratio_zero_masks_nothing_and_one_is_refused():
    masked, visible = token_mask(2, 64, 0.0)
    assert masked.shape == (2, 0) and visible.shape == (2, 64)
    with pytest.raises(InputError):
        token_mask(2, 64, 1.0)


def test_tokens_to_pixels_and_apply_mask():
    masked = torch.tensor([[0, 5]])
    pix = tokens_to_pixels(masked, (2, 3), 4)
    assert pix.shape == (1, 8, 12) and pix.sum() == 32
    assert pix[0, :4, :4].all() and pix[0, 4:, 8:].all() and not pix[0, :4, 4:].any()
    x = torch.ones(1, 3, 8, 12)
    y = apply_mask(x, pix, fill=0.0)
    assert y.sum() == 3 * (96 - 32)
    xn = np.ones((1, 8, 12), np.float32)
    assert apply_mask(xn, pix.numpy(), fill=-1.0).min() == -1.0


def test_no_mask():
    assert not no_mask(8, 9, batch=2).any()
