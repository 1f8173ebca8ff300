"""PCMC models: ContextBlock (§15.5), PcolorMAE (§15.4), detectors and encoder transfer."""

from __future__ import annotations

import pytest
import torch

from musplit.errors import CheckpointError, InputError
from musplit.pretrain.config import CCFViTConfig, CellCentroidFormerConfig, ViTConfig
from musplit.pretrain.models import (
    CCFViT,
    CellCentroidFormer,
    ContextBlock,
    EfficientNetV2STrunk,
    MobileViTBlock,
    MobileViTKBlock,
    PcolorMAE,
    ViTEncoder,
    count_parameters,
    encoder_state_dict,
    load_encoder,
    patchify,
    posemb_sincos_2d,
    unpatchify,
)

torch.set_num_threads(1)

TINY_VIT = ViTConfig(image_size=64, patch_size=8, dim=64, depth=2, heads=4, dim_head=16,
                     mlp_dim=128)


def tiny_mae(**kw) -> PcolorMAE:
    args = dict(vit=TINY_VIT, decoder_dim=64, decoder_depth=1, decoder_heads=4,
                decoder_dim_head=16, decoder_mlp_dim=128)
    args.update(kw)
    return PcolorMAE(**args)


def tiny_cnn(**kw) -> CellCentroidFormer:
    return CellCentroidFormer(image_size=64, width_mult=0.25, depth_mult=0.25, neck_dims=(32, 16),
                              head_filters=(16, 16, 16), **kw)


# -- ContextBlock (§5, §15 item 5) ---------------------------------------------------------
def test_context_block_shape_params_and_green_passthrough():
    torch.manual_seed(0)
    cb = ContextBlock()
    assert count_parameters(cb) == 222
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        y = cb(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, 1], x[:, 1])
    assert not torch.allclose(y[:, 0], x[:, 0])
    assert float(y[:, 0].min()) > 0 and float(y[:, 0].max()) < 1


def test_context_block_matches_its_formula():
    torch.manual_seed(1)
    cb = ContextBlock()
    x = torch.rand(1, 3, 9, 9)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # h = Conv1x1 o Conv3x3 with no nonlinearity: one linear 3x3 filter plus a bias
    w3, b3 = cb.h_r[0].weight, cb.h_r[0].bias
    w1, b1 = cb.h_r[1].weight, cb.h_r[1].bias
    eff_w = (w1[0, :, 0, 0][:, None, None] * w3[:, 0]).sum(0)[None, None]
    eff_b = (w1[0, :, 0, 0] * b3).sum() + b1[0]
    h = torch.nn.functional.conv2d(r, eff_w, padding=1) + eff_b
    expect = torch.sigmoid(h * g + g)
    torch.testing.assert_close(cb(x)[:, 0:1], expect, atol=1e-5, rtol=1e-5)
    # the b branch has its own weights
    assert not torch.equal(cb.h_b[0].weight, cb.h_r[0].weight)
    assert cb(x)[:, 2:3].shape == b.shape


def test_context_block_rejects_wrong_channels():
    with pytest.raises(InputError):
        ContextBlock()(torch.rand(1, 1, 8, 8))


# -- patches and embeddings ----------------------------------------------------------------
def test_patchify_layout_and_round_trip():
    x = torch.arange(2 * 3 * 16 * 24, dtype=torch.float32).reshape(2, 3, 16, 24)
    t = patchify(x, 8)
    assert t.shape == (2, 6, 192)
    # token k = (row k // 3, col k % 3); vector laid out as (p1, p2, c)
    k, p1, p2, c = 4, 2, 5, 1
    assert t[1, k, (p1 * 8 + p2) * 3 + c] == x[1, c, (k // 3) * 8 + p1, (k % 3) * 8 + p2]
    assert torch.equal(unpatchify(t, 8, 16, 24), x)
    with pytest.raises(InputError):
        patchify(torch.zeros(1, 3, 10, 16), 8)


def test_sincos_embedding_matches_definition():
    pe = posemb_sincos_2d(3, 5, 16)
    assert pe.shape == (15, 16)
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 3)
    y, x = 2, 3
    tok = y * 5 + x
    expect = torch.cat([torch.sin(x * omega), torch.cos(x * omega), torch.sin(y * omega),
                        torch.cos(y * omega)]).float()
    torch.testing.assert_close(pe[tok], expect)


# -- PcolorMAE (§6.2, §15 item 4) ---------------------------------------------------------
def test_vit_encoder_parameter_count_full_size():
    enc = ViTEncoder(ViTConfig())
    # ContextBlock 222 + embedding 100,224 + 6 blocks x 2,101,248 (spec: about 12.71 M)
    assert count_parameters(enc) == 222 + 12_707_712
    assert enc.num_patches == 2304
    assert "pos_embedding" not in enc.state_dict()


def test_pcolor_mae_parameter_count_full_size():
    mae = PcolorMAE()
    assert mae.num_masked() == 760
    assert isinstance(mae.enc_to_dec, torch.nn.Identity)
    # decoder: mask token 512 + positions 2304 x 512 + 3 blocks (dim 512, MLP 2048)
    # + Linear(512 -> 192)
    assert count_parameters(mae) == 23_439_134


def test_pcolor_mae_masks_and_shapes():
    torch.manual_seed(0)
    mae = tiny_mae(masking_ratio=0.33)
    x = torch.rand(3, 3, 64, 64)
    out = mae(x, torch.rand(3, 3, 64, 64))
    m = int(0.33 * 64)
    assert out.pred.shape == (3, m, 192) and out.target.shape == (3, m, 192)
    assert out.unmasked_indices.shape == (3, 64 - m)
    for i in range(3):
        both = torch.cat([out.masked_indices[i], out.unmasked_indices[i]]).sort().values
        assert torch.equal(both, torch.arange(64))
    assert not torch.equal(out.masked_indices[0].sort().values,
                           out.masked_indices[1].sort().values)
    out.loss.backward()
    assert mae.mask_token.grad is not None


def test_pcolor_mae_ratio_zero_predicts_every_patch():
    mae = tiny_mae(masking_ratio=0.0)
    out = mae(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    assert out.pred.shape == (2, 64, 192)
    assert out.unmasked_indices.shape == (2, 64)


def test_pcolor_mae_loss_ignores_visible_target_values():
    torch.manual_seed(0)
    mae = tiny_mae().eval()
    x = torch.rand(2, 3, 64, 64)
    target = torch.rand(2, 3, 64, 64)
    masked, _ = mae.sample_mask(2)
    out1 = mae(x, target, masked_indices=masked)
    vis = 1.0 - mae.pixel_mask(masked)
    target2 = target + 5.0 * vis * torch.rand_like(target)
    out2 = mae(x, target2, masked_indices=masked)
    assert torch.equal(out1.loss, out2.loss)
    target3 = target + 0.5 * (1 - vis)
    assert not torch.equal(out1.loss, mae(x, target3, masked_indices=masked).loss)


def test_pcolor_mae_target_patches_align_with_input_patches():
    """Target patch k equals cmap(input patch k) element by element (defect 2)."""

    def cmap(u):  # any per-pixel, non-monotonic colour map will do here
        return torch.stack([u, (4 * u) % 1.0, 1 - u], dim=1)

    torch.manual_seed(3)
    mae = tiny_mae()
    u = torch.rand(2, 64, 64)
    x = u[:, None].expand(2, 3, 64, 64).contiguous()
    out = mae(x, cmap(u))
    in_patches = patchify(x, 8)
    bidx = torch.arange(2)[:, None]
    sel = in_patches[bidx, out.masked_indices]  # (B, M, 192), layout (p1, p2, c)
    u_pix = sel.reshape(2, -1, 64, 3)[..., 0]
    expect = torch.stack([u_pix, (4 * u_pix) % 1.0, 1 - u_pix], dim=-1).reshape(sel.shape)
    assert torch.equal(out.target, expect)


def test_pcolor_mae_explicit_indices_and_zeroing_before_stem():
    torch.manual_seed(0)
    mae = tiny_mae(zero_masked_pixels_before_stem=True).eval()
    masked = torch.stack([torch.arange(0, 21), torch.arange(40, 61)])
    x = torch.rand(2, 3, 64, 64)
    out = mae(x, torch.rand(2, 3, 64, 64), masked_indices=masked)
    assert torch.equal(out.masked_indices, masked)
    # with zeroing, changing masked pixels cannot change the prediction (no leak, §4.2)
    x2 = x + mae.pixel_mask(masked) * 0.7
    out2 = mae(x2, torch.rand(2, 3, 64, 64), masked_indices=masked)
    torch.testing.assert_close(out.pred, out2.pred)
    leaky = tiny_mae().eval()
    a = leaky(x, None, masked_indices=masked).pred
    b = leaky(x2, None, masked_indices=masked).pred
    assert not torch.allclose(a, b)
    with pytest.raises(InputError):
        mae(x, None, masked_indices=torch.zeros(2, 3, dtype=torch.long))


def test_pcolor_mae_reassemble_keeps_visible_target():
    mae = tiny_mae()
    target = torch.rand(2, 3, 64, 64)
    out = mae(torch.rand(2, 3, 64, 64), target)
    img = mae.reassemble(out, target)
    vis = 1 - mae.pixel_mask(out.masked_indices)
    assert torch.equal(img * vis, target * vis)
    assert not torch.equal(img, target)


# -- detectors -----------------------------------------------------------------------------
def test_mobilevit_blocks_shapes():
    x = torch.rand(2, 32, 8, 8)
    assert MobileViTBlock(dim=16, channel=32, patch=4, mlp_dim=32)(x).shape == x.shape
    assert MobileViTKBlock(32, 24)(x).shape == (2, 24, 8, 8)
    with pytest.raises(InputError):
        MobileViTBlock(dim=16, channel=32, patch=3, mlp_dim=32)(x)


def test_ccfvit_full_size_parameter_count_and_derived_shapes():
    m = CCFViT()
    assert count_parameters(m) == 26_225_249
    ln = [mod for mod in m.neck.modules() if isinstance(mod, torch.nn.LayerNorm)
          and len(mod.normalized_shape) == 3]
    assert [tuple(x.normalized_shape) for x in ln] == [(256, 48, 48), (256, 96, 96)]


def test_ccfvit_tiny_forward_and_aux():
    cfg = CCFViTConfig(vit=TINY_VIT.model_copy(update={"image_size": 128}), neck_dim=32,
                       mvit_patch=4, mvit_mlp_dim=64, aux_pcolor=True, neck_dual_conv=True,
                       heads_add_3x3_convs=True, heads_add_activation=True)
    m = CCFViT(cfg)
    with torch.no_grad():
        out = m(torch.rand(1, 3, 128, 128))
    assert out["heatmap"].shape == (1, 1, 128, 128)
    assert out["sizes"].shape == (1, 2, 128, 128)
    assert out["pcolor"].shape == (1, 3, 128, 128)
    assert float(out["heatmap"].min()) >= 0 and float(out["sizes"].min()) >= 0
    with pytest.raises(InputError):
        m(torch.rand(1, 3, 64, 64))


def test_ccfvit_config_rejects_untileable_grid():
    with pytest.raises(ValueError):
        CCFViTConfig(vit=TINY_VIT, mvit_patch=3)
    with pytest.raises(ValueError):
        ViTConfig(image_size=100, patch_size=8)


def test_efficientnet_trunk_full_size_output_and_count():
    trunk = EfficientNetV2STrunk().eval()
    assert count_parameters(trunk) == 5_440_936
    with torch.no_grad():
        y = trunk(torch.rand(1, 3, 384, 384))
    assert y.shape == (1, 960, 24, 24)


def test_cell_centroid_former_full_size_count():
    assert count_parameters(CellCentroidFormer()) == 18_551_785
    assert count_parameters(CellCentroidFormer(context_block=False)) == 18_551_785 - 222


def test_cell_centroid_former_tiny_detect_and_pretext():
    x = torch.rand(2, 3, 64, 64)
    det = tiny_cnn()
    with torch.no_grad():
        out = det(x)
    assert out["heatmap"].shape == (2, 1, 64, 64) and out["sizes"].shape == (2, 2, 64, 64)
    assert float(out["heatmap"].min()) >= 0 and float(out["heatmap"].max()) <= 1
    pre = tiny_cnn(pretext=True)
    o = pre(x)
    assert set(o) == {"head_1", "head_2"} and o["head_1"].shape == (2, 3, 64, 64)
    assert pre.heatmap_head.out.out_channels == 3 and pre.heatmap_head.out.kernel_size == (3, 3)
    with pytest.raises(ValueError):
        CellCentroidFormerConfig(image_size=72)


# -- transfer ------------------------------------------------------------------------------
def test_pcolor_mae_encoder_transfers_strictly_into_ccfvit():
    torch.manual_seed(0)
    mae = tiny_mae()
    det = CCFViT(vit=TINY_VIT, neck_dim=32, mvit_patch=4, mvit_mlp_dim=64)
    state = encoder_state_dict(mae)
    report = load_encoder(det, state)
    assert report.missing == [] and report.unexpected == [] and report.shape_mismatch == []
    for k, v in det.encoder.state_dict().items():
        assert torch.equal(v, state[k])
    # full model state (keys with the encoder. prefix) works too; the decoder is skipped
    rep2 = load_encoder(det, mae.state_dict())
    assert rep2.skipped and all(not k.startswith("encoder.") for k in rep2.skipped)


def test_load_encoder_strict_refuses_mismatch():
    mae = tiny_mae()
    other = CCFViT(vit=TINY_VIT.model_copy(update={"dim": 32, "dim_head": 8}), neck_dim=32,
                   mvit_patch=4, mvit_mlp_dim=64)
    with pytest.raises(CheckpointError):
        load_encoder(other, encoder_state_dict(mae))
    report = load_encoder(other, encoder_state_dict(mae), strict=False)
    assert report.shape_mismatch
    state = encoder_state_dict(mae)
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="missing"):
        load_encoder(CCFViT(vit=TINY_VIT, neck_dim=32, mvit_patch=4, mvit_mlp_dim=64), state)


def test_cnn_pretext_transfers_all_but_final_convs():
    torch.manual_seed(0)
    pre = tiny_cnn(pretext=True)
    det = tiny_cnn()
    before = det.heatmap_head.out.weight.clone()
    report = load_encoder(det, pre.state_dict(), scope="all")
    assert sorted(report.skipped) == sorted(
        ["heatmap_head.out.weight", "heatmap_head.out.bias", "size_head.out.weight",
         "size_head.out.bias"])
    assert torch.equal(det.heatmap_head.out.weight, before)
    assert torch.equal(det.neck[0].conv1[0].weight, pre.neck[0].conv1[0].weight)
    # encoder scope moves stem + backbone only
    rep = load_encoder(tiny_cnn(), encoder_state_dict(pre))
    assert any(k.startswith("stem.") for k in rep.loaded)
    assert any(k.startswith("backbone.") for k in rep.loaded)
