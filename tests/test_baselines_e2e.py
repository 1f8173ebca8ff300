"""The baselines through the one pipeline: train, checkpoint, Splitter, tiled prediction, CLI."""

import json

import numpy as np
import pytest
import yaml

from musplit.cli import main
from musplit.config import preset
from musplit.data.io import open_image
from musplit.splitter import Splitter
from musplit.training import train

MODELS = {
    "unet": {"kind": "unet", "depth": 3},
    "unet-lc": {"kind": "unet", "lc": "regular", "depth": 3, "scales": 3},
    "ca_unet": {"kind": "ca_unet", "depth": 3},
    "bravenet": {"kind": "bravenet", "depth": 3},
}


def tiny_config(model: dict, **train_kw):
    return preset(
        "cpu-small",
        name="tiny-baseline",
        data={"synthetic": {"frames": 12, "size": 64, "connector": 0}, "pad": "zeros",
              "patch": 32},
        model={"lc": None, "z_dims": None, "filters": 4, "patch": 32, **model},
        train={"max_steps": 3, "batch_size": 4, "val_every_steps": 3, **train_kw},
        predict={"grid": 16, "batch_size": 16},
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_load_and_predict_with_tiling(name, tmp_path):
    cfg = tiny_config(MODELS[name])
    best = train(cfg, tmp_path / "run", progress=False)
    s = Splitter.load(best)
    assert s.config.model.kind == MODELS[name]["kind"]
    assert s.model.stochastic is False
    # noise at the brightness of the training mixes (a dimmer image would be refused)
    image = np.random.default_rng(0).random((2, 50, 70), dtype=np.float32)
    image *= s.stats.extra["input_q999"]
    pred = s.predict(image, padding="inner", grid=16, samples=3, seed=1)
    assert pred.mean.shape == (2, 50, 70, 2) and np.isfinite(pred.mean).all()
    assert pred.aleatoric_std is None  # an MSE model predicts no variance
    assert pred.std is not None and not pred.std.any()  # one pass stands for every sample
    again = s.predict(image, padding="inner", grid=16, seed=2)
    np.testing.assert_array_equal(pred.mean, again.mean)
    outer = s.predict(image, padding="outer", grid=16)
    assert outer.mean.shape == (2, 50, 70, 2)


def test_cli_train_predict_evaluate_a_unet_and_a_bravenet(tmp_path, capsys):
    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    data = tmp_path / "data"
    assert run("generate", "critters", "--frames", "10", "--size", "64", "--out", data)[0] == 0
    stack = data / "critters.tif"
    # the default preset is a LadderVAE: --model switches to the U-Net and its defaults
    code, out, err = run("train", "--model", "unet", "--lc", "regular", "--depth", "3",
                         "--filters", "4", "--data", stack, "--channels", "0,1", "--patch",
                         "32", "--batch-size", "4", "--max-steps", "2", "--val-every", "2",
                         "--out", tmp_path / "unet")
    assert code == 0, err
    cfg = yaml.safe_load((tmp_path / "unet" / "config.yaml").read_text())
    assert cfg["model"]["kind"] == "unet" and cfg["model"]["scales"] == 3  # min(5, depth)
    assert cfg["model"]["z_dims"] is None and cfg["data"]["scales"] == 3

    # BRAVE-NET from a YAML config
    brave = {
        "name": "brave",
        "data": {"path": str(stack), "channels": [0, 1], "patch": 32, "pad": "zeros"},
        "model": {"kind": "bravenet", "filters": 4, "depth": 3, "patch": 32},
        "train": {"batch_size": 4, "max_steps": 2, "val_every_steps": 2},
        "predict": {"grid": 16},
    }
    (tmp_path / "brave.yaml").write_text(yaml.safe_dump(brave))
    code, out, err = run("train", "--config", tmp_path / "brave.yaml", "--out",
                         tmp_path / "brave")
    assert code == 0, err

    for name in ("unet", "brave"):
        best = tmp_path / name / "best.ckpt"
        code, out, err = run("info", best)
        assert code == 0 and ("unet" in out or "bravenet" in out)
        pred = tmp_path / f"{name}.tif"
        code, _, err = run("predict", best, stack, "--mix-channels", "0,1", "--out", pred)
        assert code == 0, err
        assert open_image(pred).read().shape == (10, 64, 64, 2)
        metrics = tmp_path / f"{name}.json"
        code, out, err = run("evaluate", "--pred", pred, "--target", stack, "--model", best,
                             "--out", metrics)
        assert code == 0, err
        assert json.loads(metrics.read_text())["frames"] == 10

    # a setting the baseline does not have is one clear line, status 2
    code, _, err = run("train", "--model", "bravenet", "--lc", "regular", "--data", stack,
                       "--channels", "0,1", "--out", tmp_path / "bad")
    assert code == 2 and "bravenet" in err and len(err.strip().splitlines()) == 1
