"""``musplit train --loss denoisplit_usplit --noise-models ...`` from the command line (issue 18,
item 2): the refusals (one line, exit 2), a tiny run end to end whose checkpoint is
self-contained and predicts, and resuming (the loss cannot change; the stored noise models are
used)."""

from __future__ import annotations

import csv
import math

import numpy as np
import torch
import yaml

from musplit.checkpoints.format import load_checkpoint
from musplit.cli import main
from musplit.losses import noise_models_from_records
from musplit.noise import GaussianMixtureNoiseModel, load_noise_model, save_noise_model
from musplit.splitter import Splitter
from tests.test_training import tiny_config


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *needles):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def noise_files(tmp_path, n=2):
    """Poisson-like noise models of the critters' intensities (0 to about 50)."""
    paths = []
    for c in range(n):
        w = np.array([[0.0, 0.0], [0.0, math.log(40.0)], [0.0, 0.0]], np.float32)
        m = GaussianMixtureNoiseModel(w, 0.0, 50.0, 0.1, channel_name=f"ch{c}")
        paths.append(save_noise_model(m, tmp_path / f"nm{c}.npz"))
    return paths


def tiny_yaml(path, data=None):
    cfg = tiny_config(max_steps=4, val_every_steps=2).model_dump(mode="json")
    cfg["data"]["clip_quantile"] = 1.0
    if data is not None:
        cfg["data"].update(synthetic=None, channel_paths=[str(data)], axes="SYX")
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_noise_model_loss_without_noise_models_or_with_the_wrong_count_is_one_line(
        tmp_path, capsys):
    cfg = tiny_yaml(tmp_path / "cfg.yaml")
    nm0, nm1 = noise_files(tmp_path)
    out = tmp_path / "run"
    code, _, err = run(["train", "--config", cfg, "--loss", "denoisplit", "--out", out],
                       capsys)
    one_line_error(code, err, "train.loss 'denoisplit' needs train.noise_models",
                   "--noise-models")
    code, _, err = run(["train", "--config", cfg, "--noise-models", nm0, "--out", out], capsys)
    one_line_error(code, err, "train.loss is 'usplit'", "--loss")
    code, _, err = run(["train", "--config", cfg, "--loss", "denoisplit_usplit",
                        "--noise-models", f"{nm0},{nm1},{nm0}", "--out", out], capsys)
    one_line_error(code, err, "3 noise model(s)", "for 2 target channels")
    code, _, err = run(["train", "--config", cfg, "--loss", "denoisplit_usplit",
                        "--noise-models", f"{nm0},{tmp_path / 'missing.npz'}", "--out", out],
                       capsys)
    one_line_error(code, err, "missing.npz", "no such noise-model file")
    assert not (out / "config.yaml").exists()  # nothing was written
    # the data decide the count when the config does not (one folder of channel files)
    folder = tmp_path / "channels"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in "abc":
        np.save(folder / f"{name}.npy", rng.random((8, 64, 64), dtype=np.float32) * 40)
    code, _, err = run(["train", "--config", tiny_yaml(tmp_path / "c3.yaml", folder), "--loss",
                        "denoisplit_usplit", "--noise-models", f"{nm0},{nm1}", "--out", out],
                       capsys)
    one_line_error(code, err, "2 noise model(s)", "the 3 target channels", "c.npy")


def test_a_tiny_denoisplit_run_end_to_end_is_self_contained_and_resumes(tmp_path, capsys,
                                                                         caplog):
    cfg = tiny_yaml(tmp_path / "cfg.yaml")
    nm0, nm1 = noise_files(tmp_path)
    runs = tmp_path / "run"
    code, out, err = run(["train", "--config", cfg, "--loss", "denoisplit_usplit",
                          "--noise-models", f"{nm0},{nm1}", "--out", runs], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(runs / "logs" / "metrics.csv")))
    for key in ("train_nm_nll", "train_kl_ds", "train_distortion", "train_usplit_loss",
                "train_denoisplit_loss", "val_nm_nll"):
        assert any(r.get(key) for r in rows), key
    assert all(math.isfinite(float(r["loss"])) for r in rows if r.get("loss"))

    ckpt = load_checkpoint(runs / "best.ckpt")
    assert ckpt["config"]["train"]["loss"] == "denoisplit_usplit"
    recs = ckpt["extra"]["noise_models"]
    assert [r["file"] for r in recs] == [str(nm0), str(nm1)] and all(r["sha256"] for r in recs)
    stored = noise_models_from_records(recs, 2)
    assert torch.equal(stored.models[1].weight, load_noise_model(nm1).weight)
    assert not any(k.startswith("noise_model") for k in ckpt["state_dict"])

    s = Splitter.load(runs / "best.ckpt")
    image = np.random.default_rng(1).random((32, 32), dtype=np.float32) * 40
    pred = s.predict(image, grid=16, brightness="off")
    assert pred.mean.shape == (1, 32, 32, 2) and np.isfinite(pred.mean).all()

    # resuming cannot change the loss ...
    code, _, err = run(["train", "--out", runs, "--resume", "--loss", "denoisplit",
                        "--max-steps", "6"], capsys)
    one_line_error(code, err, "train.loss (--loss): the run has 'denoisplit_usplit', this "
                   "asks for 'denoisplit'")
    # ... and goes on with the noise models it started with, even when the files are gone
    nm0.unlink()
    nm1.unlink()
    code, _, err = run(["train", "--out", runs, "--resume", "--max-steps", "6"], capsys)
    assert code == 0, err
    assert load_checkpoint(runs / "last.ckpt")["extra"]["global_step"] == 6
    assert load_checkpoint(runs / "last.ckpt")["extra"]["noise_models"] == recs
