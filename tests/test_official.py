"""Import of reference µSplit checkpoints: key map, variant inference, strictness (spec 12)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from musplit.checkpoint import load_checkpoint
from musplit.config import ModelConfig
from musplit.data.normalize import NormStats
from musplit.errors import CheckpointError
from musplit.models import build
from musplit.models.official import (
    import_official,
    infer_model_config,
    load_reference_checkpoint,
    musplit_to_reference,
    read_reference_config,
    reference_to_musplit,
)
from musplit.splitter import Splitter

STATS = NormStats(clip_max=1000.0, input_mean=10.0, input_std=3.0, target_mean=[9.0, 11.0],
                  target_std=[2.0, 4.0], alpha=[0.5, 0.5])


# -- the reference layout, written out from spec 12.2 --------------------------------------
def _res(prefix: str, gated: bool) -> set[str]:
    keys = set()
    for bn in ("block.0", "block.4"):
        keys |= {f"{prefix}.{bn}.{n}" for n in
                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for conv in ("block.2", "block.6"):
        keys |= {f"{prefix}.{conv}.weight", f"{prefix}.{conv}.bias"}
    if gated:
        keys |= {f"{prefix}.block.8.conv.weight", f"{prefix}.block.8.conv.bias"}
    return keys


def _wb(prefix: str) -> set[str]:
    return {f"{prefix}.weight", f"{prefix}.bias"}


def spec_reference_keys(levels: int, scales: int) -> set[str]:
    """Every key of a paper-setting reference checkpoint, from the table of spec 12.2."""
    keys = _wb("first_bottom_up.0") | _res("first_bottom_up.2.res", gated=False)
    for k in range(scales - 1):
        keys |= _wb(f"lowres_first_bottom_ups.{k}.0")
        keys |= _res(f"lowres_first_bottom_ups.{k}.2.res", gated=False)
    for i in range(levels):
        bu = f"bottom_up_layers.{i}"
        keys |= _wb(f"{bu}.net_downsized.0.pre_conv") | _res(f"{bu}.net_downsized.0.res", True)
        if scales > 1:  # at every level once LC is on (the unused-merge quirk)
            keys |= _wb(f"{bu}.lowres_merge.layer.0") | _res(f"{bu}.lowres_merge.layer.1", True)
        td = f"top_down_layers.{i}"
        keys |= _wb(f"{td}.deterministic_block.0.pre_conv")
        keys |= _res(f"{td}.deterministic_block.0.res", True)
        keys |= _wb(f"{td}.stochastic.conv_in_q") | _wb(f"{td}.stochastic.conv_out")
        if i == levels - 1:
            keys.add(f"{td}.top_prior_params")
        else:
            keys |= _wb(f"{td}.stochastic.conv_in_p")
            keys |= _wb(f"{td}.merge.layer.0") | _res(f"{td}.merge.layer.1", True)
            keys |= _wb(f"{td}.skip_connection_merger.layer.0")
            keys |= _res(f"{td}.skip_connection_merger.layer.1", True)
    keys |= _res("final_top_down.0.res", True) | _wb("likelihood.parameter_net")
    return keys


@pytest.mark.parametrize("lc,levels,scales", [("none", 4, 1), ("lean", 4, 5),
                                              ("regular", 4, 5), ("deep", 8, 5)])
def test_paper_models_map_onto_the_reference_layout(lc, levels, scales):
    sd = build(ModelConfig(lc=lc)).state_dict()
    ref = musplit_to_reference(sd)
    assert set(ref) == spec_reference_keys(levels, scales)
    # Shapes named in spec 12.2.
    assert ref["first_bottom_up.0.weight"].shape == (64, 1, 3, 3)
    assert ref["top_down_layers.0.deterministic_block.0.pre_conv.weight"].shape == (64, 64, 3, 3)
    assert ref["top_down_layers.0.stochastic.conv_in_q.weight"].shape == (256, 64, 3, 3)
    assert ref["top_down_layers.0.stochastic.conv_out.weight"].shape == (64, 128, 3, 3)
    assert ref["bottom_up_layers.0.net_downsized.0.res.block.8.conv.weight"].shape == (
        128, 64, 1, 1)
    assert ref["likelihood.parameter_net.weight"].shape == (4, 64, 3, 3)
    if scales > 1:
        assert ref["lowres_first_bottom_ups.0.0.weight"].shape == (64, 1, 5, 5)
        assert ref["bottom_up_layers.0.lowres_merge.layer.0.weight"].shape == (64, 128, 1, 1)
    # The map is a pure renaming: same tensors, both ways.
    back = reference_to_musplit(ref)
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)
    assert list(musplit_to_reference(back)) == list(ref)


@pytest.mark.parametrize("lc,patch", [("none", 64), ("lean", 64), ("regular", 64),
                                      ("deep", 64)])
def test_variant_inference_on_paper_models(lc, patch):
    cfg = ModelConfig(lc=lc)
    ref = musplit_to_reference(build(cfg).state_dict())
    inferred = infer_model_config(ref, kind="hae", patch=patch)
    assert inferred.lc == lc and inferred.kind == "hae"
    assert inferred.z_dims == cfg.z_dims and inferred.scales == cfg.scales
    assert inferred.filters == 64 and inferred.out_channels == 2
    assert inferred.latent_scaling == "reference" and inferred.parity_unused_modules


def test_variant_inference_refuses_a_patch_the_prior_does_not_fit():
    ref = musplit_to_reference(build(ModelConfig(lc="lean")).state_dict())
    with pytest.raises(CheckpointError, match=r"fits patch 64 \(Vanilla/Lean-LC\) or 4"):
        infer_model_config(ref, kind="hvae", patch=128)


def test_deep_without_unused_merges_is_inferred():
    ref = musplit_to_reference(build(ModelConfig(lc="deep", parity_unused_modules=False))
                               .state_dict())
    assert not infer_model_config(ref, kind="hvae").parity_unused_modules


def test_layout_without_batchnorm_round_trips():
    cfg = ModelConfig(lc="lean", filters=8, z_dims=[4] * 4, batchnorm=False, gated=False)
    sd = build(cfg).state_dict()
    ref = musplit_to_reference(sd)
    assert "first_bottom_up.2.res.block.1.weight" in ref  # conv1 right after the ELU
    assert not any("running_mean" in k for k in ref)
    assert list(reference_to_musplit(ref)) == list(sd)
    inferred = infer_model_config(ref, kind="hvae")
    assert not inferred.batchnorm and not inferred.gated


def test_unknown_keys_are_named():
    ref = musplit_to_reference(build(ModelConfig(lc="none")).state_dict())
    ref["bottom_up_layers.0.extra_thing.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="bottom_up_layers.0.extra_thing.weight"):
        reference_to_musplit(ref)
    with pytest.raises(CheckpointError, match="foo.bar"):
        musplit_to_reference({"foo.bar": torch.zeros(1)})


# -- end-to-end conversion -----------------------------------------------------------------
def _tiny(lc: str, kind: str = "hvae", **kw) -> ModelConfig:
    levels = kw.pop("levels", 5 if lc == "deep" else 3)
    scales = kw.pop("scales", 1 if lc == "none" else 3)
    return ModelConfig(kind=kind, lc=lc, filters=8, z_dims=[4] * levels, scales=scales,
                       patch=32, **kw)


def _trained_like(cfg: ModelConfig) -> torch.nn.Module:
    """A model whose weights and BN statistics are all non-trivial."""
    model = build(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def _write_reference(model: torch.nn.Module, path, **extra) -> None:
    payload = {"state_dict": musplit_to_reference(model.state_dict()), "epoch": 3,
               "global_step": 10, "pytorch-lightning_version": "2.0.0",
               "optimizer_states": [{"state": {}, "param_groups": []}], **extra}
    torch.save(payload, path)


@pytest.mark.parametrize("lc,kind", [("none", "hvae"), ("lean", "hvae"), ("regular", "hae"),
                                     ("deep", "hvae")])
def test_import_then_splitter_gives_the_same_outputs(tmp_path, lc, kind):
    cfg = _tiny(lc, kind, blocks_per_level=2 if lc == "lean" else 1)
    model = _trained_like(cfg)
    _write_reference(model, tmp_path / "run_best.ckpt")
    out = import_official(tmp_path / "run_best.ckpt", tmp_path / "model.ckpt", kind=kind,
                          stats=STATS, patch=32)
    splitter = Splitter.load(out)
    assert splitter.config.model.lc == lc and splitter.config.model.kind == kind
    assert splitter.config.data.lc_alignment == "floor"
    assert splitter.config.model.latent_scaling == "reference"
    assert splitter.stats.target_std == [2.0, 4.0]

    x = torch.randn(2, cfg.scales, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model(x, sample_mode="mean").params
        b = splitter.model(x, sample_mode="mean").params
        s1 = model(x, noise=torch.Generator().manual_seed(9)).params
        s2 = splitter.model(x, noise=torch.Generator().manual_seed(9)).params
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(s1, s2, atol=1e-5)
    if kind == "hvae":
        assert not torch.allclose(a, s1, atol=1e-3)  # the sampled pass really sampled

    payload = load_checkpoint(out)
    source = payload["extra"]["source"]
    assert source["epoch"] == 3 and source["global_step"] == 10
    assert source["lightning_version"] == "2.0.0"
    assert source["parameters"] == sum(p.numel() for p in model.parameters())
    assert len(source["sha256"]) == 64


def test_paper_size_import_checks_the_parameter_count(tmp_path):
    model = build(ModelConfig(lc="regular"))
    _write_reference(model, tmp_path / "ref.ckpt")
    out = import_official(tmp_path / "ref.ckpt", tmp_path / "m.ckpt", kind="hvae")
    assert load_checkpoint(out)["extra"]["source"]["parameters"] == 4_702_084


def test_import_refuses_mismatched_weights(tmp_path):
    model = build(_tiny("lean"))
    ref = musplit_to_reference(model.state_dict())

    bad_shape = dict(ref)
    bad_shape["top_down_layers.1.stochastic.conv_in_p.bias"] = torch.zeros(6)
    torch.save({"state_dict": bad_shape}, tmp_path / "shape.ckpt")
    with pytest.raises(CheckpointError,
                       match=r"shape mismatch top_down_layers.1.stochastic.conv_in_p.bias"):
        import_official(tmp_path / "shape.ckpt", tmp_path / "o1.ckpt", kind="hvae", patch=32)

    missing = dict(ref)
    del missing["top_down_layers.0.merge.layer.1.block.6.weight"]
    torch.save({"state_dict": missing}, tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError,
                       match=r"missing top_down_layers.0.merge.layer.1.block.6.weight"):
        import_official(tmp_path / "missing.ckpt", tmp_path / "o2.ckpt", kind="hvae", patch=32)

    extra = dict(ref)
    extra["likelihood.other_net.weight"] = torch.zeros(3)
    torch.save({"state_dict": extra}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match="likelihood.other_net.weight"):
        import_official(tmp_path / "extra.ckpt", tmp_path / "o3.ckpt", kind="hvae", patch=32)
    assert not any((tmp_path / f"o{i}.ckpt").exists() for i in (1, 2, 3))


def test_import_needs_a_kind_and_protects_outputs(tmp_path):
    _write_reference(build(_tiny("none")), tmp_path / "ref.ckpt")
    with pytest.raises(CheckpointError, match="hvae or hae"):
        import_official(tmp_path / "ref.ckpt", tmp_path / "m.ckpt", patch=32)
    out = import_official(tmp_path / "ref.ckpt", tmp_path / "m.ckpt", kind="hae", patch=32)
    with pytest.raises(CheckpointError, match="exists"):
        import_official(tmp_path / "ref.ckpt", out, kind="hae", patch=32)
    assert Splitter.load(out).stats is None
    import_official(tmp_path / "ref.ckpt", out, kind="hvae", patch=32, overwrite=True,
                    stats=STATS.to_dict())
    assert Splitter.load(out).config.model.kind == "hvae"
    assert Splitter.load(out).stats.input_std == 3.0
    three = NormStats(clip_max=1.0, input_mean=0.0, input_std=1.0, target_mean=[0.0] * 3,
                      target_std=[1.0] * 3, alpha=[1 / 3] * 3)
    with pytest.raises(CheckpointError, match="3 channels"):
        import_official(tmp_path / "ref.ckpt", out, kind="hvae", patch=32, overwrite=True,
                        stats=three)


# -- config.pkl and checkpoints with foreign classes, read without running code -------------
class FakeConfigDict:
    """Stands in for ml_collections.ConfigDict in a pickled reference config."""

    def __init__(self, fields):
        self._fields = fields


class Payload:
    """Runs a shell command when unpickled by a normal unpickler."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class CallbackState:
    """A class weights-only loading does not know."""

    def __init__(self):
        self.best = 0.5


def _config_pkl(path, non_stochastic: bool, image_size: int, evil_target=None) -> None:
    model = {"non_stochastic_version": non_stochastic, "z_dims": [4, 4, 4]}
    if evil_target is not None:
        model["evil"] = Payload(evil_target)
    cfg = FakeConfigDict({"data": FakeConfigDict({"image_size": image_size}),
                          "model": FakeConfigDict(model)})
    path.write_bytes(pickle.dumps(cfg))


def test_config_pkl_gives_kind_and_patch_without_running_code(tmp_path):
    evil = tmp_path / "pwned"
    _config_pkl(tmp_path / "config.pkl", True, 32, evil_target=evil)
    assert read_reference_config(tmp_path / "config.pkl") == {
        "non_stochastic_version": True, "image_size": 32}
    assert not evil.exists()

    _write_reference(build(_tiny("lean")), tmp_path / "ref.ckpt")
    out = import_official(tmp_path / "ref.ckpt", tmp_path / "m.ckpt")  # kind, patch from pkl
    cfg = Splitter.load(out).config
    assert cfg.model.kind == "hae" and cfg.model.patch == 32
    assert not evil.exists()
    with pytest.raises(CheckpointError, match="contradicts"):
        import_official(tmp_path / "ref.ckpt", tmp_path / "m2.ckpt", kind="hvae")


def test_unreadable_config_pkl_is_ignored(tmp_path):
    (tmp_path / "config.pkl").write_bytes(b"not a pickle")
    assert read_reference_config(tmp_path / "config.pkl") == {}


def test_foreign_classes_need_consent_and_become_stubs(tmp_path):
    _write_reference(build(_tiny("none")), tmp_path / "ref.ckpt",
                     callbacks={"ModelCheckpoint": CallbackState()})
    with pytest.raises(CheckpointError, match="weights-only loading refuses .*CallbackState"):
        load_reference_checkpoint(tmp_path / "ref.ckpt")
    sd, meta = load_reference_checkpoint(tmp_path / "ref.ckpt", stub_unknown_classes=True)
    assert meta["epoch"] == 3 and "first_bottom_up.0.weight" in sd
    out = import_official(tmp_path / "ref.ckpt", tmp_path / "m.ckpt", kind="hvae", patch=32,
                          stub_unknown_classes=True)
    assert Splitter.load(out).config.model.lc == "none"


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_reference_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"epoch": 1}, tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_reference_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_reference_checkpoint(tmp_path / "nope.ckpt")
