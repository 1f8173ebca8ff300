"""The real-data example: PartSegData's confocal stack as shipped (LZW OME-TIFF), through the
CLI and through ``musplit demo --real`` (the optional ``musplit[examples]`` extra, which
``make test`` installs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from musplit.cli import main

PartSegData = pytest.importorskip("PartSegData", reason="needs the examples extra")

from musplit.demo_real import partseg_stack  # noqa: E402

TINY = ["--preset", "cpu-real", "--filters", "8", "--patch", "32", "--batch-size", "4"]


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_shipped_stack_is_lzw_and_reads_as_tifffile_decodes_it():
    from musplit.data.io import open_image

    path = partseg_stack()
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.LZW
        raw = tf.series[0].asarray()
    src = open_image(path)
    try:
        assert (src.n_frames, src.height, src.width, src.n_channels) == (1, 1024, 1024, 4)
        assert src.pixel_size == pytest.approx((0.0775, 0.0775), rel=1e-3)
        a = src.read()
    finally:
        src.close()
    np.testing.assert_array_equal(a[0], np.moveaxis(raw.reshape(4, 1024, 1024), 0, -1))


def test_the_shipped_stack_trains_predicts_and_evaluates_from_the_cli(tmp_path, capsys):
    stack = str(partseg_stack())
    code, out, err = run(["info", stack], capsys)
    assert code == 0, err
    assert "pixel size" in out and "99.9%" in out
    run_dir = tmp_path / "run"
    code, out, err = run(["train", "--data", stack, "--channels", "0,3", *TINY,
                          "--max-steps", "3", "--val-every", "3", "--out", str(run_dir)], capsys)
    assert code == 0, err
    assert "spatial split" in out  # one frame: validation and test held out as regions
    split = json.loads((run_dir / "split.json").read_text())
    assert split["kind"] == "spatial" and split["regions"]
    pred = tmp_path / "pred.ome.tif"
    code, out, err = run(["predict", str(run_dir / "best.ckpt"), stack, "--mix-channels", "0,3",
                          "--out", str(pred)], capsys)
    assert code == 0, err
    with tifffile.TiffFile(pred) as tf:
        p = tf.series[0].asarray()
        assert 'PhysicalSizeX="0.0775' in tf.ome_metadata
    assert p.dtype == np.float32 and p.size == 2 * 1024 * 1024
    metrics = tmp_path / "m.json"
    code, out, err = run(["evaluate", "--pred", str(pred), "--target", stack,
                          "--target-channels", "0,3", "--model", str(run_dir / "best.ckpt"),
                          "--out", str(metrics)], capsys)
    assert code == 0, err
    summary = json.loads(metrics.read_text())["summary"]
    assert np.isfinite(summary["ri_psnr"]["mean"]["mean"])


def test_the_sum_of_the_stack_given_to_a_model_trained_on_means_is_refused(tmp_path, capsys):
    # Trained as the paper (the input is the mean of the channels); a real superimposed
    # acquisition records the photons of both: the sum, twice as bright. Refused with the
    # reason, not silently mis-split; --brightness match rescales it.
    from musplit.data.io import open_image, write_tiff

    stack = str(partseg_stack())
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "--data", stack, "--channels", "0,3", "--preset", "cpu-small",
                        "--filters", "8", "--patch", "32", "--batch-size", "4", "--max-steps",
                        "2", "--val-every", "2", "--out", str(run_dir)], capsys)
    assert code == 0, err
    src = open_image(stack)
    crop = src.read(channels=[0, 3])[0, :256, 768:].sum(-1)
    src.close()
    mixed = write_tiff(tmp_path / "mixed.tif", crop[None, ..., None])
    out_path = tmp_path / "split.tif"
    code, _, err = run(["predict", str(run_dir / "best.ckpt"), str(mixed), "--out",
                        str(out_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "brighter than the mixes" in err and "mean of its 2 channels" in err
    assert not out_path.exists()
    code, _, err = run(["predict", str(run_dir / "best.ckpt"), str(mixed), "--out",
                        str(out_path), "--brightness", "match"], capsys)
    assert code == 0, err
    assert tifffile.imread(out_path).size == 2 * 256 * 256


def test_demo_real_writes_a_report_against_the_linear_baseline(tmp_path, capsys):
    from musplit.demo_real import run_real_demo

    lines = []
    report = run_real_demo(tmp_path / "demo", steps=2, samples=1, filters=4, echo=lines.append)
    text = report.read_text()
    assert "linear baseline (the superimposed image)" in text
    assert "HVAE Lean-LC" in text and "HVAE Vanilla" in text
    # read as a biologist reads it (issue 17): metrics explained, the std's units, run times
    # only beside the machine's load
    assert "+1 dB means about 11 % less error" in text and "SSIM** (structural" in text
    assert "same units as the image intensities (intensity (file)" in text
    assert "train (s)" not in text and "trained in" in text
    assert all("load average" in line for line in text.splitlines() if "trained in" in line)
    for png in ("split.png", "prediction_lean.png", "prediction_vanilla.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 10_000
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["gains_db"]) == {"lean", "vanilla"}
    split = json.loads((tmp_path / "demo" / "data" / "split.json").read_text())
    # the test region is the bottom 256 rows, and no validation band reaches into it
    (test,) = split["regions"]["test"]
    assert test["y"] == [768, 1024] and test["x"] == [0, 1024]
    assert split["regions"]["val"] and all(r["y"][1] <= 768 for r in split["regions"]["val"])
    assert any("vs the superimposed image" in str(x) for x in lines)


def test_demo_real_rejects_a_channel_the_stack_does_not_have(capsys):
    code, _, err = run(["demo", "--real", "--channels", "0,7"], capsys)
    assert code == 2 and "2 to 4 different channels" in err and "0,7" in err
    for bad, needle in (("0", "2 to 4 different channels"), ("0,1,2,3,1", "more than once"),
                        ("1,1", "more than once")):
        code, _, err = run(["demo", "--real", "--channels", bad], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (bad, err)
