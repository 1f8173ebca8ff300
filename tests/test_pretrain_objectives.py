"""Objectives, losses and joint augmentation (spec/pcmc.md sections 6-8; test plan 4, 9-11)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musplit.errors import InputError
from musplit.pretrain.augment import (
    AugmentParams,
    apply,
    augment_pair,
    augment_with_target,
    draw_params,
)
from musplit.pretrain.colormap import pcolor
from musplit.pretrain.models import PcolorMAE, patchify
from musplit.pretrain.objectives import (
    OBJECTIVES,
    default_mask,
    edge_loss,
    edge_pos_weight,
    edge_target,
    make_target,
    nt_xent,
    reconstruction_loss,
)
from musplit.pretrain.pretext_config import PretrainConfig


def _disc_image(size=64):
    yy, xx = np.mgrid[:size, :size]
    return (((yy - 30) ** 2 + (xx - 34) ** 2) < 15**2).astype(np.float32) * 0.7 + 0.1


# -- registry and targets ---------------------------------------------------------------------
def test_registry_and_default_masks():
    assert set(OBJECTIVES) == {"pcolor", "masked_gray", "mae", "edge", "simclr", "random"}
    assert default_mask("pcolor", "ccf_vit") == {"kind": "tokens", "ratio": 0.33}
    assert default_mask("mae", "ccf_vit")["ratio"] == 0.75
    assert default_mask("pcolor", "ccf_cnn") == {"kind": "padded", "patch": 12, "p": 0.5}
    assert default_mask("mae", "ccf_cnn") == {"kind": "blocks", "block": 24, "ratio": 0.75}
    assert default_mask("pcolor", "usplit_encoder")["patch"] == 6
    assert default_mask("edge", "ccf_vit") == {"kind": "none"}
    with pytest.raises(InputError, match="unknown objective"):
        default_mask("jigsaw", "ccf_vit")


def test_targets_pcolor_gray_and_edge():
    u = torch.from_numpy(_disc_image())[None]
    assert torch.equal(make_target("pcolor", u), pcolor(u))
    gray = make_target("masked_gray", u)
    assert gray.shape == (1, 3, 64, 64) and torch.equal(gray[:, 1], u)
    assert torch.equal(make_target("mae", u), gray)
    assert make_target("edge", u).shape == (1, 1, 64, 64)


def test_config_fills_objective_defaults_and_refuses_contradictions():
    c = PretrainConfig(model="ccf_cnn", image_size=64, mode="reference")
    assert c.pretext.mask.kind == "padded" and c.pretext.mask.per_sample is False
    assert c.scope == "network"
    v = PretrainConfig(image_size=64, pretext={"objective": "mae"})
    assert v.pretext.colormap.name == "gray" and v.pretext.loss_region == "masked"
    assert v.pretext.mask.zero_masked_pixels_before_stem is True
    for bad in ({"pretext": {"objective": "mae", "colormap": {"name": "nipy_spectral"}}},
                {"pretext": {"objective": "pcolor", "mask": {"kind": "tokens", "ratio": 0.0}}},
                {"pretext": {"objective": "edge", "mask": {"kind": "tokens"}}},
                {"pretext": {"mask": {"kind": "padded"}}},
                {"image_size": 60},
                {"scope": "network"},
                {"model": "usplit_encoder", "usplit": {"patch": 4, "lc": "none", "z_dims": [4]},
                 "pretext": {"mask": {"kind": "padded", "patch": 6}}}):
        with pytest.raises(ValueError):
            PretrainConfig(**{"image_size": 64, **bad})
    # an edge ViT may use token ratio 0 (no masking, spec 14)
    assert PretrainConfig(image_size=64, pretext={
        "objective": "edge", "mask": {"kind": "tokens", "ratio": 0.0}}).pretext.mask.ratio == 0


# -- edge (test plan 10) ----------------------------------------------------------------------
def test_edge_target_binary_on_the_disc_boundary():
    e = edge_target(_disc_image()[None])
    assert e.dtype == np.float32 and set(np.unique(e)) == {0.0, 1.0}
    yy, xx = np.nonzero(e[0, 0])
    r = np.hypot(yy - 30, xx - 34)
    assert len(r) > 50 and np.all(np.abs(r - 15) < 2.5)
    assert not edge_target(np.full((1, 16, 16), 0.5, np.float32)).any()


def test_edge_pos_weight_and_loss():
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, 0, :2] = 1  # 2 positives, 14 negatives
    w = edge_pos_weight(t)
    assert w.tolist() == [7.0, 1.0]
    logits = torch.randn(2, 1, 4, 4)
    expect = (F.binary_cross_entropy_with_logits(logits[:1], t[:1], pos_weight=torch.tensor(7.0))
              + F.binary_cross_entropy_with_logits(logits[1:], t[1:])) / 2
    assert torch.allclose(edge_loss(logits, t), expect)


# -- NT-Xent (test plan 11) -------------------------------------------------------------------
def test_nt_xent_hand_computed_2x2_symmetric_and_temperature():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # logits = z1 z2^T / 0.1 = [[6, 0], [8, 10]]
    rows = 0.5 * ((math.log(math.exp(6) + 1) - 6) + (math.log(math.exp(8) + math.exp(10)) - 10))
    cols = 0.5 * ((math.log(math.exp(6) + math.exp(8)) - 6) + (math.log(1 + math.exp(10)) - 10))
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(0.5 * (rows + cols), rel=1e-6)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z2, z1).item(), rel=1e-6)
    # higher temperature, softer logits: at tau = 1 logits are [[0.6, 0], [0.8, 1]]
    r1 = 0.5 * ((math.log(math.exp(0.6) + 1) - 0.6) + (math.log(math.exp(0.8) + math.e) - 1))
    c1 = 0.5 * ((math.log(math.exp(0.6) + math.exp(0.8)) - 0.6) + (math.log(1 + math.e) - 1))
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(0.5 * (r1 + c1), rel=1e-6)
    # the original SimCLR form counts more negatives, so its loss is larger here
    assert nt_xent(z1, z2, 0.1, intra_view_negatives=True) > 0


def test_reconstruction_loss_regions():
    pred, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    target[..., :2, :] = 0.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 2:, :] = True
    assert reconstruction_loss(pred, target).item() == pytest.approx(0.5)
    assert reconstruction_loss(pred, target, mask, "masked").item() == pytest.approx(1.0)


# -- PcolorMAE loss (test plan 4, loss and alignment parts) -----------------------------------
def _tiny_mae():
    torch.manual_seed(0)
    return PcolorMAE(vit={"image_size": 32, "patch_size": 8, "dim": 16, "depth": 1, "heads": 2,
                          "dim_head": 8, "mlp_dim": 32},
                     decoder_dim=16, decoder_depth=1, decoder_heads=2, decoder_dim_head=8,
                     decoder_mlp_dim=32, masking_ratio=0.33)


def test_mae_loss_ignores_target_values_at_visible_tokens():
    mae = _tiny_mae().eval()
    u = torch.rand(2, 32, 32)
    x, target = u[:, None].expand(-1, 3, -1, -1), pcolor(u)
    masked = torch.tensor([[0, 5, 9, 12, 3], [1, 0, 15, 7, 8]])
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[torch.arange(2)[:, None], masked] = False
    visible = keep.nonzero()[:, 1].reshape(2, -1)
    base = mae(x, target, masked_indices=masked).loss
    from musplit.pretrain.models import unpatchify

    changed = patchify(target, 8).clone()
    rows = torch.arange(2)[:, None]
    changed[rows, visible] = torch.rand_like(changed[rows, visible])
    assert torch.equal(mae(x, unpatchify(changed, 8, 32, 32, 3), masked_indices=masked).loss,
                       base)
    t3 = target.clone()
    t3[:, :, :8, :8] += 0.5  # token 0 is masked in both samples
    assert not torch.equal(mae(x, t3, masked_indices=masked).loss, base)


def test_input_and_target_patches_are_aligned():
    """Target patch k equals cmap of input patch k (catches the HWC/CHW scramble, defect 2)."""
    u = torch.rand(1, 32, 32)
    x_patches = patchify(u[:, None].expand(-1, 3, -1, -1), 8)  # (1, 16, 192), (p1, p2, c)
    t_patches = patchify(pcolor(u), 8)
    for k in range(16):
        gray = x_patches[0, k].reshape(8, 8, 3)[..., 0]
        expect = pcolor(gray).permute(1, 2, 0).reshape(-1)
        assert torch.equal(t_patches[0, k], expect)


# -- joint augmentation (test plan 9) ---------------------------------------------------------
def test_joint_augmentation_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 96, 96), np.int32)
    yy, xx = np.mgrid[:96, :96]
    for i, (cy, cx, r) in enumerate([(30, 30, 12), (60, 70, 15), (25, 75, 9)], start=1):
        labels[:, ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = i
    image = torch.from_numpy((labels > 0).astype(np.float32))
    lab = torch.from_numpy(labels)
    params = draw_params(4, (96, 96), rng)
    img_a, lab_a = augment_pair(image, lab, params)
    assert lab_a.dtype == lab.dtype and set(lab_a.unique().tolist()) <= {0, 1, 2, 3}
    fg_img, fg_lab = img_a > 0.5, lab_a > 0
    iou = (fg_img & fg_lab).sum() / (fg_img | fg_lab).sum()
    assert iou > 0.95
    # a different draw for the labels misaligns them (the reference's defect 7)
    other = draw_params(4, (96, 96), np.random.default_rng(99))
    _, lab_b = augment_pair(image, lab, other)
    fg_b = lab_b > 0
    assert (fg_img & fg_b).sum() / (fg_img | fg_b).sum() < iou - 0.1


def test_clean_mode_target_equals_cmap_of_transformed_u():
    rng = np.random.default_rng(1)
    u = torch.rand(3, 64, 64)
    params = draw_params(3, (64, 64), rng)
    ua, t = augment_with_target(u, params, mode="clean")
    assert torch.equal(t, pcolor(ua))
    ur, tr = augment_with_target(u, params, mode="reference")
    assert torch.allclose(ur, ua, atol=1e-6)
    assert torch.allclose(tr, apply(pcolor(u), params))


def test_identity_parameters_change_nothing_and_rotation_by_90_is_exact():
    x = torch.rand(1, 1, 32, 32)
    no = np.array([False])
    ident = AugmentParams(no, no, np.array([0]), np.array([0]), (32, 32), np.array([0.0]))
    assert torch.equal(apply(x, ident), x)
    rot = AugmentParams(no, no, np.array([0]), np.array([0]), (32, 32), np.array([90.0]))
    out = apply(x, rot)[0, 0]
    assert any(torch.allclose(out, torch.rot90(x[0, 0], k, (0, 1)), atol=1e-5) for k in (1, 3))
    assert draw_params(2, (384, 384), rng=np.random.default_rng(0)).crop == (345, 345)
