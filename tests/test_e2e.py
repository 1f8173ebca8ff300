"""End to end through the command line: generate -> train -> predict -> evaluate, and resume."""

import json

import numpy as np
import yaml

from musplit.cli import main
from musplit.data.io import open_image
from musplit.training import train
from tests.test_training import StopAt


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_yaml(path, data_file):
    cfg = {
        "name": "e2e",
        "data": {"path": str(data_file), "channels": [0, 1], "patch": 32, "pad": "zeros"},
        "model": {"kind": "hvae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "scales": 3,
                  "patch": 32, "dropout": 0.0},
        "train": {"batch_size": 4, "max_steps": 4, "val_every_steps": 2},
        "predict": {"grid": 16, "batch_size": 32},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_generate_train_predict_evaluate(tmp_path, capsys):
    data = tmp_path / "data"
    code, _, err = run(["generate", "critters", "--frames", "12", "--size", "64",
                        "--connector", "25", "--out", data], capsys)
    assert code == 0, err
    stack = data / "critters.tif"
    cfg = tiny_yaml(tmp_path / "cfg.yaml", stack)
    runs = tmp_path / "run"
    code, out, err = run(["train", "--config", cfg, "--max-steps", "4", "--out", runs], capsys)
    assert code == 0, err
    best = runs / "best.ckpt"
    assert best.is_file() and "best checkpoint" in out

    pred = tmp_path / "pred.tif"
    code, _, err = run(["predict", best, stack, "--mix-channels", "0,1", "--out", pred,
                        "--samples", "3", "--std"], capsys)
    assert code == 0, err
    p = open_image(pred)
    assert p.read().shape == (12, 64, 64, 2)
    std = open_image(tmp_path / "pred_std.tif").read()
    assert std.shape == (12, 64, 64, 2) and (std > 0).any() and np.isfinite(std).all()

    metrics = tmp_path / "metrics.json"
    code, out, err = run(["evaluate", "--pred", pred, "--target", stack, "--model", best,
                          "--out", metrics], capsys)
    assert code == 0, err
    assert "RI-PSNR" in out and "SSIM" in out
    res = json.loads(metrics.read_text())
    assert res["frames"] == 12 and res["normalised"] is True
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 1 + 12 * 2

    # the input was not touched, and an existing output is not overwritten
    before = stack.read_bytes()
    code, _, err = run(["predict", best, stack, "--mix-channels", "0,1", "--out", pred], capsys)
    assert code == 2 and "exists" in err
    code, _, err = run(["predict", best, stack, "--out", tmp_path / "x.tif"], capsys)
    assert code == 2 and "2 channels" in err
    assert stack.read_bytes() == before


def test_cli_resume_after_an_interruption(tmp_path, capsys):
    from musplit.checkpoint import load_checkpoint
    from musplit.config import Config

    data = tmp_path / "data"
    assert run(["generate", "critters", "--frames", "12", "--size", "64", "--out", data],
               capsys)[0] == 0
    cfg = Config.from_yaml(tiny_yaml(tmp_path / "cfg.yaml", data / "critters.tif"))
    runs = tmp_path / "run"
    train(cfg, runs, progress=False, callbacks=[StopAt(2)])  # "killed" after 2 of 4 steps
    assert load_checkpoint(runs / "last.ckpt")["extra"]["global_step"] == 2
    code, _, err = run(["train", "--out", runs, "--resume"], capsys)
    assert code == 0, err
    assert load_checkpoint(runs / "last.ckpt")["extra"]["global_step"] == 4


def test_user_errors_in_train_and_predict(tmp_path, capsys):
    code, _, err = run(["train", "--preset", "nope", "--critters", "n0", "--out",
                        tmp_path / "r"], capsys)
    assert code == 2 and "unknown preset" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["train", "--data", tmp_path / "missing.tif", "--max-steps", "2",
                        "--out", tmp_path / "r"], capsys)
    assert code == 2 and "missing.tif" in err
    code, _, err = run(["predict", tmp_path / "none.ckpt", tmp_path / "in.tif", "--out",
                        tmp_path / "o.tif"], capsys)
    assert code == 2 and "none.ckpt" in err


def _hae_checkpoint(path):
    """A tiny deterministic (HAE) musplit checkpoint: predictions are exact functions of the
    input, so the streamed and the in-memory paths can be compared value for value."""
    import torch

    from musplit.checkpoint import save_checkpoint
    from musplit.config import Config
    from musplit.data.normalize import NormStats
    from musplit.models import build

    cfg = Config.validated({
        "model": {"kind": "hae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "scales": 3,
                  "patch": 32, "dropout": 0.0},
        "data": {"patch": 32, "scales": 3, "pad": "reflect"},
        "predict": {"grid": 16, "batch_size": 16}})
    torch.manual_seed(0)
    model = build(cfg.model).eval()
    stats = NormStats(clip_max=50.0, input_mean=5.0, input_std=3.0, target_mean=[5.0, 5.0],
                      target_std=[3.0, 3.0], alpha=[0.5, 0.5])
    return save_checkpoint(path, state_dict=model.state_dict(),
                           config=cfg.model_dump(mode="json"), stats=stats.to_dict())


def test_predict_to_zarr_streams_and_precision_is_recorded(tmp_path, capsys, monkeypatch):
    import tifffile

    import musplit.predict as mp
    from musplit.predict import Prediction

    ckpt = _hae_checkpoint(tmp_path / "m.ckpt")
    img = np.random.default_rng(1).uniform(0, 20, (2, 70, 90)).astype(np.float32)
    src = tmp_path / "mixed.tif"
    tifffile.imwrite(src, img, photometric="minisblack", metadata={"axes": "QYX"})
    before = src.read_bytes()
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--out", tmp_path / "a.tif"],
                       capsys)
    assert code == 0, err
    calls = []
    real = mp.predict_to_zarr
    monkeypatch.setattr(mp, "predict_to_zarr", lambda *a, **k: calls.append(k) or real(*a, **k))
    code, out, err = run(["predict", ckpt, src, "--axes", "SYX", "--out", tmp_path / "a.zarr"],
                         capsys)
    assert code == 0, err
    assert len(calls) == 1 and calls[0]["amp"] == "fp32"  # the .zarr output was streamed
    mem, streamed = Prediction.load(tmp_path / "a.tif"), Prediction.load(tmp_path / "a.zarr")
    assert streamed.mean.shape == (2, 70, 90, 2)
    np.testing.assert_allclose(streamed.mean, mem.mean, rtol=1e-5, atol=1e-5)
    assert mem.meta["precision"] == streamed.meta["precision"] == "fp32"

    # bf16: recorded in the output, close to fp32 (a tiny untrained model: loose bound)
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--precision", "bf16",
                        "--out", tmp_path / "b.tif"], capsys)
    assert code == 0, err
    low = Prediction.load(tmp_path / "b.tif")
    assert low.meta["precision"] == "bf16"
    assert not np.array_equal(low.mean, mem.mean)
    assert np.abs(low.mean - mem.mean).max() < 0.05 * np.abs(mem.mean).max()

    # an existing output is refused before any prediction; the input is never touched
    calls.clear()
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--out", tmp_path / "a.zarr"],
                       capsys)
    assert code == 2 and "already exists" in err and not calls
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--precision", "fp64",
                        "--out", tmp_path / "c.zarr"], capsys)
    assert code == 2 and "fp64" in err
    assert src.read_bytes() == before


def test_a_prediction_too_large_for_memory_is_refused_before_any_work(tmp_path, capsys,
                                                                      monkeypatch):
    import tifffile

    import musplit.predict as mp
    import musplit.runtime

    ckpt = _hae_checkpoint(tmp_path / "m.ckpt")
    img = np.random.default_rng(2).uniform(0, 20, (3, 64, 80)).astype(np.float32)
    src = tmp_path / "mixed.tif"
    tifffile.imwrite(src, img, photometric="minisblack", metadata={"axes": "QYX"})
    # 3 frames of 64 x 80: input + mean + aleatoric std (2 channels each) is 5 * 61,440 B,
    # plus the context of one frame; pretend only 200 kB are left
    monkeypatch.setattr(musplit.runtime, "available_memory", lambda: 200_000)
    calls = []
    real = mp.predict_image
    monkeypatch.setattr(mp, "predict_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--out", tmp_path / "a.tif"],
                       capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "0.0 GiB are available" in err and "--out NAME.zarr" in err and not calls
    assert not (tmp_path / "a.tif").exists()
    # streaming to Zarr holds one block, so it goes ahead
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--out", tmp_path / "a.zarr"],
                       capsys)
    assert code == 0, err
    # with plenty of memory the in-memory path runs as before
    monkeypatch.setattr(musplit.runtime, "available_memory", lambda: 1 << 34)
    code, _, err = run(["predict", ckpt, src, "--axes", "SYX", "--out", tmp_path / "a.tif"],
                       capsys)
    assert code == 0 and calls, err
