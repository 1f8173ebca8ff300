"""The configuration package: one strict base, every preset in one module, old paths kept."""

from __future__ import annotations

import subprocess
import sys

import pydantic

import musplit.config as config
from musplit.config import base, model, presets, pretext, pretrain, run, synth


def test_old_names_are_the_new_objects():
    import musplit.models.config as old_model
    import musplit.pretrain.config as old_pretrain
    import musplit.pretrain.pretext_config as old_pretext

    assert config.PRESETS is presets.RUN_PRESETS
    assert config.ModelConfig is model.ModelConfig is old_model.ModelConfig
    assert old_model.LADDER_KINDS == ("hvae", "hae")
    for name in old_pretrain.__all__:
        assert hasattr(old_pretrain, name), name
    for name in old_pretext.__all__:
        assert getattr(old_pretext, name) is getattr(pretext, name)
    assert old_pretrain.DetectionConfig is pretrain.DetectionConfig
    assert old_pretrain.SynthPresetConfig is synth.SynthPresetConfig
    assert config.Config is run.Config and config.read_yaml_mapping is base.read_yaml_mapping


def test_pretrain_presets_are_the_simulators():
    from musplit.pretrain import synth as simulator

    assert list(presets.PRETRAIN_PRESETS) == list(simulator.PRESETS)
    for name, cfg in presets.PRETRAIN_PRESETS.items():
        assert cfg == simulator.PRESETS[name], name


def test_demo_presets_live_in_config():
    from musplit import demo, demo_real

    assert demo.demo_config is presets.demo_preset and demo.PAIRING == presets.DEMO_PAIRING
    cfg = demo.demo_config("none", frames=10, size=64, steps=8, seed=1)
    assert cfg.name == "demo-none" and cfg.data.synthetic.pairing == "shared-low"
    assert cfg.train.val_every_steps == 1 and cfg.model.scales == cfg.data.scales == 1
    real = demo_real.real_config("x.tif", (0, 3), "lean", steps=16, split="s.json")
    assert real.data.input_is_sum and real.data.channels == [0, 3] and real.model.z_dims == [16] * 4


def test_every_config_derives_from_the_one_strict_base():
    mods = (model, run, synth, pretrain, pretext)
    classes = [v for m in mods for v in vars(m).values()
               if isinstance(v, type) and issubclass(v, pydantic.BaseModel)
               and v.__module__ == m.__name__]
    assert len(classes) >= 20
    for cls in classes:
        assert issubclass(cls, base.Strict), cls


def test_config_field_order_is_unchanged():
    # YAML and checkpoints list the fields in this order.
    assert list(pretrain.PcolorMAEConfig.model_fields)[:3] == ["version", "vit", "decoder_dim"]
    assert list(pretrain.CCFViTConfig.model_fields)[:3] == ["version", "vit", "neck_dim"]
    assert list(pretext.PretextConfig.model_fields)[:2] == ["version", "objective"]


def test_the_config_package_imports_no_torch():
    code = ("import sys, musplit.config, musplit.config.pretext; "
            "print(sorted(m for m in ('torch', 'lightning', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
