"""The CPU and precision defaults a run chooses (issue 21): OpenMP threads that sleep when idle,
the thread count, and bf16 only where the hardware has it — each as the run log says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from musplit.checkpoints.format import load_checkpoint
from musplit.runtime import fast_precision
from musplit.training import train, training_precision
from tests.test_training import tiny_config


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "MUSPLIT_OPENMP", "MUSPLIT_THREADS",
                        "OMP_NUM_THREADS")}
    return {**env, **extra}


def _python(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(**env),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_musplit_first_makes_openmp_threads_sleep_and_says_so():
    code = ("import musplit, os, torch; from musplit.runtime import cpu_settings; "
            "print(os.environ.get('OMP_WAIT_POLICY'), '|', cpu_settings())")
    policy, line = _python(code).split(" | ")
    assert policy == "PASSIVE" and line.endswith("OpenMP wait policy passive")
    # a policy the user chose is kept, and MUSPLIT_OPENMP=default leaves the runtime alone
    assert _python(code, OMP_WAIT_POLICY="active").endswith("wait policy active (OMP_WAIT_POLICY)")
    policy, line = _python(code, MUSPLIT_OPENMP="default").split(" | ")
    assert policy == "None" and "the runtime's default (MUSPLIT_OPENMP=default)" in line
    # too late once torch (and its OpenMP runtime) is loaded: the log says so, and how to fix it
    policy, line = _python("import torch, musplit, os; from musplit.runtime import "
                           "cpu_settings; print(os.environ.get('OMP_WAIT_POLICY'), '|', "
                           "cpu_settings())").split(" | ")
    assert policy == "None" and "torch was imported before musplit" in line
    assert "OMP_WAIT_POLICY=PASSIVE" in line


def test_the_train_log_names_threads_and_precision_and_the_checkpoint_keeps_them(tmp_path):
    """A real ``musplit train`` with the user's environment untouched: the run log's runtime
    line is what the run used."""
    import yaml

    cfg = tiny_config(max_steps=2)
    cfg.to_yaml(tmp_path / "cfg.yaml")
    out = subprocess.run([sys.executable, "-m", "musplit", "train", "--config",
                          str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")],
                         env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    log = out.stdout + out.stderr
    (line,) = [s for s in log.splitlines() if s.startswith("runtime: ")]
    m = re.fullmatch(r"runtime: (\d+) CPU threads?, OpenMP wait policy passive; precision (.*)",
                     line)
    assert m, line
    ckpt = load_checkpoint(tmp_path / "run" / "best.ckpt")["extra"]
    cores = len(os.sched_getaffinity(0))
    torch_default = int(_python("import torch; print(torch.get_num_threads())"))
    assert int(m[1]) == ckpt["threads"] == min(cores, torch_default)
    if fast_precision("bf16", "cpu"):
        assert ckpt["precision"] == "bf16-mixed" and m[2].startswith("bf16 autocast (auto")
    else:
        assert ckpt["precision"] == "32"
        assert m[2] == "fp32 (auto: this CPU has no bf16 instructions (AVX512-BF16 or AMX))"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"][
        "precision"] == "auto"  # the request is kept; the checkpoint says what it became


def test_musplit_threads_sets_the_count_and_a_bad_value_is_one_line(tmp_path, monkeypatch,
                                                                    capsys):
    from musplit.cli import main

    lines = []
    monkeypatch.setenv("MUSPLIT_THREADS", "1")
    best = train(tiny_config(max_steps=1), tmp_path / "one", progress=False, echo=lines.append)
    assert any(s.startswith("runtime: 1 CPU thread, ") for s in lines), lines
    assert load_checkpoint(best)["extra"]["threads"] == 1
    monkeypatch.setenv("MUSPLIT_THREADS", "many")
    tiny_config(max_steps=1).to_yaml(tmp_path / "cfg.yaml")
    code = main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "MUSPLIT_THREADS must be a whole number" in err
    assert not (tmp_path / "r" / "last.ckpt").exists()


@pytest.mark.parametrize("hardware", [False, True])
def test_bf16_only_where_the_hardware_has_it(monkeypatch, hardware, tmp_path):
    import musplit.training as T

    monkeypatch.setattr(T, "fast_precision", lambda amp, device="cpu": hardware)
    monkeypatch.delenv("MUSPLIT_EMULATED_BF16", raising=False)
    auto = tiny_config().train
    asked = tiny_config(precision="bf16").train
    assert auto.precision == "auto" and asked.precision == "bf16-mixed"  # "bf16" is an alias
    if hardware:
        assert training_precision(auto)[0] == training_precision(asked)[0] == "bf16-mixed"
    else:
        assert training_precision(auto) == (
            "32", "fp32 (auto: this CPU has no bf16 instructions (AVX512-BF16 or AMX))")
        used, note = training_precision(asked)
        assert used == "32" and note.startswith("fp32: bf16 was asked for, but this CPU has no "
                                                "bf16 instructions")
        monkeypatch.setenv("MUSPLIT_EMULATED_BF16", "1")
        assert training_precision(asked)[0] == "bf16-mixed"
        monkeypatch.delenv("MUSPLIT_EMULATED_BF16")
        lines = []
        best = train(tiny_config(max_steps=1, precision="bf16"), tmp_path / "run",
                     progress=False, echo=lines.append)
        assert load_checkpoint(best)["extra"]["precision"] == "32"
        assert any("precision fp32: bf16 was asked for" in s for s in lines), lines
    assert training_precision(tiny_config(precision="fp32").train) == (
        "32", "fp32 (train.precision)")
