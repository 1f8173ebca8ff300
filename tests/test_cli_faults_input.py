"""Issue 17, "Nothing silent, nothing lost": the input side of a new user's first runs.

Plain TIFFs without axes metadata, images outside the training range, bad channel lists, frames
too small to train on and images smaller than the patch. Each test reproduces a failure of the
fault test (see the comments) and checks the fix.
"""

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from musplit.checkpoint import save_checkpoint
from musplit.cli import main
from musplit.cli.options import int_list
from musplit.config import Config
from musplit.data.io import open_image
from musplit.data.normalize import NormStats, compute_stats
from musplit.errors import InputError
from musplit.models import build
from musplit.predict import predict_image
from tests.test_e2e import tiny_yaml

RNG = np.random.default_rng(17)


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, *words):
    """Exit status 2, one line on stderr, no traceback, and every word in it."""
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def plain(path, arr):
    """What a new user writes: tifffile.imwrite with no axes, no photometric, no metadata."""
    with warnings.catch_warnings():  # tifffile's notice that it stores 3-4 planes as RGB
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(path, arr)
    return path


def checkpoint(path, *, patch=16, stats=None, pad="reflect"):
    """A tiny deterministic (HAE) model: 2 channels, the given patch and statistics."""
    cfg = Config.validated({
        "model": {"kind": "hae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "scales": 2,
                  "patch": patch, "dropout": 0.0},
        "data": {"patch": patch, "scales": 2, "pad": pad},
        "predict": {"grid": patch // 2, "batch_size": 16}})
    torch.manual_seed(0)
    model = build(cfg.model).eval()
    stats = stats or NormStats(clip_max=5000.0, input_mean=500.0, input_std=300.0,
                               target_mean=[500.0, 500.0], target_std=[300.0, 300.0],
                               alpha=[0.5, 0.5])
    save_checkpoint(path, state_dict=model.state_dict(), config=cfg.model_dump(mode="json"),
                    stats=stats.to_dict())
    return path, model, cfg, stats


def blobs(n, h, w):
    """(n, h, w, 2) float32: small round spots in channel 0, wide ones in channel 1."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w, 2), np.float32)
    for i in range(n):
        for k, sigma in enumerate((2.0, 6.0)):
            for _ in range(6):
                cy, cx = RNG.uniform(0, h), RNG.uniform(0, w)
                out[i, :, :, k] += 100 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / sigma**2)
    return out + RNG.normal(5, 1, out.shape).astype(np.float32)


# -- row 1: a plain stack is frames for predict, channels for training data ------------------
def test_a_plain_small_stack_is_frames_for_predict_and_channels_for_targets(tmp_path):
    # Was: tifffile stores a (4, H, W) array as 4 planar samples, read as CYX "from
    # metadata" by every command, so predict refused it ("has 4 channels").
    arr = RNG.random((4, 24, 20)).astype(np.float32)
    path = plain(tmp_path / "four.tif", arr)
    as_channels = open_image(path)
    assert (as_channels.axes, as_channels.axes_origin) == ("CYX", "guessed")
    assert as_channels.canonical_shape == (1, 24, 20, 4)
    as_frames = open_image(path, stack_of="frames")
    assert (as_frames.axes, as_frames.axes_origin) == ("SYX", "guessed")
    np.testing.assert_array_equal(as_frames.read()[..., 0], arr)
    assert "guessed: no axes in the file" in as_frames.axes_note
    # axes in the file, or given, are never changed
    tifffile.imwrite(tmp_path / "ij.tif", arr[:2], imagej=True, metadata={"axes": "CYX"})
    assert open_image(tmp_path / "ij.tif", stack_of="frames").axes == "CYX"
    assert open_image(path, "CYX", stack_of="frames").axes_origin == "given"
    with pytest.raises(InputError, match="stack_of"):
        open_image(path, stack_of="pages")
    # a plain page stack is frames by its layout: a missing channel says so and names --axes
    pages = plain(tmp_path / "pages.tif", arr[:2])
    with pytest.raises(InputError, match=r"1 channel: 0\.\.0\); read as axes 'SYX' \(guessed: "
                                         r"no axes in the file\): pass --axes \(e\.g\. --axes CYX"):
        open_image(pages).read(channels=[1])


def test_predict_takes_a_plain_4_frame_stack_and_axes_refusals_name_the_guess(tmp_path, capsys):
    ckpt, *_ = checkpoint(tmp_path / "m.ckpt")
    mix = plain(tmp_path / "mix.tif", (RNG.random((4, 32, 32)) * 1000).astype(np.float32))
    code, _, err = run(["predict", ckpt, mix, "--out", tmp_path / "p.tif"], capsys)
    assert code == 0, err
    assert open_image(tmp_path / "p.tif").canonical_shape == (4, 32, 32, 2)
    # with --mix-channels the same file is 4 channels (two of them are mixed)
    code, _, err = run(["predict", ckpt, mix, "--mix-channels", "0,3", "--out",
                        tmp_path / "q.tif"], capsys)
    assert code == 0, err
    assert open_image(tmp_path / "q.tif").canonical_shape == (1, 32, 32, 2)
    # a refusal that depends on guessed axes says what was read and names --axes
    np.save(tmp_path / "two.npy", RNG.random((3, 32, 32, 2)).astype(np.float32))
    code, _, err = run(["predict", ckpt, tmp_path / "two.npy", "--out", tmp_path / "r.tif"],
                       capsys)
    one_line_error(code, err, "has 2 channels", "read as axes 'SYXC'", "guessed",
                   "--mix-channels", "--axes")
    np.save(tmp_path / "rgb.npy", RNG.random((32, 32, 3)).astype(np.float32))
    code, _, err = run(["predict", ckpt, tmp_path / "rgb.npy", "--out", tmp_path / "r.tif"],
                       capsys)
    one_line_error(code, err, "rgb.npy", "SYX", "YXC", "--axes")
    # a channel that is missing from a guessed single-channel reading says how it was read
    with pytest.raises(InputError, match=r"read as axes 'SYX' \(guessed.*--axes"):
        open_image(tmp_path / "mix.tif", stack_of="frames").read(channels=[1])


def test_train_predict_evaluate_on_plain_tiffs_with_no_axes_flags(tmp_path, capsys):
    # The acceptance run: plain tifffile.imwrite files, no --axes anywhere.
    targets = blobs(8, 64, 64)
    train_file = plain(tmp_path / "train.tif", targets)
    mix_file = plain(tmp_path / "mix.tif", targets[:4].mean(-1))
    target_file = plain(tmp_path / "target.tif", targets[:4])
    cfg = tiny_yaml(tmp_path / "cfg.yaml", train_file)
    runs = tmp_path / "run"
    code, _, err = run(["train", "--config", cfg, "--data", train_file, "--channels", "0,1",
                        "--max-steps", "2", "--out", runs], capsys)
    assert code == 0, err
    pred = tmp_path / "pred.tif"
    code, _, err = run(["predict", runs / "best.ckpt", mix_file, "--out", pred], capsys)
    assert code == 0, err
    assert open_image(pred).canonical_shape == (4, 64, 64, 2)
    metrics = tmp_path / "m.json"
    code, out, err = run(["evaluate", "--pred", pred, "--target", target_file, "--model",
                          runs / "best.ckpt", "--out", metrics], capsys)
    assert code == 0, err
    assert "RI-PSNR" in out and json.loads(metrics.read_text())["frames"] == 4
    # the targets themselves, mixed by predict: also no flag but the channels
    code, _, err = run(["predict", runs / "best.ckpt", target_file, "--mix-channels", "0,1",
                        "--out", tmp_path / "pred2.tif"], capsys)
    assert code == 0, err


# -- row 2: an input outside the training range ---------------------------------------------
def _range_stats():
    """The fault test's model: clip at 20.6 in normalised units, training brightness that a
    100-4000 image passes (within 2x), training minimum 0."""
    return NormStats(clip_max=10.0 + 20.6 * 5.0, input_mean=10.0, input_std=5.0,
                     target_mean=[10.0, 10.0], target_std=[5.0, 5.0], alpha=[0.5, 0.5],
                     extra={"input_q99": 2500.0, "input_q999": 3000.0, "input_min": 0.0})


def test_compute_stats_records_the_training_minimum():
    t = RNG.uniform(-3, 10, (3, 16, 16, 2)).astype(np.float32)
    st = compute_stats(t, quantile=1.0)
    assert st.extra["input_min"] == pytest.approx(float(t.mean(-1).min()), rel=1e-5)
    assert NormStats.from_dict(st.to_dict()).extra["input_min"] == st.extra["input_min"]


def test_an_input_outside_the_training_range_warns_and_strict_range_refuses(tmp_path, caplog):
    # Was: exit 0, saturated output, no word about it.
    _, model, cfg, st = checkpoint(tmp_path / "m.ckpt", stats=_range_stats())
    img = RNG.integers(100, 4000, (1, 32, 32)).astype(np.uint16)
    with caplog.at_level(logging.WARNING, logger="musplit"):
        predict_image(model, cfg, st, img)
    text = caplog.text
    assert "outside the model's training range" in text and "above 3x the training clip" in text
    assert "clip of 20.6" in text and "--strict-range" in text and "--input-scale" in text
    with pytest.raises(InputError, match=r"above 3x the training clip.*refused: --strict-range"):
        predict_image(model, cfg, st, img, strict_range=True)
    # within range (even above the clip, below 3x): no word; a few hot pixels neither
    caplog.clear()
    calm = RNG.uniform(0, 250, (1, 64, 64)).astype(np.float32)
    calm[0, 0, 0] = 1e5
    with caplog.at_level(logging.WARNING, logger="musplit"):
        predict_image(model, cfg, st, calm, brightness="off", strict_range=True)
    assert "training range" not in caplog.text
    # far below the training minimum (by more than 2x the clip): refused as well
    with pytest.raises(InputError, match="below the training minimum"):
        predict_image(model, cfg, st, calm - 400, brightness="off", strict_range=True)
    # the streaming path checks the same way
    from musplit.predict import predict_to_zarr

    with pytest.raises(InputError, match="training range"):
        predict_to_zarr(model, cfg, st, img, tmp_path / "o.zarr", strict_range=True)
    assert not (tmp_path / "o.zarr").exists()


def test_predict_strict_range_flag_and_the_warning_on_stderr(tmp_path, capsys):
    ckpt, *_ = checkpoint(tmp_path / "m.ckpt", stats=_range_stats())
    image = tmp_path / "u16.tif"
    tifffile.imwrite(image, RNG.integers(100, 4000, (2, 32, 32)).astype(np.uint16),
                     photometric="minisblack")
    code, _, err = run(["predict", ckpt, image, "--out", tmp_path / "a.tif", "--strict-range"],
                       capsys)
    one_line_error(code, err, "training range", "20.6", "--strict-range")
    assert not (tmp_path / "a.tif").exists()
    # without the flag: predicted, and the warning is printed by the CLI's logging
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "musplit", "predict", str(ckpt), str(image),
                           "--out", str(tmp_path / "b.tif")], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "outside the model's training range" in proc.stderr
    assert "above 3x the training clip" in proc.stderr and (tmp_path / "b.tif").exists()


# -- row 8: channel lists --------------------------------------------------------------------
def test_mix_and_target_channel_lists_are_checked(tmp_path, capsys):
    # Was: --mix-channels 0,1,2 with a 2-channel model: exit 1, a ValueError traceback;
    # 0,0 and 1,,0 were accepted.
    ckpt, *_ = checkpoint(tmp_path / "m.ckpt")
    two = tmp_path / "two.tif"
    three = tmp_path / "three.tif"
    tifffile.imwrite(two, (RNG.random((2, 32, 32, 2)) * 900).astype(np.float32),
                     photometric="minisblack")
    tifffile.imwrite(three, (RNG.random((2, 32, 32, 3)) * 900).astype(np.float32),
                     photometric="minisblack")
    out = tmp_path / "p.tif"
    code, _, err = run(["predict", ckpt, three, "--mix-channels", "0,1,2", "--out", out],
                       capsys)
    one_line_error(code, err, "--mix-channels 0,1,2", "names 3 channels", "model splits 2")
    code, _, err = run(["predict", ckpt, two, "--mix-channels", "0,1,2", "--out", out], capsys)
    one_line_error(code, err, "--mix-channels 0,1,2", "channel 2 does not exist",
                   "channels 0..1")
    code, _, err = run(["predict", ckpt, two, "--mix-channels", "0,0", "--out", out], capsys)
    one_line_error(code, err, "--mix-channels", "channel 0 more than once")
    code, _, err = run(["predict", ckpt, two, "--mix-channels", "1,,0", "--out", out], capsys)
    one_line_error(code, err, "--mix-channels", "empty item")
    assert not out.exists()
    code, _, err = run(["predict", ckpt, two, "--mix-channels", "0,1", "--out", out], capsys)
    assert code == 0, err
    for bad, word in (("0,0", "more than once"), ("1,,0", "empty item"),
                      ("0,5", "channel 5 does not exist")):
        code, _, err = run(["evaluate", "--pred", out, "--target", three,
                            "--target-channels", bad], capsys)
        one_line_error(code, err, "--target-channels", word)
    code, _, err = run(["evaluate", "--pred", out, "--target", three], capsys)
    one_line_error(code, err, "differ in shape", "--axes", "--target-channels")


def test_int_list_refuses_empty_items_and_repeated_channels():
    assert int_list("2, 3", "--channels") == [2, 3]
    assert int_list(None, "--channels") is None
    for bad in ("1,,2", "1,", "", " ", "a,b"):
        with pytest.raises(InputError, match="--channels"):
            int_list(bad, "--channels")
    with pytest.raises(InputError, match="--target-channels 1,0,1 names channel 1 more"):
        int_list("1,0,1", "--target-channels")
    assert int_list("0,0", "--frames") == [0, 0]  # not a channel list
    with pytest.raises(InputError, match="--frames"):
        int_list("0,0", "--frames", unique=True)


# -- rows 11 and 12: small frames ------------------------------------------------------------
def test_training_on_frames_too_small_for_a_split_names_the_file(tmp_path, capsys):
    # Was: "the largest frame (40x40) is too small to hold out a validation region ..." with
    # no file named.
    data = tmp_path / "small.tif"
    tifffile.imwrite(data, blobs(2, 40, 40), photometric="minisblack")
    cfg = tiny_yaml(tmp_path / "cfg.yaml", data)
    code, _, err = run(["train", "--config", cfg, "--max-steps", "1", "--out",
                        tmp_path / "r"], capsys)
    one_line_error(code, err, str(data), "40x40", "more frames", "--patch")
    code, _, err = run(["train", "--config", cfg, "--patch", "64", "--max-steps", "1",
                        "--out", tmp_path / "r"], capsys)
    one_line_error(code, err, str(data), "40x40", "64")


def test_predict_pads_an_image_smaller_than_the_patch(tmp_path, capsys):
    # README said such an image is refused; it is predicted (docs/tiling.md, "Covering the
    # frame": off-frame content from the training padding mode), and sanely so: the split
    # of a 40x40 crop agrees with the same region of the whole image's split.
    ckpt, model, cfg, st = checkpoint(tmp_path / "m.ckpt", patch=64)
    big = (500 + 300 * RNG.standard_normal((1, 128, 128))).astype(np.float32)
    crop = big[:, 44:84, 44:84]
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, crop[0])
    code, _, err = run(["predict", ckpt, small, "--out", tmp_path / "p.tif"], capsys)
    assert code == 0, err
    got = open_image(tmp_path / "p.tif").read()
    assert got.shape == (1, 40, 40, 2) and np.isfinite(got).all()
    ref = predict_image(model, cfg, st, big).mean[:, 44:84, 44:84]
    for k in range(2):
        assert np.corrcoef(got[..., k].ravel(), ref[..., k].ravel())[0, 1] > 0.95
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "a training image smaller than the patch" in readme
