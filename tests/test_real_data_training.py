"""Training on data as users have it: one large frame, frames of different sizes, folders of
files, spatial splits, and validation data that holds empty (constant) tiles."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from musplit.checkpoint import load_checkpoint
from musplit.cli import main
from musplit.config import preset
from musplit.data.context import lateral_context
from musplit.data.dataset import GridPatches, TrainPatches, frame_shapes
from musplit.data.normalize import compute_stats
from musplit.data.sources import load_targets
from musplit.data.splits import Region, Split, load_split, save_split, spatial_split
from musplit.errors import InputError
from musplit.training import StopReport, train

P, S = 16, 3


def blobs(h, w, t=2, n=12, seed=0, floor=0.1):
    """Bright Gaussian blobs on a constant floor, like deconvolved nuclei: (H, W, T)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.full((h, w, t), floor, dtype=np.float32)
    for k in range(t):
        for _ in range(n):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
            out[..., k] += (k + 1) * 10 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return out


def expected(frame, stats, corner, pad="reflect", patch=P):
    """(input, target) from first principles on the whole frame (context reaches anywhere)."""
    clipped = stats.clip(frame)
    mix = stats.mix(clipped)
    x = stats.normalize_input(lateral_context(mix, [corner], patch, S, pad)[0])
    r, c = corner
    y = stats.normalize_target(clipped[r : r + patch, c : c + patch], axis=-1)
    return x, np.moveaxis(y, -1, 0)


# -- splits ---------------------------------------------------------------------------------
def test_spatial_split_bands_fit_the_patch_grid_and_record_to_json(tmp_path):
    split, notes = spatial_split([(1024, 1024)], 64)
    assert notes == [] and split.kind == "spatial" and split.train == [0]
    (v,), (t,) = split.val_regions, split.test_regions
    for r in (v, t):
        assert r.x == (0, 1024) and r.height % 64 == 0 and r.height >= 0.1 * 1024
        assert r.y[0] % 64 == 0 and 0 <= r.y[0] < r.y[1] <= 1024
    assert not v.overlaps(t)
    p = save_split(split, tmp_path / "split.json")
    raw = json.loads(p.read_text())
    assert raw["kind"] == "spatial" and raw["regions"]["val"][0]["x"] == [0, 1024]
    assert load_split(p) == split
    assert "validation frame 0 rows" in split.describe([(1024, 1024)])
    # a frame split keeps its old file format
    assert Split([2, 3], [0], [1]).to_dict() == {"train": [2, 3], "val": [0], "test": [1]}


def test_spatial_split_puts_validation_where_every_channel_has_signal():
    frame = np.full((512, 256, 2), 0.1, dtype=np.float32)
    frame[320:384, :, 0] = 5.0  # channel 0 is bright in rows 320-384 ...
    frame[300:400, 50:200, 1] = 3.0  # ... and channel 1 in rows 300-400
    frame[0:64, :, 0] = 9.0  # rows 0-64 have channel 0 only
    split, notes = spatial_split([frame.shape[:2]], 64, frames=lambda i: frame,
                                 val_fraction=0.1, test_fraction=0.1)
    assert notes == []
    assert split.val_regions[0].y == (320, 384)
    # a channel without any signal is reported, not silently validated on
    frame[..., 1] = 0.1
    _, notes = spatial_split([frame.shape[:2]], 64, frames=lambda i: frame,
                             channel_names=["actin", "tubulin"])
    assert len(notes) == 1 and "no signal in tubulin" in notes[0]


def test_spatial_split_of_frames_of_different_sizes_and_too_small_frames():
    split, _ = spatial_split([(200, 150), (300, 300), (100, 90)], 32)
    assert split.val_regions[0].frame == 1  # the largest frame hosts validation
    split.validate(3, shapes=[(200, 150), (300, 300), (100, 90)])
    with pytest.raises(InputError, match="too small to hold out a validation region"):
        spatial_split([(40, 40)], 32)
    bad = Split([0], [], [], val_regions=(Region(0, (0, 64), (0, 64)),),
                test_regions=(Region(0, (32, 96), (0, 64)),))
    with pytest.raises(InputError, match="overlap"):
        bad.validate(1, shapes=[(128, 128)])
    outside = Split([0], [], [], val_regions=(Region(0, (0, 200), (0, 64)),))
    with pytest.raises(InputError, match="outside frame 0"):
        outside.validate(1, shapes=[(128, 128)])


# -- datasets -------------------------------------------------------------------------------
def test_no_training_patch_overlaps_a_held_out_region():
    frame = blobs(768, 1024)
    targets = frame[None]
    split, _ = spatial_split([(768, 1024)], 64, frames=lambda i: frame)
    stats = compute_stats(targets, split.train, exclude=split.held_out)
    ds = TrainPatches(targets, stats, split.train, patch=64, scales=3, seed=0,
                      exclude=split.held_out)
    d = ds.draw(np.arange(len(ds)).repeat(20) % len(ds))
    c = d["corners"]
    for r in split.held_out:
        overlap = ((c[:, 0] < r.y[1]) & (c[:, 0] + 64 > r.y[0])
                   & (c[:, 1] < r.x[1]) & (c[:, 1] + 64 > r.x[0]))
        assert not overlap.any()
    # every allowed corner is reachable: patches come from both sides of each band
    allowed = ds.allowed_corners(0)
    assert allowed[c[:, 0], c[:, 1]].all()
    band_cols = sorted(x for r in split.held_out for x in r.x)
    assert c[:, 1].min() < band_cols[0] - 64 and c[:, 1].max() >= band_cols[-1]
    # and the inputs are the lateral context of the whole frame (it may reach into a band)
    x, y = ds.sample(d["frame"][:5], c[:5])
    for k in range(5):
        ex, ey = expected(frame, stats, c[k], patch=64)
        np.testing.assert_allclose(x[k], ex, atol=1e-5)
        np.testing.assert_allclose(y[k], ey, atol=1e-5)


def test_statistics_leave_out_the_held_out_pixels():
    frame = blobs(256, 256)
    frame[192:, :, 0] = 1000.0  # only in the held-out band
    region = Region(0, (192, 256), (0, 256))
    stats = compute_stats(frame[None], [0], quantile=1.0, exclude=[region])
    assert stats.clip_max < 1000
    ref = compute_stats(frame[None, :192], [0], quantile=1.0)
    np.testing.assert_allclose(stats.target_mean, ref.target_mean, rtol=1e-6)
    np.testing.assert_allclose(stats.target_std, ref.target_std, rtol=1e-6)


def test_frames_of_different_sizes_give_exact_patches():
    frames = [blobs(48, 40, seed=1), blobs(64, 56, seed=2), blobs(48, 40, seed=3)]
    assert frame_shapes(frames) == [(48, 40), (64, 56), (48, 40)]
    stats = compute_stats(frames)
    ds = TrainPatches(frames, stats, patch=P, scales=S, seed=4)
    assert len(ds) == 2 * (48 // P) * (40 // P) + (64 // P) * (56 // P)
    d = ds.draw(range(len(ds)))
    x, y = ds.sample(**d)
    for k in range(len(ds)):
        f = d["frame"][k]
        h, w = frames[f].shape[:2]
        assert 0 <= d["corners"][k][0] <= h - P and 0 <= d["corners"][k][1] <= w - P
        ex, ey = expected(frames[f], stats, d["corners"][k])
        np.testing.assert_allclose(x[k], ex, atol=1e-5)
        np.testing.assert_allclose(y[k], ey, atol=1e-5)
    grid = GridPatches(frames, stats, patch=P, scales=S)
    assert len(grid) == 2 * 3 * 2 + 4 * 3
    gx, _ = grid.__getitems__(list(range(len(grid))))
    f, c = grid.locate(range(len(grid)))
    for k in (0, 7, len(grid) - 1):
        np.testing.assert_allclose(gx[k].numpy(), expected(frames[f[k]], stats, c[k])[0],
                                   atol=1e-5)
    with pytest.raises(InputError, match="different channel counts"):
        frame_shapes([frames[0], frames[1][..., :1]])


def test_validation_grid_of_a_region_takes_context_from_the_whole_frame():
    frame = blobs(128, 96)
    stats = compute_stats(frame[None])
    region = Region(0, (64, 112), (16, 96))
    grid = GridPatches(frame[None], stats, regions=[region], patch=P, scales=S)
    f, c = grid.locate(range(len(grid)))
    assert len(grid) == (48 // P) * (80 // P)
    assert c[:, 0].min() == 64 and c[:, 1].min() == 16 and c[:, 0].max() + P <= 112
    x, y = grid.__getitems__(list(range(len(grid))))
    for k in range(len(grid)):
        ex, ey = expected(frame, stats, c[k])
        np.testing.assert_allclose(x[k].numpy(), ex, atol=1e-5)
        np.testing.assert_allclose(y[k].numpy(), ey, atol=1e-5)
    with pytest.raises(InputError, match="smaller than the patch"):
        GridPatches(frame[None], stats, regions=[Region(0, (0, 8), (0, 96))], patch=P, scales=S)


# -- loading --------------------------------------------------------------------------------
def _cfg(**data):
    return preset("cpu-small", data={"patch": 32, **data}, model={"patch": 32}).data


def test_one_frame_gets_a_spatial_split_and_a_folder_of_different_sizes_loads(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.moveaxis(blobs(256, 192), -1, 0),
                     metadata={"axes": "CYX"}, photometric="minisblack")
    data = load_targets(_cfg(path=str(tmp_path / "one.tif")))
    assert data.split.kind == "spatial" and data.shapes == [(256, 192)]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, (h, w) in enumerate([(96, 80), (128, 128), (64, 100)]):
        tifffile.imwrite(folder / f"f{i}.tif", np.moveaxis(blobs(h, w, t=3, seed=i), -1, 0),
                         metadata={"axes": "CYX"}, photometric="minisblack")
    data = load_targets(_cfg(path=str(folder), channels=[0, 2]))
    assert isinstance(data.targets, list) and data.shapes == [(96, 80), (128, 128), (64, 100)]
    assert data.targets[1].shape == (128, 128, 2)
    np.testing.assert_allclose(data.targets[1], blobs(128, 128, t=3, seed=1)[..., [0, 2]])
    same = load_targets(_cfg(path=str(folder / "f*.tif"), channels=[0, 2]))
    assert same.shapes == data.shapes
    listed = load_targets(_cfg(path=[str(folder / "f2.tif"), str(folder / "f0.tif")],
                               channels=[0, 2]))
    assert listed.shapes == [(64, 100), (96, 80)]


def test_bad_data_folders_give_one_clear_error(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.moveaxis(blobs(64, 64, t=3), -1, 0),
                     metadata={"axes": "CYX"}, photometric="minisblack")
    tifffile.imwrite(folder / "b.tif", np.moveaxis(blobs(64, 64, t=2), -1, 0),
                     metadata={"axes": "CYX"}, photometric="minisblack")
    code = main(["train", "--data", str(folder), "--channels", "0,1", "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "different channel counts" in err[0] and "a.tif has 3" in err[0]
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((2, 40, 40), np.float32) + 1, metadata={"axes": "CYX"},
                     photometric="minisblack")
    code = main(["train", "--data", str(small), "--channels", "0,1", "--out",
                 str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(small) in err[0] and "smaller" in err[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "--data", str(empty), "--out", str(tmp_path / "run3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "without image files" in err[0]


# -- training -------------------------------------------------------------------------------
def _tiny(path, out, *extra):
    return ["train", "--data", str(path), "--channels", "0,1", "--filters", "8",
            "--patch", "32", "--max-steps", "4", "--val-every", "2", "--batch-size", "4",
            "--out", str(out), *extra]


def test_training_from_one_768x1024_frame(tmp_path, capsys):
    img = tmp_path / "frame.ome.tif"
    tifffile.imwrite(img, np.moveaxis(blobs(768, 1024, n=40), -1, 0), metadata={"axes": "CYX"},
                     compression="zlib")
    run = tmp_path / "run"
    code = main(_tiny(img, run))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "spatial split" in out.out
    split = load_split(run / "split.json")
    assert split.kind == "spatial" and split.val_regions and split.test_regions
    payload = load_checkpoint(run / "last.ckpt")
    assert payload["extra"]["global_step"] == 4
    assert payload["extra"]["split"]["kind"] == "spatial"
    assert "spatial split" in payload["extra"]["split_description"]


def _constant_val_config(tmp_path, both=False):
    frames = np.stack([blobs(64, 64, seed=i) for i in range(6)])
    frames[0, ..., 1] = 0.1  # the validation frame: channel 1 is an empty (constant) tile
    if both:
        frames[0, ..., 0] = 0.1
    np.save(tmp_path / "frames.npy", frames)
    save_split(Split([2, 3, 4, 5], [0], [1]), tmp_path / "split.json")
    return preset(
        "cpu-small", name="const",
        data={"path": str(tmp_path / "frames.npy"), "axes": "SYXC", "patch": 32,
              "split": str(tmp_path / "split.json")},
        model={"lc": "lean", "filters": 8, "z_dims": [4, 4], "patch": 32, "scales": 3,
               "dropout": 0.0},
        train={"max_steps": 8, "batch_size": 4, "val_every_steps": 2,
               "early_stopping_patience": 100},
    )


@pytest.mark.parametrize("both", [False, True])
def test_a_constant_validation_tile_never_ends_the_run(tmp_path, both, caplog):
    run = tmp_path / "run"
    best = train(_constant_val_config(tmp_path, both), run, progress=False)
    last = load_checkpoint(run / "last.ckpt")
    assert last["extra"]["global_step"] == 8  # trained to --max-steps
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    skipped = [float(r["val_skipped_channels"]) for r in rows if r.get("val_skipped_channels")]
    assert skipped and set(skipped) == {2.0 if both else 1.0}
    vals = [r.get("val_psnr") for r in rows if r.get("val_skipped_channels")]
    b = load_checkpoint(best)["extra"]
    if both:
        assert all(not v for v in vals)  # no channel left: nothing logged, nothing selected
    else:
        assert all(v and math.isfinite(float(v)) for v in vals)
        assert b["val_psnr"] is not None and math.isfinite(b["val_psnr"])
        assert b["val_psnr"] == pytest.approx(max(float(v) for v in vals), abs=1e-4)
    assert "cannot be computed" in caplog.text


def test_a_run_that_stops_early_says_why(caplog):
    early = SimpleNamespace(stopped_epoch=3, wait_count=5, patience=5)
    ckpt = SimpleNamespace(best=21.5)
    report = StopReport(early, ckpt, max_steps=1000, max_epochs=None)
    trainer = SimpleNamespace(global_step=420, is_global_zero=True, current_epoch=3)
    report.on_train_end(trainer, None)
    assert report.message.startswith("training stopped early at step 420 of 1000")
    assert "did not improve for 5 validations" in report.message and "21.50 dB" in caplog.text
    done = StopReport(early, ckpt, max_steps=420, max_epochs=None)
    done.on_train_end(trainer, None)
    assert done.message is None
