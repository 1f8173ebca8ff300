"""PCMC for the µSplit encoder (spec/pcmc.md section 13; test plan 13)."""

import numpy as np
import pytest
import torch

from musplit.data.context import ContextStack
from musplit.errors import CheckpointError
from musplit.models import build
from musplit.pretrain.colormap import pcolor
from musplit.pretrain.pretext_config import PretrainConfig
from musplit.pretrain.train import pretrain
from musplit.pretrain.usplit import (
    HEAD_PREFIX,
    UsplitPretext,
    UsplitPretextData,
    encoder_keys,
    load_pretrained_encoder,
    pretext_loss,
)

LEAN = {"kind": "hvae", "lc": "lean", "filters": 8, "z_dims": [4, 4, 4], "scales": 3,
        "patch": 32, "dropout": 0.0}
REGULAR = {"kind": "hae", "lc": "regular", "filters": 8, "z_dims": [4, 4, 4], "scales": 3,
           "patch": 32, "dropout": 0.0}
UNET = {"kind": "unet", "lc": "regular", "filters": 4, "depth": 3, "scales": 2, "patch": 32}


def _cfg(usplit=LEAN, **kw):
    return PretrainConfig(model="usplit_encoder", usplit=usplit, batch_size=4, **kw)


def _frames(n=3, size=96, seed=0):
    return np.random.default_rng(seed).gamma(2.0, 50.0, (n, size, size)).astype(np.float32)


@pytest.mark.parametrize("usplit", [LEAN, REGULAR, UNET], ids=["lean", "regular", "unet"])
def test_strict_transfer_reports_exactly_the_head_keys_unused(usplit):
    cfg = _cfg(usplit)
    torch.manual_seed(0)
    module = UsplitPretext(cfg.usplit, "pcolor")
    batch = UsplitPretextData(_frames(), cfg).sample(2, np.random.default_rng(0))
    out = module(batch["x"])
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    state = module.checkpoint_state()
    net = build(cfg.usplit)
    report = load_pretrained_encoder(net, state)
    head = sorted(k for k in state if k.startswith(HEAD_PREFIX))
    assert head and report["unused"] == head
    assert report["missing"] == [] and report["loaded"] == len(encoder_keys(net))
    for k in encoder_keys(net):
        assert torch.equal(net.state_dict()[k], state[k])
    # the decoder (top-down path, head) stays at its own initialisation
    fresh = build(cfg.usplit).state_dict()
    assert set(net.state_dict()) - set(encoder_keys(net)) <= set(fresh)


def test_transfer_refuses_missing_mismatched_and_foreign_keys():
    state = UsplitPretext(_cfg().usplit, "pcolor").checkpoint_state()
    net = build(_cfg().usplit)
    key = encoder_keys(net)[0]
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained_encoder(net, {k: v for k, v in state.items() if k != key})
    wider = build(_cfg({**LEAN, "filters": 16}).usplit)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained_encoder(wider, state)
    with pytest.raises(CheckpointError, match="neither"):
        load_pretrained_encoder(net, {**state, "decoderx.weight": torch.zeros(1)})


def test_masks_are_applied_before_the_lc_pyramid():
    mask = {"kind": "padded", "patch": 6, "p": 1.0}
    # padded grid for P = 6: gap 3, stride 9, patches at [3 + 9i, 9 + 9i): the bright square
    # lies inside patch (0, 0)
    frames = np.zeros((1, 96, 96), np.float32)
    frames[0, 4:8, 4:8] = 1000.0
    frames[0, 90, 90] = 1.0
    cfg = _cfg(clip_quantile=1.0, pretext={"mask": mask})
    data = UsplitPretextData(frames, cfg)
    for seed in range(3):
        b = data.sample(6, np.random.default_rng(seed))
        assert float((b["x"] * data.std + data.mean).max()) < 1.5  # gone from every LC scale
    leak = UsplitPretextData(frames, _cfg(clip_quantile=1.0, mask_lc=False,
                                          pretext={"mask": mask}))
    seen = max(float((leak.sample(6, np.random.default_rng(s))["x"][:, 1:] * leak.std
                      + leak.mean).max()) for s in range(3))
    assert seen > 1.5  # context levels still see it when only the primary patch is masked


def test_window_stack_equals_whole_frame_stack():
    cfg = _cfg({**LEAN, "patch": 16, "scales": 4, "z_dims": [4, 4, 4, 4]})
    data = UsplitPretextData(_frames(1, 150), cfg)
    full = ContextStack(data.frames[:1], 16, 4, "reflect")
    for c in [(0, 0), (70, 60), (134, 134), (3, 120)]:
        c = np.array(c)
        np.testing.assert_array_equal(data.stack(data.frames[0], c),
                                      full.crops(np.zeros(1, np.int64), c[None])[0])


def test_targets_use_frame_level_normalisation_before_masking():
    ramp = np.tile(np.arange(96, dtype=np.float32), (96, 1))[None]  # value = column
    cfg = _cfg(clip_quantile=1.0, augmentation="none")
    b = UsplitPretextData(ramp, cfg).sample(4, np.random.default_rng(3))
    assert torch.equal(b["target"], pcolor(b["u"]))  # from the unmasked patch
    for u in b["u"]:  # frame-level min-max: a 32-px patch spans 31/95 of [0, 1]
        assert float(u.max() - u.min()) == pytest.approx(31 / 95, abs=1e-6)
        assert torch.allclose(u[:, 1:] - u[:, :-1], torch.full((32, 31), 1 / 95), atol=1e-6)
    assert b["mask"].any() and not b["mask"].all()
    per_patch = _cfg(clip_quantile=1.0, augmentation="none", pretext={"norm": {"scope": "image"}})
    u = UsplitPretextData(ramp, per_patch).sample(2, np.random.default_rng(3))["u"]
    assert float(u.min()) == 0.0 and float(u.max()) == 1.0


@pytest.mark.parametrize("objective", ["mae", "edge", "simclr"])
def test_other_objectives_run_in_the_same_harness(objective):
    cfg = _cfg(pretext={"objective": objective})
    data = UsplitPretextData(_frames(), cfg)
    module = UsplitPretext(cfg.usplit, objective)
    loss = pretext_loss(module, data.sample(4, np.random.default_rng(0)), cfg)
    assert torch.isfinite(loss)
    loss.backward()


def test_pretrain_loss_decreases_and_network_scope_transfers_all_but_the_head():
    frames = _frames(4)
    res = pretrain(_cfg(lr=2e-2, schedule="constant"), frames, steps=20, seed=0)
    assert np.mean(res.log[-5:]) < np.mean(res.log[:5])
    net = build(_cfg().usplit)
    report = load_pretrained_encoder(net, res)
    assert report["missing"] == [] and report["unused"] == res.head_keys
    res_net = pretrain(_cfg(scope="network"), frames, steps=2, seed=0)
    net2 = build(_cfg().usplit)
    rep2 = load_pretrained_encoder(net2, res_net)
    assert rep2["scope"] == "network"
    assert not any(k.startswith("head.") for k in rep2["loaded_keys"])
    assert any(k.startswith("decoder.") for k in rep2["loaded_keys"])
    with pytest.raises(CheckpointError, match="ccf_vit"):
        vit = pretrain(PretrainConfig(image_size=32, vit={"dim": 16, "depth": 1, "heads": 2,
                                                          "dim_head": 8, "mlp_dim": 16},
                                      pretext={"objective": "random"}), frames[:, :32, :32])
        load_pretrained_encoder(net, vit)
