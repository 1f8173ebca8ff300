"""Data-parallel training on two CPU processes (gloo), as on several GPUs (docs/training.md,
"Several GPUs or a SLURM cluster").

Two runs of two processes each, started the two ways a data-parallel run starts:

- ``musplit train --devices 2 --strategy ddp`` (Lightning's launcher starts the second
  process), killed mid-epoch, then resumed with both processes started at once, as srun or
  torchrun start them;
- this file run as a script in two processes started at once: ``musplit.train`` with a probe
  callback that records the first batch and gradient of each process, the parameters after
  every step and the first validation.

The probe model is the deterministic autoencoder (``hae``) without BatchNorm: a batch of
``B/2`` in each of two processes has the gradient of one batch of ``B`` only when nothing in
the model depends on the batch (BatchNorm statistics do; DDP keeps them per process) and
nothing is sampled (the HVAE draws latents from each process's own stream).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from musplit.cli import main
from musplit.config import Config, preset
from musplit.data.dataset import make_loader
from musplit.training import SplitModule, make_datasets, prepare_data

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
TIMEOUT = 300  # seconds; a hung collective fails the test instead of blocking the suite


def probe_config() -> Config:
    # 30 frames -> 3 validation frames of 9 patches: 27, an odd grid, so that one process
    # validates a padding entry that must count nothing.
    return preset(
        "cpu-small", name="ddp-probe",
        data={"synthetic": {"frames": 30, "size": 48, "connector": 0}, "pad": "zeros",
              "patch": 16},
        model={"kind": "hae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "patch": 16,
               "scales": 2, "dropout": 0.0, "batchnorm": False},
        train={"max_steps": 4, "batch_size": 4, "val_every_steps": 2, "seed": 3},
        predict={"grid": 16},
    )


#: The step whose loss is NaN in rank 1 only (a skipped step everywhere).
NAN_STEP = 2


class Probe(L.Callback):
    """Records, per process: the first batch and the (averaged) first gradient; after every
    step the largest difference of any parameter between the processes and the sum of the
    parameters; the skipped steps; and, in rank 0, the weights and ``val_psnr`` of the first
    validation."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.diffs: list[float] = []
        self.sums: list[float] = []

    def on_train_start(self, trainer, module):
        if trainer.is_global_zero:
            torch.save({k: v.clone() for k, v in module.model.state_dict().items()},
                       self.out / "init.pt")

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 0:
            torch.save([t.clone() for t in batch], self.out / f"batch{trainer.global_rank}.pt")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            grads = {n: p.grad.clone() for n, p in module.model.named_parameters()
                     if p.grad is not None}
            torch.save(grads, self.out / f"grads{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        flat = torch.cat([p.detach().reshape(-1) for p in module.model.parameters()])
        hi = trainer.strategy.reduce(flat.clone(), reduce_op="max")
        lo = trainer.strategy.reduce(flat.clone(), reduce_op="min")
        self.diffs.append(float((hi - lo).max()))
        self.sums.append(float(flat.double().sum()))

    def on_validation_end(self, trainer, module):
        if trainer.is_global_zero and not (self.out / "val.pt").exists():
            torch.save({"val_psnr": float(trainer.callback_metrics["val_psnr"]),
                        "state": {k: v.clone() for k, v in module.model.state_dict().items()}},
                       self.out / "val.pt")

    def on_train_end(self, trainer, module):
        record = {"diffs": self.diffs, "sums": self.sums, "skipped": module.guard.skipped}
        (self.out / f"steps{trainer.global_rank}.json").write_text(json.dumps(record))


# -- launching -----------------------------------------------------------------------------
def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in (
               "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
               "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH"))
                                        if p)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_each(cmd: list[str], logs: Path) -> list[tuple[int, str, str]]:
    """Start ``cmd`` once per process, all at once, as srun or torchrun do (Lightning reads
    the ranks from the environment); ``(exit status, stdout, stderr)`` of each."""
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        out, err = open(logs / f"out{rank}.txt", "w"), open(logs / f"err{rank}.txt", "w")
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(WORLD),
                   NODE_RANK="0", LOCAL_RANK=str(rank))
        procs.append((subprocess.Popen(cmd, env=env, cwd=logs, stdout=out, stderr=err,
                                       start_new_session=True), out, err))
    results = []
    deadline = time.monotonic() + TIMEOUT
    for p, out, err in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q, *_ in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            p.wait()
        out.close()
        err.close()
    for rank, (p, _, _) in enumerate(procs):
        results.append((p.returncode, (logs / f"out{rank}.txt").read_text(),
                        (logs / f"err{rank}.txt").read_text()))
    return results


def _probe_main(out: Path) -> None:
    import musplit.training as tr

    if os.environ["LOCAL_RANK"] == "1":  # one process's loss is NaN at NAN_STEP
        real, calls = tr.split_elbo, []

        def nan_once(*a, **k):
            loss, logs = real(*a, **k)
            calls.append(1)
            return (loss * float("nan") if len(calls) == NAN_STEP + 1 else loss), logs

        tr.split_elbo = nan_once
    train = tr.train

    # The HAE's priors take no part in its loss (no KL): DDP must be told.
    train(probe_config(), out / "run", devices=WORLD, strategy="ddp_find_unused_parameters_true",
          accelerator="cpu", callbacks=[Probe(out)], progress=False)


# -- the probe run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_probe")
    results = launch_each([sys.executable, str(Path(__file__).resolve()), str(out)], out)
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    config = probe_config()
    data, stats = prepare_data(config)
    train_ds, val_ds = make_datasets(config, data, stats)
    return out, config, stats, train_ds, val_ds


def test_each_process_draws_its_own_patches_reproducibly(probe):
    out, config, _, train_ds, _ = probe
    batches = [torch.load(out / f"batch{r}.pt") for r in range(WORLD)]
    assert not torch.equal(batches[0][0], batches[1][0])
    streams = []
    for rank in range(WORLD):  # the same samples: other corners in each process
        train_ds.set_rank(rank, WORLD)
        streams.append(train_ds.draw(range(16))["corners"])
    assert (streams[0] != streams[1]).any(axis=1).mean() > 0.9
    b = config.train.batch_size
    for rank in range(WORLD):
        # The same patches again from the seed: the sampler's slice of this rank and its
        # patch stream.
        train_ds.set_rank(rank, WORLD)
        sampler = DistributedSampler(train_ds, num_replicas=WORLD, rank=rank, shuffle=True,
                                     seed=config.train.seed)
        x, y = train_ds.__getitems__(list(sampler)[:b])
        assert torch.equal(x, batches[rank][0]) and torch.equal(y, batches[rank][1])


def test_first_gradient_equals_one_process_on_the_whole_batch(probe):
    out, config, stats, _, _ = probe
    batches = [torch.load(out / f"batch{r}.pt") for r in range(WORLD)]
    grads = [torch.load(out / f"grads{r}.pt") for r in range(WORLD)]
    module = SplitModule(config, stats)
    module.model.load_state_dict(torch.load(out / "init.pt"))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape[0] == WORLD * config.train.batch_size
    loss, _ = module._loss(x, y)
    loss.backward()
    named = {n: p for n, p in module.model.named_parameters() if p.grad is not None}
    assert set(grads[0]) == set(named) and named
    worst = 0.0
    for name, p in named.items():
        assert torch.equal(grads[0][name], grads[1][name]), name  # one averaged gradient
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-4, atol=1e-6)
        worst = max(worst, float((grads[0][name] - p.grad).abs().max()))
    print(f"largest |gradient difference| 2 x {config.train.batch_size} vs 1 x "
          f"{x.shape[0]}: {worst:.3g}")


def test_parameters_are_identical_in_both_processes_after_every_step(probe):
    out, config, *_ = probe
    steps = [json.loads((out / f"steps{rank}.json").read_text()) for rank in range(WORLD)]
    for record in steps:
        assert record["diffs"] == [0.0] * config.train.max_steps
    # rank 1's NaN loss skipped the step in both processes: no update, counted in each
    assert [r["skipped"] for r in steps] == [1, 1]
    sums = steps[0]["sums"]
    assert sums[NAN_STEP] == sums[NAN_STEP - 1] and sums[NAN_STEP + 1] != sums[NAN_STEP]


def test_validation_is_reduced_over_the_processes(probe):
    out, config, stats, _, val_ds = probe
    assert len(val_ds) % WORLD == 1  # one process validates a padding entry
    recorded = torch.load(out / "val.pt")
    module = SplitModule(config, stats)
    module.model.load_state_dict(recorded["state"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, make_loader(val_ds, 64), verbose=False)
    one = float(trainer.callback_metrics["val_psnr"])
    print(f"val_psnr 2 processes {recorded['val_psnr']:.6f}, 1 process {one:.6f} dB")
    assert abs(one - recorded["val_psnr"]) < 1e-4, (one, recorded["val_psnr"])


def test_only_rank_zero_writes_the_run_folder(probe):
    out, config, *_ = probe
    run = out / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.ckpt", "config.yaml", "last.ckpt", "logs", "resume.ckpt", "split.json"]
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["metrics.csv"]
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    val_steps = [int(r["step"]) for r in rows if r.get("val_psnr")]
    assert len(val_steps) == len(set(val_steps)) == config.train.max_steps // 2


# -- a command-line run killed mid-epoch, then resumed -------------------------------------
def test_a_ddp_run_killed_mid_epoch_resumes(tmp_path):
    # 16 training frames of 16 patches: 128 samples per process, 32 steps an epoch.
    cfg = {"data": {"synthetic": {"frames": 20, "size": 128, "connector": 0}, "pad": "zeros",
                    "patch": 32},
           "model": {"lc": "lean", "filters": 8, "z_dims": [4, 4], "patch": 32, "scales": 3,
                     "dropout": 0.0},
           "train": {"max_steps": 1000, "batch_size": 4, "val_every_steps": 2}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "musplit", "train", "--config", "tiny.yaml", "--critters", "n0",
           "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--out", "run"]
    with open(tmp_path / "first.txt", "w") as log:
        first = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=log, stderr=log,
                                 start_new_session=True)
        deadline = time.monotonic() + TIMEOUT
        try:
            while not (run / "resume.ckpt").exists():
                assert first.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no resume.ckpt in time"
                time.sleep(0.05)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the launcher and the process it started
            first.wait()
    state = torch.load(run / "resume.ckpt", weights_only=True)
    step = int(state["global_step"])
    assert state["epoch"] == 0 and 0 < step < 32  # killed mid-epoch
    stored = Config.from_yaml(run / "config.yaml").train
    assert (stored.devices, stored.strategy, stored.accelerator) == (2, "ddp", "cpu")

    # Resumed with both processes started at once (srun, torchrun); where to train comes
    # from the run's config.yaml.
    target = step + 4
    results = launch_each([sys.executable, "-m", "musplit", "train", "--out", "run",
                           "--resume", "--max-steps", str(target)], tmp_path)
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    (out0, err0), (out1, err1) = [(o, e) for _, o, e in results]
    assert out0.count("best checkpoint:") == 1 and "best checkpoint" not in out1
    assert f"resuming at step {step}" in err0 and "resuming" not in err1
    from musplit.checkpoint import load_checkpoint

    assert load_checkpoint(run / "last.ckpt")["extra"]["global_step"] == target
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    loss_steps = [int(r["step"]) for r in rows if r.get("loss")]
    val_steps = [int(r["step"]) for r in rows if r.get("val_psnr")]
    for steps in (loss_steps, val_steps):
        assert steps == sorted(set(steps))  # each step once, in order
    assert len(val_steps) == target // 2 and np.all(np.diff(val_steps) == 2)
    assert {p.name for p in run.iterdir()} <= {
        "best.ckpt", "config.yaml", "last.ckpt", "logs", "resume.ckpt", "split.json"}


# -- settings --------------------------------------------------------------------------------
def test_where_to_train_is_a_config_setting_a_resume_may_change():
    from musplit.config.flags import train_config, train_overrides
    from musplit.config.resume import resumed_config

    over = train_overrides(critters="n0", devices="4", strategy="ddp", num_nodes=2,
                           accelerator="gpu")
    cfg = train_config(over)
    assert (cfg.train.devices, cfg.train.strategy, cfg.train.num_nodes,
            cfg.train.accelerator) == (4, "ddp", 2, "gpu")
    assert preset("cpu-small", train={"devices": "0,1"}).train.devices == "0,1"
    again = resumed_config(cfg, {"train": {"devices": 1, "strategy": "auto", "num_nodes": 1}},
                           where="run")
    assert (again.train.devices, again.train.strategy, again.train.num_nodes) == (1, "auto", 1)


@pytest.mark.parametrize("flags,needle", [
    (["--devices", "two"], "train.devices"),
    (["--devices", "0"], "train.devices"),
    (["--strategy", "dpd"], "invalid strategy name"),  # refused by Lightning's Trainer
    (["--accelerator", "cpu", "--devices", "0,1"], "--devices"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, flags, needle):
    tiny = {"data": {"synthetic": {"frames": 10, "size": 32}, "patch": 16},
            "model": {"filters": 4, "z_dims": [2, 2], "patch": 16, "scales": 2},
            "predict": {"grid": 16}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    code = main(["train", "--config", str(tmp_path / "tiny.yaml"), "--critters", "n0",
                 "--max-steps", "1", "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_ddp_refusing_unused_weights_is_one_line():
    from musplit.errors import ConfigError
    from musplit.training import unused_weights_error

    lightning_says = RuntimeError(
        "It looks like your LightningModule has parameters that were not used in producing "
        "the loss returned by training_step. If this is intentional, you must enable the "
        "detection of unused parameters in DDP, either by setting the string value "
        "`strategy='ddp_find_unused_parameters_true'` or by setting the flag in the strategy "
        "with `strategy=DDPStrategy(find_unused_parameters=True)`.")
    err = unused_weights_error(lightning_says, "ddp")
    assert isinstance(err, ConfigError) and "\n" not in str(err)
    assert "--strategy ddp_find_unused_parameters_true" in str(err)
    assert unused_weights_error(RuntimeError("out of memory"), "ddp") is None


if __name__ == "__main__":  # one process of the probe run (see the module docstring)
    _probe_main(Path(sys.argv[1]))
