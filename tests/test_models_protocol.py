"""The one model contract (musplit.models.protocol) and the re-exports of the restructure."""

import pytest
import torch
from torch import nn

import musplit.models.blocks as blocks
import musplit.models.fused as fused
from musplit.config import ModelConfig
from musplit.models import build
from musplit.models.protocol import (
    aux_of,
    can_encode,
    can_sample_many,
    declares_stochastic,
    encoder_of,
    is_deterministic,
    is_stochastic,
    params_of,
    predicts_variance,
)


def _ladder(kind):
    return build(ModelConfig(kind=kind, lc="lean", filters=8, z_dims=[4, 4, 4, 4], scales=3,
                             dropout=0.0))


def test_ladder_vae_capabilities():
    hvae, hae = _ladder("hvae"), _ladder("hae")
    assert hvae.is_stochastic is True and hvae.stochastic is True
    assert hae.is_stochastic is False and hae.stochastic is False
    for m in (hvae, hae):
        assert can_encode(m) and can_sample_many(m) and declares_stochastic(m)
        assert encoder_of(m) == m.encode
        assert predicts_variance(m)
    assert is_stochastic(hvae) and not is_stochastic(hae)
    assert not is_deterministic(hvae, "sample") and is_deterministic(hvae, "mean")
    assert is_deterministic(hae)
    # the submodule named `stochastic` of each decoder level is untouched (state-dict keys)
    assert isinstance(hvae.decoder.levels[0].stochastic, blocks.StochasticLayer)
    assert any(k.startswith("decoder.levels.0.stochastic.") for k in hvae.state_dict())


@pytest.mark.parametrize("kind", ["unet", "bravenet"])
def test_baselines_are_deterministic_and_predict_no_variance(kind):
    cfg = {"unet": dict(kind="unet", lc="none", filters=8, scales=1),
           "bravenet": dict(kind="bravenet", lc="none", filters=8, scales=2)}[kind]
    m = build(ModelConfig(**cfg))
    assert m.is_stochastic is False and not is_stochastic(m) and is_deterministic(m)
    assert not can_sample_many(m) and encoder_of(m) is None
    assert not predicts_variance(m)


def test_undeclared_and_ambiguous_models():
    plain = nn.Conv2d(1, 2, 1)
    assert is_stochastic(plain) and not declares_stochastic(plain)
    assert not is_deterministic(plain, "mean")

    class WithSubmodule(nn.Module):  # a submodule named `stochastic` is no declaration
        def __init__(self):
            super().__init__()
            self.stochastic = nn.Identity()

    m = WithSubmodule()
    assert is_stochastic(m) and not declares_stochastic(m) and not is_deterministic(m, "mean")


def test_outputs():
    t = torch.zeros(1, 4, 2, 2)
    m = _ladder("hae").eval()
    out = m(torch.zeros(1, 3, 64, 64))
    assert params_of(out) is out.params and params_of(t) is t and params_of([t]) is t
    assert aux_of(out) == () and aux_of(t) == ()
    with pytest.raises(TypeError):
        params_of("nonsense")


def test_chunk_size_set_on_blocks_reaches_the_fused_functions(monkeypatch):
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 7)
    assert fused.CHUNK_ELEMENTS == 7 and blocks.CHUNK_ELEMENTS == 7
    assert len(fused._batch_slices(4, 7)) == 4
    monkeypatch.undo()
    assert fused.CHUNK_ELEMENTS == 1 << 20


def test_old_import_paths_give_the_same_objects():
    import musplit.checkpoint as old_ckpt
    import musplit.checkpoints as ckpts
    import musplit.checkpoints.reference as reference
    import musplit.checkpoints.transfer as transfer
    import musplit.models.official as official
    import musplit.pretrain.usplit as usplit

    for name in ("save_checkpoint", "load_checkpoint", "FORMAT_VERSION", "weights_sha256",
                 "file_sha256", "atomic_torch_save"):
        assert getattr(old_ckpt, name) is getattr(ckpts, name)
    for name in official.__all__:
        assert getattr(official, name) is getattr(reference, name)
    for name in ("HEAD_PREFIX", "encoder_keys", "load_pretrained_encoder", "write_report"):
        assert getattr(usplit, name) is getattr(transfer, name)
    for name in ("GaussianLatent", "_GateFn", "_BNELUConvFn", "bn_elu_conv", "conv2d",
                 "stable_variance"):
        assert getattr(blocks, name) is getattr(fused, name)
