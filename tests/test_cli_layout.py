"""The command line's layout: where its pieces live, the names kept at old paths, the rules
moved out of the commands (musplit.config_flags, musplit.runtime, musplit.doubledip)."""

import subprocess
import sys

import numpy as np

from musplit.cli.import_official import import_official_cmd
from musplit.cli.train import train
from musplit.config_flags import (
    DEEP_LC_WIDENED_PRESETS,
    deep_lc_latents,
    switch_kind,
    train_overrides,
)
from musplit.models.config import LADDER_KINDS


def _choices(command, name):
    return tuple(next(p for p in command.params if p.name == name).type.choices)


def test_spelled_out_ladder_kinds_agree_with_the_model_config():
    assert _choices(train, "kind")[: len(LADDER_KINDS)] == LADDER_KINDS
    assert _choices(import_official_cmd, "kind") == LADDER_KINDS


def test_the_kinds_are_defined_once():
    from typing import get_args

    import musplit.config.model as config_model
    from musplit.kinds import BASELINE_KINDS, KINDS

    assert set(get_args(config_model.Kind)) == set(KINDS) and len(KINDS) == 5
    assert config_model.LADDER_KINDS is LADDER_KINDS
    assert config_model.BASELINE_KINDS is BASELINE_KINDS
    assert _choices(train, "kind") == KINDS


def test_the_cli_and_its_help_load_no_torch():
    code = ("import sys, musplit.cli; "
            "print(sorted(m for m in ('torch', 'lightning', 'scipy', 'tifffile', 'zarr') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_old_paths_still_import():
    import musplit.cli
    import musplit.figures
    import musplit.report
    from musplit.cli.app import _exit, cli, main
    from musplit.pretrain.cli_detect import detect, read_pairs, synth
    from musplit.pretrain.cli_pretrain import CHECKPOINT, pretrain

    assert musplit.cli.main is main and musplit.cli.cli is cli and musplit.cli._exit is _exit
    assert {"detect", "synth", "pretrain"} <= set(cli.commands)
    assert cli.commands["detect"] is detect and cli.commands["synth"] is synth
    assert cli.commands["pretrain"] is pretrain and CHECKPOINT == "pretrained.ckpt"
    assert callable(read_pairs)
    assert musplit.report.save_figure is musplit.figures.save_figure


def test_every_command_is_attached():
    from musplit.cli import cli

    assert set(cli.commands) == {"generate", "info", "train", "predict", "evaluate",
                                 "double-dip", "import-official", "demo", "detect", "synth",
                                 "pretrain", "noise-model", "calibrate", "export-bmz"}


def test_deep_lc_on_a_small_preset_gets_eight_levels_of_its_width():
    from musplit.config import PRESETS

    for name in DEEP_LC_WIDENED_PRESETS:
        width = PRESETS[name]["model"]["z_dims"][0]
        assert deep_lc_latents("deep", name) == [width] * 8
        assert train_overrides(lc="deep", preset_name=name)["model"]["z_dims"] == [width] * 8
    assert deep_lc_latents("lean", "cpu-small") is None
    assert deep_lc_latents("deep", None) is None  # only a preset given by name
    assert deep_lc_latents("deep", "paper-pavia") is None


def test_train_overrides_are_a_pure_mapping_of_the_flags():
    over = train_overrides(data_path="a.tif, b.tif", critters=None, channels=[2, 3], patch=32,
                           kind="unet", max_steps=5, val_every=2)
    assert over == {"data": {"path": ["a.tif", "b.tif"], "channels": [2, 3], "patch": 32},
                    "model": {"patch": 32, "kind": "unet"},
                    "train": {"max_steps": 5, "val_every_steps": 2}}
    assert train_overrides() == {"data": {}, "model": {}, "train": {}}
    switch_kind(over, "hvae")
    assert over["model"]["lc"] is None and over["data"]["scales"] is None
    same = train_overrides(kind="hae")
    switch_kind(same, "hvae")
    assert same == {"data": {}, "model": {"kind": "hae"}, "train": {}}


def test_in_memory_prediction_estimate():
    from musplit.runtime import in_memory_prediction_bytes

    need = in_memory_prediction_bytes(3, 64, 80, n_read=1, n_channels=2, with_samples=False,
                                      scales=5)
    assert need == 4 * 3 * 64 * 80 * (1 + 1 + 4) + 4 * 64 * 80 * 8
    more = in_memory_prediction_bytes(3, 64, 80, n_read=1, n_channels=2, with_samples=True,
                                      scales=5)
    assert more - need == 4 * 3 * 64 * 80 * 2


def test_split_crops_orders_layers_like_the_targets():
    from musplit.doubledip import match_layers, split_crops

    rng = np.random.default_rng(0)
    targets = rng.random((2, 96, 96, 2)).astype(np.float32)
    frames = targets.mean(axis=-1)
    corners = np.array([[0, 0, 0], [1, 0, 0]])
    found = split_crops(frames, corners, 96, targets=targets, iterations=1, device="cpu")
    assert found.layers.shape == (2, 96, 96, 2) and len(found.perms) == 2
    np.testing.assert_array_equal(found.targets, targets)
    for i, r in enumerate(found.results):
        ordered, perm = match_layers(targets[i], r.layers)
        np.testing.assert_array_equal(found.layers[i], ordered)
        assert perm == found.perms[i]
    plain = split_crops(frames, corners, 96, iterations=1, device="cpu")
    assert plain.targets is None and plain.perms is None
    np.testing.assert_array_equal(plain.layers, np.stack([r.layers for r in plain.results]))
