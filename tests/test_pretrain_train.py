"""The pre-training loop (spec/pcmc.md sections 7, 12.6 and test plan 14)."""

import math

import numpy as np
import pytest
import torch

from musplit.errors import CheckpointError, InputError
from musplit.pretrain.models import CCFViT, load_encoder
from musplit.pretrain.pretext_config import PretrainConfig
from musplit.pretrain.synth import generate
from musplit.pretrain.train import load_pretrained, lr_factor, pretrain

VIT = {"dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "mlp_dim": 128}
DECODER = {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2, "decoder_dim_head": 32,
           "decoder_mlp_dim": 128}


@pytest.fixture(scope="module")
def frames():
    images, _ = generate("sim_nuclei", 6, 0, size=128)
    return images


def _vit(objective="pcolor", **kw):
    return PretrainConfig(**{"model": "ccf_vit", "image_size": 128, "vit": VIT, "batch_size": 4,
                             "pretext": {"objective": objective, **DECODER}, **kw})


def test_tiny_vit_pretrain_loss_decreases_and_transfers_to_ccfvit(frames, tmp_path):
    res = pretrain(_vit(lr=4e-3, augmentation="none"), frames, steps=20, seed=0)
    assert len(res.log) == 20 and all(math.isfinite(v) for v in res.log)
    assert np.mean(res.log[-5:]) < np.mean(res.log[:5])
    assert res.head_keys and all(k.startswith("pretext_head.") for k in res.head_keys)
    assert res.key_map and all(v in res.encoder_state for v in res.key_map.values())
    det = CCFViT(vit={"image_size": 128, "patch_size": 8, **VIT}, mvit_patch=8)
    report = load_encoder(det, res.encoder_state)
    assert not report.missing and not report.unexpected
    # checkpoint round trip, atomically written, with config, manifest hash and key map
    path = res.save(tmp_path / "pre.ckpt")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    back = load_pretrained(path)
    assert back.config == res.config and back.log == pytest.approx(res.log)
    assert back.data_manifest_sha256 == res.data_manifest_sha256 and back.key_map == res.key_map
    for k, v in res.encoder_state.items():
        assert torch.equal(back.encoder_state[k], v)
    # `musplit detect train --init pre.ckpt` reads the encoder without the pretext head
    from musplit.pretrain.detection import read_encoder_state

    init = read_encoder_state(path)
    assert set(init) == set(res.encoder_state)
    assert not load_encoder(det, init).unexpected


def test_same_seed_same_run_and_other_seed_differs(frames):
    a = pretrain(_vit(), frames[:2], steps=2, seed=3)
    b = pretrain(_vit(), frames[:2], steps=2, seed=3)
    c = pretrain(_vit(), frames[:2], steps=2, seed=4)
    assert a.log == b.log and a.log != c.log
    k = next(iter(a.encoder_state))
    assert torch.equal(a.encoder_state[k], b.encoder_state[k])


@pytest.mark.parametrize("objective", ["mae", "edge", "simclr", "masked_gray"])
def test_baseline_objectives_on_the_vit(frames, objective):
    res = pretrain(_vit(objective), frames[:2], steps=2, seed=0)
    assert len(res.log) == 2 and all(math.isfinite(v) for v in res.log)
    assert res.encoder_state


@pytest.mark.parametrize("objective", ["pcolor", "edge"])
def test_cnn_variant_transfers_all_but_the_final_convs(frames, objective):
    cfg = PretrainConfig(model="ccf_cnn", image_size=64, batch_size=2,
                         cnn={"width_mult": 0.25, "depth_mult": 0.25, "neck_dims": (16, 8),
                              "head_filters": (8, 8, 8)},
                         pretext={"objective": objective})
    res = pretrain(cfg, frames[:2, :64, :64], steps=2, seed=0)
    assert res.config.scope == "network"
    assert res.head_keys == sorted(f"pretext_head.{h}.out.{p}" for h in
                                   ("heatmap_head", "size_head") for p in ("weight", "bias"))
    assert any(k.startswith("neck.") for k in res.encoder_state)
    assert any(k.startswith("heatmap_head.body.") for k in res.encoder_state)


def test_random_objective_trains_nothing(frames):
    res = pretrain(_vit("random"), frames[:1], steps=5)
    assert res.steps == 0 and res.log == [] and res.encoder_state


def test_cosine_schedule_and_linear_batch_scaling():
    cfg = _vit(batch_size=32, lr=1e-4)
    assert cfg.effective_lr == pytest.approx(2e-4)
    assert lr_factor(0, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(50, 100, cfg) == pytest.approx((1 + 1e-6 / 2e-4) / 2)
    assert lr_factor(100, 100, cfg) == pytest.approx(1e-6 / 2e-4)
    ep = _vit(schedule="cosine_epoch")
    assert lr_factor(0, 100, ep, 10) == lr_factor(9, 100, ep, 10) > lr_factor(10, 100, ep, 10)
    warm = _vit(warmup=0.05)
    assert lr_factor(0, 100, warm) == pytest.approx(0.2)


def test_bad_inputs_are_refused(frames, tmp_path):
    with pytest.raises(InputError, match="NaN"):
        bad = frames[:1].copy()
        bad[0, 0, 0] = np.nan
        pretrain(_vit(), bad, steps=1)
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        pretrain(_vit(), np.zeros((1, 2, 8, 8, 1), np.float32), steps=1)
    with pytest.raises(InputError, match="steps"):
        pretrain(_vit(), frames[:1])
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_pretrained(tmp_path / "x.ckpt")
