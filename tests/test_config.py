import pytest

from musplit.config import PRESETS, Config, ModelConfig, preset
from musplit.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip_through_yaml(name, tmp_path):
    cfg = preset(name)
    assert cfg.data.scales == cfg.model.scales
    p = cfg.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(p) == cfg


def test_variant_defaults():
    assert ModelConfig(lc="none").scales == 1
    assert ModelConfig(lc="lean").z_dims == [128] * 4
    assert ModelConfig(lc="deep").z_dims == [128] * 8
    assert preset("cpu-small", model={"lc": "none"}).data.scales == 1


@pytest.mark.parametrize(
    "data, match",
    [
        ({"data": {"patch": 32}}, "differs from model.patch"),
        ({"data": {"scales": 3}, "model": {"lc": "lean"}}, "differs from model.scales"),
        ({"model": {"lc": "lean", "scales": 7}}, "hierarchy levels"),
        ({"model": {"patch": 72}, "data": {"patch": 72}}, "not divisible"),
        ({"data": {"channels": [0]}}, "at least two"),
        ({"data": {"channels": [0, 1, 2]}, "model": {"out_channels": 2}}, "3 target channels"),
        ({"data": {"channels": [0, 1, 2, 3, 4]}}, "2 to 4 structures"),
        ({"predict": {"grid": 31}}, "inner padding"),
        ({"predict": {"grid": 80}}, "inner padding"),
        ({"data": {"alpha": [0.2, 0.3]}}, "sum to 1"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"bogus": 1}, "bogus"),
        ({"version": 99}, "upgrade musplit"),
        ({"model": {"lc": "none", "scales": 5}}, "scales=1"),
    ],
)
def test_inconsistent_configs_are_refused_when_built(data, match):
    with pytest.raises(ConfigError, match=match):
        Config.validated(data)


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Config.from_yaml(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  lc: sideways\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: model.lc"):
        Config.from_yaml(wrong)


def test_unknown_preset_and_overrides():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
    cfg = preset("cpu-small", train={"max_steps": 7})
    assert cfg.train.max_steps == 7
    assert cfg.updated({"predict": {"samples": 3}}).predict.samples == 3
