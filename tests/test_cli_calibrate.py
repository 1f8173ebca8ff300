"""``musplit calibrate`` and the calibrated std of ``musplit predict`` (issue 18, item 5), end to
end on a tiny model trained for a few steps."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from musplit.checkpoints.format import file_sha256, load_checkpoint, save_checkpoint
from musplit.cli import main
from musplit.data.io import write_tiff
from musplit.data.synthetic import generate_critters
from musplit.errors import CheckpointError, InputError
from musplit.predict import Prediction
from musplit.splitter import Splitter
from musplit.training import train
from tests.test_training import tiny_config

FIX = Path(__file__).parent / "fixtures"
SAMPLES = 4


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny HVAE trained for 3 steps, and a validation mix with its two target channels."""
    root = tmp_path_factory.mktemp("calib")
    torch.set_num_threads(1)
    best = train(tiny_config(max_steps=3, val_every_steps=3), root / "run", progress=False)
    targets = generate_critters(2, 48, 0, seed=5)
    write_tiff(root / "val_targets.tif", targets, "SYXC")
    write_tiff(root / "val_mix.tif", targets.mean(-1, keepdims=True), "SYXC")
    return root, best


@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    root, best = trained
    out = tmp_path_factory.mktemp("out") / "calibrated.ckpt"
    before = file_sha256(best)
    code = main(["calibrate", "--model", str(best), "--input", str(root / "val_mix.tif"),
                 "--target", str(root / "val_targets.tif"), "--out", str(out),
                 "--samples", str(SAMPLES), "--bins", "10"])
    assert code == 0
    assert file_sha256(best) == before  # the input checkpoint is untouched
    return out


def test_calibrate_writes_a_checkpoint_with_valid_weights_and_its_table(trained, calibrated):
    _, best = trained
    src, new = load_checkpoint(best), load_checkpoint(calibrated)  # the hash is verified
    assert new["extra"]["weights_sha256"] == src["extra"]["weights_sha256"]
    assert new["config"] == src["config"] and new["stats"] == src["stats"]
    for k, v in src["state_dict"].items():
        assert torch.equal(new["state_dict"][k], v)
    cal = new["extra"]["calibration"]
    assert cal["samples"] == SAMPLES and cal["n_bins"] == 10 and len(cal["a"]) == 2
    assert {k: v for k, v in new["extra"].items() if k != "calibration"} == src["extra"]
    table = json.loads(calibrated.with_name("calibrated_calibration.json").read_text())
    assert table["a"] == cal["a"] and table["b"] == cal["b"]
    png = calibrated.with_name("calibrated_calibration.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = Splitter.load(calibrated)
    assert s.calibration["a"] == cal["a"] and Splitter.load(best).calibration is None


def test_predict_std_is_the_calibrated_one_and_raw_std_the_raw(trained, calibrated, tmp_path,
                                                               capsys):
    root, _ = trained
    mix = root / "val_mix.tif"
    code, _, err = run(["predict", calibrated, mix, "--out", tmp_path / "cal.tif", "--samples",
                        SAMPLES, "--std"], capsys)
    assert code == 0 and "calibrated" in err and "--raw-std" in err
    code, _, err = run(["predict", calibrated, mix, "--out", tmp_path / "raw.tif", "--samples",
                        SAMPLES, "--raw-std"], capsys)  # --raw-std implies --std
    assert code == 0 and "raw posterior-sample std" in err
    cal, raw = Prediction.load(tmp_path / "cal.tif"), Prediction.load(tmp_path / "raw.tif")
    assert cal.std_calibrated and not raw.std_calibrated
    np.testing.assert_array_equal(cal.mean, raw.mean)
    s = Splitter.load(calibrated)
    a, b = np.array(s.calibration["a"]), np.array(s.calibration["b"])
    offset = b * np.array(s.stats.target_std)  # intensity units
    np.testing.assert_allclose(cal.meta["std_calibration"]["offset"], offset, rtol=1e-6)
    np.testing.assert_allclose(cal.std, np.maximum(a * raw.std + offset, 0), rtol=1e-5,
                               atol=1e-5)
    assert not np.allclose(cal.std, raw.std)


def test_the_python_api_and_zarr_output_calibrate_too(trained, calibrated, tmp_path):
    root, _ = trained
    s = Splitter.load(calibrated)
    image = generate_critters(1, 40, 0, seed=9).mean(-1)
    a, b = np.array(s.calibration["a"]), np.array(s.calibration["b"])
    raw = s.predict(image, samples=SAMPLES, raw_std=True, normalized=True)
    cal = s.predict(image, samples=SAMPLES, normalized=True)
    assert cal.std_calibrated and cal.meta["std_calibration"]["offset_units"] == "normalised"
    np.testing.assert_allclose(cal.std, np.maximum(a * raw.std + b, 0), rtol=1e-5, atol=1e-6)
    s.predict_to_zarr(image, tmp_path / "c.zarr", samples=SAMPLES)
    s.predict_to_zarr(image, tmp_path / "r.zarr", samples=SAMPLES, raw_std=True)
    zc, zr = Prediction.load(tmp_path / "c.zarr"), Prediction.load(tmp_path / "r.zarr")
    assert zc.std_calibrated and not zr.std_calibrated
    np.testing.assert_allclose(zc.std, np.maximum(a * zr.std + b * np.array(
        s.stats.target_std), 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="raw_std"):
        s.predict(image, samples=SAMPLES, raw_std="yes")


def test_other_sample_counts_warn(calibrated, caplog):
    s = Splitter.load(calibrated)
    image = generate_critters(1, 32, 0, seed=2).mean(-1)
    with caplog.at_level(logging.WARNING):
        s.predict(image, samples=SAMPLES + 2)
    assert f"std of {SAMPLES} samples" in caplog.text
    assert s.predict(image, samples=1).std is None  # one sample: nothing to calibrate


@pytest.mark.parametrize("name", ["hae", "hvae"])
def test_old_checkpoints_predict_unchanged(name):
    ref = np.load(FIX / "predictions_2026-12-07.npz")
    s = Splitter.load(FIX / f"{name}_2026-12-07.ckpt")
    assert s.calibration is None
    p = s.predict(ref["input"], samples=2, seed=3, brightness="off")
    r = s.predict(ref["input"], samples=2, seed=3, brightness="off", raw_std=True)
    assert p.meta["std_calibrated"] is False
    np.testing.assert_array_equal(p.std, r.std)
    np.testing.assert_allclose(p.mean, ref[f"{name}_mean"], rtol=1e-4, atol=1e-4)


def test_the_input_checkpoint_is_not_overwritten_without_overwrite(trained, tmp_path, capsys):
    root, best = trained
    model = shutil.copy(best, tmp_path / "m.ckpt")
    before = file_sha256(model)
    args = ["calibrate", "--model", model, "--target", root / "val_targets.tif", "--out", model,
            "--samples", SAMPLES]
    code, _, err = run(args, capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert file_sha256(model) == before
    # in place with --overwrite (and the input mixed from --target)
    code, out, err = run([*args, "--overwrite", "--no-plot"], capsys)
    assert code == 0, err
    assert Splitter.load(model).calibration["samples"] == SAMPLES
    assert not (tmp_path / "m_calibration.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_existing_outputs_and_bad_targets_are_one_line(trained, calibrated, tmp_path, capsys):
    root, best = trained
    code, _, err = run(["calibrate", "--model", best, "--target", root / "val_targets.tif",
                        "--out", calibrated, "--samples", SAMPLES], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(["calibrate", "--model", best, "--target", root / "val_targets.tif",
                        "--target-channels", "0", "--out", tmp_path / "x.ckpt"], capsys)
    assert code == 2 and "splits 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.ckpt").exists()
    code, _, err = run(["calibrate", "--model", best, "--target", root / "val_targets.tif",
                        "--out", tmp_path / "x.pt"], capsys)
    assert code == 2 and ".ckpt" in err


def test_a_damaged_calibration_is_refused_when_the_checkpoint_loads(trained, tmp_path):
    _, best = trained
    p = load_checkpoint(best)
    bad = save_checkpoint(tmp_path / "bad.ckpt", state_dict=p["state_dict"], config=p["config"],
                          stats=p["stats"], extra={**p["extra"], "calibration": {"a": [1.0],
                                                                                  "b": [0.0]}})
    with pytest.raises(CheckpointError, match="calibration"):
        Splitter.load(bad)


def test_the_cli_defaults_are_the_library_defaults():
    from musplit import calibration
    from musplit.cli.calibrate import DEFAULT_BINS, DEFAULT_SAMPLES

    assert DEFAULT_BINS == calibration.DEFAULT_BINS
    assert DEFAULT_SAMPLES == calibration.DEFAULT_SAMPLES


def test_calibrate_from_python_checks_its_arguments_before_predicting(trained, monkeypatch):
    from musplit.calibration import calibrate

    root, best = trained
    s = Splitter.load(best)
    targets = generate_critters(2, 32, 0, seed=1)
    mix = targets.mean(-1)
    monkeypatch.setattr(s, "predict", lambda *a, **k: pytest.fail("predicted"))
    with pytest.raises(InputError, match="at least 2 posterior samples"):
        calibrate(s, mix, targets, samples=1)
    with pytest.raises(InputError, match="do not match the images"):
        calibrate(s, mix[:1], targets, samples=2)
    with pytest.raises(InputError, match="do not match the images"):
        calibrate(s, mix, targets[..., :1], samples=2)
    bad = targets.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        calibrate(s, mix, bad, samples=2)
    monkeypatch.undo()
    cal = calibrate(s, mix, targets, samples=3, n_bins=6)
    assert cal.samples == 3 and cal.n_bins == 6 and cal.pixels == targets[..., 0].size
