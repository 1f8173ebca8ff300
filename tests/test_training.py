"""End-to-end training on tiny critters: run folder, checkpoints, resume, loading."""

import csv

import lightning as L
import pytest
import torch

from musplit.checkpoint import load_checkpoint
from musplit.config import preset
from musplit.errors import MusplitError
from musplit.splitter import Splitter
from musplit.training import train


def tiny_config(**train_kw):
    return preset(
        "cpu-small",
        name="tiny",
        data={"synthetic": {"frames": 20, "size": 64, "connector": 0}, "pad": "zeros",
              "patch": 32},
        model={"lc": "lean", "filters": 8, "z_dims": [4, 4], "patch": 32, "scales": 3,
               "dropout": 0.0},
        train={"max_steps": 6, "batch_size": 4, "val_every_steps": 3, **train_kw},
    )


class StopAt(L.Callback):
    """Simulates an interruption after ``step`` optimiser steps."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_train_writes_a_complete_run_folder(tmp_path):
    run = tmp_path / "run"
    best = train(tiny_config(), run, progress=False)
    assert best == run / "best.ckpt"
    for name in ("config.yaml", "split.json", "best.ckpt", "last.ckpt", "resume.ckpt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    assert any(r.get("val_psnr") for r in rows) and any(r.get("loss") for r in rows)
    payload = load_checkpoint(run / "last.ckpt")
    assert payload["extra"]["global_step"] == 6
    assert payload["stats"]["target_std"][0] > 0
    assert payload["config"]["model"]["lc"] == "lean"
    s = Splitter.load(best)
    assert s.config.train.max_steps == 6 and s.stats.n_channels == 2
    x = torch.zeros(1, 3, 32, 32)
    assert s.model(x)[0].shape == (1, 4, 32, 32)
    # not silently overwritten
    with pytest.raises(MusplitError, match="already holds"):
        train(tiny_config(), run, progress=False)


def test_resume_continues_to_the_same_total_steps(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(), run, progress=False, callbacks=[StopAt(3)])
    assert load_checkpoint(run / "last.ckpt")["extra"]["global_step"] == 3
    train(tiny_config(), run, progress=False, resume=True)
    assert load_checkpoint(run / "last.ckpt")["extra"]["global_step"] == 6
    with pytest.raises(MusplitError, match="nothing to resume"):
        train(tiny_config(), tmp_path / "other", resume=True, progress=False)


def test_non_finite_loss_skips_the_step(tmp_path, monkeypatch):
    import musplit.training as tr

    calls = {"n": 0}
    real = tr.split_elbo

    def sometimes_nan(*a, **k):
        loss, logs = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(tr, "split_elbo", sometimes_nan)
    run = tmp_path / "run"
    train(tiny_config(), run, progress=False)
    payload = load_checkpoint(run / "last.ckpt")
    assert payload["extra"]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values()
               if v.is_floating_point())


def test_a_run_that_keeps_producing_nan_stops_with_a_message(tmp_path, monkeypatch):
    import musplit.training as tr

    real = tr.split_elbo

    def always_nan(*a, **k):
        loss, logs = real(*a, **k)
        return loss * float("nan"), logs

    monkeypatch.setattr(tr, "split_elbo", always_nan)
    orig_init = tr.SplitModule.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        self.max_consecutive_nonfinite = 3

    monkeypatch.setattr(tr.SplitModule, "__init__", init)
    with pytest.raises(tr.TrainingDiverged, match="3 consecutive steps"):
        train(tiny_config(max_steps=10), tmp_path / "run", progress=False)
