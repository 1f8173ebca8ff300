"""Training faults a new user met (issue 17, "Nothing silent, nothing lost"): the metrics
history across resumes, resuming with changed settings, a partial YAML with a preset, crafted
and damaged checkpoints, progress in a log file, the TensorBoard logger."""

import csv
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from musplit.checkpoints.format import load_checkpoint
from musplit.cli import main
from musplit.config.flags import train_config, train_overrides
from musplit.data.io import write_tiff
from musplit.errors import CheckpointError, ConfigError
from musplit.splitter import Splitter
from musplit.training import train
from tests.test_training import StopAt, tiny_config

FIX = Path(__file__).parent / "fixtures"


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def metrics(run_dir):
    return (run_dir / "logs" / "metrics.csv").read_text()


def rows(run_dir):
    return list(csv.DictReader(io.StringIO(metrics(run_dir))))


def tiny_yaml(path, **train_kw):
    cfg = tiny_config(**train_kw).model_dump(mode="json")
    path.write_text(yaml.safe_dump(cfg))
    return path


class Payload:
    """A pickle that runs code when it is unpickled: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def crafted(path, marker):
    torch.save({"format_version": 1, "musplit_version": "0", "config": {}, "state_dict": {},
                "global_step": 0, "musplit": {}, "x": Payload(marker)}, path)
    return path


# -- row 3: metrics.csv keeps the whole history ---------------------------------------------
def test_resume_appends_to_the_metrics_history_and_never_deletes_it(tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(tiny_config(), run_dir, progress=False, callbacks=[StopAt(3)])
    before = metrics(run_dir)
    first = rows(run_dir)
    assert first and all(int(r["step"]) < 3 for r in first)

    train(tiny_config(), run_dir, progress=False, resume=True)
    after = rows(run_dir)
    assert after[: len(first)] == first  # the rows before the resume point, unchanged
    assert any(int(r["step"]) >= 3 and r["loss"] for r in after[len(first):])
    assert any(int(r["step"]) >= 3 and r["val_psnr"] for r in after[len(first):])
    assert metrics(run_dir).startswith(before.splitlines()[0])

    # a resume with nothing left to do changes nothing and says so
    whole = (run_dir / "logs" / "metrics.csv").read_bytes()
    last = (run_dir / "last.ckpt").read_bytes()
    train(tiny_config(), run_dir, progress=False, resume=True)
    assert "nothing to train" in caplog.text and "max_steps is 6" in caplog.text
    assert (run_dir / "logs" / "metrics.csv").read_bytes() == whole
    assert (run_dir / "last.ckpt").read_bytes() == last

    # a bad resume.ckpt is refused before anything in the run folder is written
    config = (run_dir / "config.yaml").read_bytes()
    for bad in (b"not a checkpoint", None):
        if bad is None:
            crafted(run_dir / "resume.ckpt", tmp_path / "ran")
        else:
            (run_dir / "resume.ckpt").write_bytes(bad)
        with pytest.raises(CheckpointError, match="resume checkpoint .*resume.ckpt"):
            train(tiny_config(max_steps=9), run_dir, progress=False, resume=True)
        assert (run_dir / "logs" / "metrics.csv").read_bytes() == whole
        assert (run_dir / "config.yaml").read_bytes() == config
    assert not (tmp_path / "ran").exists()


class KeepFirstResume(StopAt):
    """Stops at ``step``; keeps the resume.ckpt of the first validation, as if the run was
    killed at ``step`` after it (a kill -9 leaves no later resume.ckpt)."""

    def __init__(self, step, run_dir):
        super().__init__(step)
        self.run_dir, self.saved = run_dir, None

    def on_validation_end(self, trainer, module):
        if self.saved is None and (self.run_dir / "resume.ckpt").exists():
            self.saved = (self.run_dir / "resume.ckpt").read_bytes()


def test_rows_logged_after_the_last_resume_point_are_set_aside(tmp_path, caplog):
    run_dir = tmp_path / "run"
    keep = KeepFirstResume(7, run_dir)
    train(tiny_config(max_steps=9), run_dir, progress=False, callbacks=[keep])
    killed = rows(run_dir)
    (run_dir / "resume.ckpt").write_bytes(keep.saved)  # the state at step 3
    at = torch.load(run_dir / "resume.ckpt", weights_only=True)["musplit_metrics_rows"]
    assert 0 < at < len(killed)

    train(tiny_config(max_steps=9), run_dir, progress=False, resume=True)
    after = rows(run_dir)
    assert after[:at] == killed[:at]
    side = list((run_dir / "logs").glob("metrics-interrupted-step3*.csv"))
    assert len(side) == 1 and "moved to" in caplog.text
    assert list(csv.DictReader(side[0].open())) == killed[at:]
    steps = [(r["step"], bool(r["loss"])) for r in after]
    assert len(steps) == len(set(steps))  # each step once


# -- row 4: --resume with changed settings ---------------------------------------------------
def test_resume_with_a_larger_max_steps_trains_longer_and_refuses_fixed_settings(
        tmp_path, capsys, caplog):
    cfg = tiny_yaml(tmp_path / "cfg.yaml", max_steps=4, val_every_steps=2)
    runs = tmp_path / "run"
    code, _, err = run(["train", "--config", cfg, "--out", runs], capsys)
    assert code == 0, err
    assert load_checkpoint(runs / "last.ckpt")["extra"]["global_step"] == 4

    code, _, err = run(["train", "--out", runs, "--resume", "--max-steps", "6"], capsys)
    assert code == 0, err
    assert load_checkpoint(runs / "last.ckpt")["extra"]["global_step"] == 6
    assert yaml.safe_load((runs / "config.yaml").read_text())["train"]["max_steps"] == 6

    last = (runs / "last.ckpt").read_bytes()
    code, _, err = run(["train", "--out", runs, "--resume", "--filters", "16"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.filters (--filters)" in err and "has 8" in err and "asks for 16" in err
    code, _, err = run(["train", "--out", runs, "--resume", "--patch", "64",
                        "--max-steps", "8"], capsys)
    assert code == 2 and "data.patch" in err and "has 32" in err and "64" in err
    # the same command line again (the whole config) with a larger max_steps is fine
    code, _, err = run(["train", "--config", cfg, "--out", runs, "--resume",
                        "--max-steps", "6"], capsys)
    assert code == 0 and "nothing to train" in caplog.text, err
    assert (runs / "last.ckpt").read_bytes() == last

    with pytest.raises(ConfigError, match="model.lc: the run has 'lean', this asks for 'none'"):
        train(tiny_config(max_steps=8).updated({"model": {"lc": "none", "scales": 1},
                                                 "data": {"scales": 1}}),
              runs, progress=False, resume=True)


# -- row 7: a partial YAML over a preset -----------------------------------------------------
def test_a_partial_yaml_overrides_the_preset_and_flags_override_both(tmp_path):
    part = tmp_path / "partial.yaml"
    part.write_text(yaml.safe_dump({"data": {"synthetic": {"frames": 20, "size": 64}},
                                    "train": {"batch_size": 8, "max_steps": 50}}))
    cfg = train_config(train_overrides(preset_name="cpu-small"), config_path=part,
                       preset_name="cpu-small")
    assert cfg.model.filters == 32 and cfg.model.z_dims == [32, 32, 32, 32]  # the preset's
    assert cfg.model.lc == "lean" and cfg.train.nll_beta == 1.0 and cfg.predict.grid == 32
    assert cfg.train.batch_size == 8 and cfg.train.max_steps == 50  # the YAML's
    cfg = train_config(train_overrides(max_steps=7, preset_name="cpu-real"), config_path=part,
                       preset_name="cpu-real")
    assert cfg.train.max_steps == 7  # the flag's
    assert cfg.model.filters == 16 and cfg.data.input_is_sum and cfg.data.augment == "d4"
    # no --preset: the same default preset as the flags-only path
    cfg = train_config(train_overrides(), config_path=part)
    assert cfg.model.filters == 32 and cfg.train.lr_patience == 5
    # a YAML choosing a baseline drops the LadderVAE settings of the preset, as --model does
    part.write_text(yaml.safe_dump({"data": {"synthetic": {}, "patch": 32},
                                    "model": {"kind": "unet", "patch": 32}}))
    cfg = train_config(train_overrides(), config_path=part)
    assert cfg.model.kind == "unet" and cfg.model.z_dims is None


# -- row 9: crafted checkpoints --------------------------------------------------------------
def test_a_crafted_checkpoint_is_refused_in_one_line_without_unsafe_advice(tmp_path, capsys):
    marker = tmp_path / "ran"
    runs = tmp_path / "run"
    runs.mkdir()
    tiny_config().to_yaml(runs / "config.yaml")
    crafted(runs / "resume.ckpt", marker)
    code, _, err = run(["train", "--out", runs, "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "resume.ckpt is not a valid or safe musplit checkpoint" in err
    assert "weights_only" not in err and "Traceback" not in err

    evil = crafted(tmp_path / "model.ckpt", marker)
    with pytest.raises(CheckpointError) as e:
        Splitter.load(evil)
    assert "not a valid or safe musplit checkpoint" in str(e.value)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    img = tmp_path / "mix.tif"
    write_tiff(img, np.zeros((1, 32, 32, 1), np.float32), "SYXC")
    code, _, err = run(["predict", evil, img, "--out", tmp_path / "p.tif"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model.ckpt is not a valid or safe musplit checkpoint" in err
    assert "weights_only" not in err
    assert not marker.exists()


# -- row 6: the stored weights hash is checked -----------------------------------------------
def _flip_a_weight_bit(src, dst):
    """Copy ``src`` and flip one bit inside its largest tensor's bytes."""
    shutil.copy(src, dst)
    with zipfile.ZipFile(dst) as z:
        big = max((i for i in z.infolist() if "/data/" in i.filename),
                  key=lambda i: i.file_size)
    assert big.compress_type == zipfile.ZIP_STORED
    with open(dst, "r+b") as f:
        f.seek(big.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        f.seek(big.header_offset + 30 + int(name_len) + int(extra_len) + big.file_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    return dst


def test_a_damaged_checkpoint_is_refused_and_an_old_one_without_a_hash_loads(tmp_path,
                                                                             capsys):
    bad = _flip_a_weight_bit(FIX / "hae_2026-12-07.ckpt", tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="bad.ckpt is damaged: its weights do not match "
                                              "the stored checksum"):
        Splitter.load(bad)
    img = tmp_path / "mix.tif"
    write_tiff(img, np.full((1, 32, 32, 1), 100, np.float32), "SYXC")
    code, _, err = run(["predict", bad, img, "--out", tmp_path / "p.tif"], capsys)
    assert code == 2 and "is damaged" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.tif").exists()

    payload = torch.load(FIX / "hae_2026-12-07.ckpt", weights_only=True)
    del payload["extra"]["weights_sha256"]  # as written before the hash was stored
    torch.save(payload, tmp_path / "nohash.ckpt")
    assert Splitter.load(tmp_path / "nohash.ckpt").config.model.kind == "hae"


# -- progress: steps over the whole run, clean in a log file ---------------------------------
def test_progress_in_a_log_file_is_plain_lines_over_the_whole_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny_config(), run_dir, callbacks=[StopAt(3)])
    out, err = capsys.readouterr()
    assert "\x1b[" not in out + err and "\r" not in out + err  # no bar codes in a log file
    assert "training: 6 steps" in err and "step 3/6" in err and "validation at step 3" in err
    train(tiny_config(), run_dir, resume=True)
    out, err = capsys.readouterr()
    assert "\x1b[" not in out + err and "\r" not in out + err
    assert "training: 6 steps, resuming at step 3" in err and "step 6/6" in err
    assert "step 1/" not in err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_one_bar_counts_steps_from_the_resumed_step(tmp_path):
    from musplit.training_progress import StepProgress

    run_dir = tmp_path / "run"
    train(tiny_config(), run_dir, progress=False, callbacks=[StopAt(3)])
    screen = Terminal()
    train(tiny_config(), run_dir, resume=True, callbacks=[StepProgress(stream=screen)])
    text = screen.getvalue()
    assert "training: step 3/6" in text and "step 6/6" in text
    assert "/?" not in text and "Validation" not in text


# -- the TensorBoard logger ------------------------------------------------------------------
def test_logger_tensorboard_without_the_package_is_one_clear_line(tmp_path, capsys,
                                                                  monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "tensorboard", "tensorboardX") else real(name, *a))
    cfg = tiny_yaml(tmp_path / "cfg.yaml")
    code, _, err = run(["train", "--config", cfg, "--logger", "tensorboard", "--out",
                        tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pip install tensorboard" in err
    assert not (tmp_path / "run").exists()
