"""Two to four structures (issue 18, item 3): the synthetic structure generator, the model's
channel count following the data, the 2…4 limit as one line, and C = 3 and C = 4 trained,
predicted and evaluated end to end from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import yaml

from musplit.config import preset
from musplit.data.io import write_tiff
from musplit.data.structures import STRUCTURES, add_poisson_gaussian, generate_structures
from musplit.errors import ConfigError, InputError
from tests.test_cli_denoisplit import one_line_error, run


# -- the generator ------------------------------------------------------------------------
@pytest.mark.parametrize("c", [2, 3, 4])
def test_the_generator_gives_c_distinct_structures_scaled_to_one(c):
    s = generate_structures(3, 64, c, seed=1)
    assert s.clean.shape == (3, 64, 64, c) and s.clean.dtype == np.float32
    assert s.names == STRUCTURES[:c]
    for k in range(c):
        assert np.percentile(s.clean[..., k], 99.9) == pytest.approx(1.0, rel=1e-4)
        assert s.clean[..., k].min() >= 0
    flat = s.clean.reshape(-1, c).T
    corr = np.corrcoef(flat)
    assert np.abs(corr[~np.eye(c, dtype=bool)]).max() < 0.5  # structures, not copies
    again = generate_structures(3, 64, c, seed=1)
    np.testing.assert_array_equal(s.clean, again.clean)
    assert not np.array_equal(s.clean, generate_structures(3, 64, c, seed=2).clean)
    np.testing.assert_allclose(s.mix(), s.clean.mean(-1), rtol=1e-5, atol=1e-6)


def test_the_structures_live_at_distinct_scales():
    """Blobs are smooth and large, filaments and puncta fine: the share of a channel's energy
    above a spatial frequency tells them apart (what lets a network split the sum)."""
    s = generate_structures(4, 128, 4, seed=0).clean

    def high_share(img):
        f = np.abs(np.fft.rfft2(img - img.mean())) ** 2
        fy = np.fft.fftfreq(img.shape[0])[:, None]
        fx = np.fft.rfftfreq(img.shape[1])[None, :]
        return f[np.hypot(fy, fx) > 0.08].sum() / f.sum()

    share = {n: np.mean([high_share(s[i, ..., k]) for i in range(4)])
             for k, n in enumerate(STRUCTURES)}
    assert share["blobs"] < 0.5 * min(share["filaments"], share["puncta"], share["membranes"])


def test_poisson_gaussian_noise_has_the_mean_and_variance_of_its_model():
    clean = np.full((200, 200), 0.5, np.float32)
    noisy = add_poisson_gaussian(clean, peak=40.0, read_sigma=2.0, seed=3)
    assert noisy.mean() == pytest.approx(20.0, abs=0.1)
    assert noisy.var() == pytest.approx(20.0 + 4.0, rel=0.05)


@pytest.mark.parametrize("c", [1, 5])
def test_the_generator_refuses_other_counts(c):
    with pytest.raises(InputError, match="2 to 4"):
        generate_structures(1, 32, c)


# -- the channel count follows the data ----------------------------------------------------
@pytest.mark.parametrize("channels", [[0, 1, 2], [3, 1, 0, 2]])
def test_out_channels_follows_the_chosen_channels(channels):
    cfg = preset("cpu-small", data={"path": "x.tif", "channels": channels})
    assert cfg.model.out_channels == len(channels)
    assert cfg.updated({"data": {"channels": [0, 1]}}).model.out_channels == 2
    assert cfg.updated({"train": {"max_steps": 3}}).model.out_channels == len(channels)


def test_a_given_out_channels_that_differs_from_the_data_is_refused():
    with pytest.raises(ConfigError, match="data has 2 target channels, model.out_channels is 3"):
        preset("cpu-small", data={"path": "x.tif", "channels": [0, 1]},
               model={"out_channels": 3})


@pytest.mark.parametrize("over,needle", [
    ({"data": {"path": "x.tif", "channels": [0, 1, 2, 3, 4]}}, "5 target channel(s)"),
    ({"model": {"out_channels": 5}}, "out_channels is 5"),
    ({"model": {"out_channels": 1}}, "out_channels is 1"),
])
def test_channel_counts_outside_two_to_four_are_one_line(over, needle):
    with pytest.raises(ConfigError) as e:
        preset("cpu-small", **over)
    msg = str(e.value)
    assert needle in msg and "2 to 4" in msg and "\n" not in msg


# -- the command line, end to end -----------------------------------------------------------
def _tiny_yaml(path, data):
    cfg = preset(
        "cpu-small", name="tiny",
        data={"path": str(data), "pad": "zeros", "patch": 32},
        model={"lc": "lean", "filters": 8, "z_dims": [4, 4], "patch": 32, "scales": 3,
               "dropout": 0.0},
        train={"max_steps": 2, "batch_size": 4, "val_every_steps": 2},
    ).model_dump(mode="json")
    del cfg["model"]["out_channels"]  # follows the data, as a user's config would leave it
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("c", [3, 4])
def test_c_structures_train_predict_and_evaluate_from_the_command_line(tmp_path, capsys, c):
    data = tmp_path / "data"
    code, out, err = run(["generate", "structures", "--channels", c, "--frames", 6, "--size", 64,
                          "--out", data], capsys)
    assert code == 0, err
    clean = data / "clean.tif"
    names = list(STRUCTURES[:c])
    assert json.loads((data / "manifest.json").read_text())["channel_names"] == names
    run_dir = tmp_path / "run"
    code, out, err = run(["train", "--config", _tiny_yaml(tmp_path / "c.yaml", clean),
                          "--out", run_dir], capsys)
    assert code == 0, err
    assert f"{c} structures to split ({', '.join(names)})" in out + err
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["out_channels"] == c

    pred = tmp_path / "pred.tif"
    chans = ",".join(str(k) for k in range(c))
    code, out, err = run(["predict", run_dir / "best.ckpt", clean, "--mix-channels", chans,
                          "--out", pred], capsys)
    assert code == 0, err
    with tifffile.TiffFile(pred) as tf:
        arr = tf.asarray()
        assert tf.imagej_metadata["Labels"][:c] == names  # a hyperstack Fiji opens
    assert arr.shape[-3:] == (c, 64, 64) and np.isfinite(arr).all()

    report = tmp_path / "metrics.json"
    code, out, err = run(["evaluate", "--pred", pred, "--target", clean, "--target-channels",
                          chans, "--out", report], capsys)
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header == ["metric", *names, "mean"]
    summary = json.loads(report.read_text())["summary"]["ri_psnr"]
    assert set(summary) == {*names, "mean"}
    assert all(np.isfinite(summary[n]["mean"]) for n in names)


def test_a_file_of_five_channels_without_channels_is_one_line(tmp_path, capsys):
    path = write_tiff(tmp_path / "five.tif", np.random.default_rng(0).random(
        (4, 64, 64, 5), dtype=np.float32), axes="SYXC")
    code, _, err = run(["train", "--data", path, "--max-steps", 1, "--patch", 32,
                        "--out", tmp_path / "run"], capsys)
    one_line_error(code, err, "five.tif", "5 channels", "2 to 4", "--channels")
    code, _, err = run(["train", "--data", path, "--channels", "0,1,2,3,4", "--max-steps", 1,
                        "--patch", 32, "--out", tmp_path / "run2"], capsys)
    one_line_error(code, err, "5 target channel(s)", "2 to 4")


def test_a_single_channel_file_for_training_is_one_line(tmp_path, capsys):
    path = write_tiff(tmp_path / "one.tif", np.random.default_rng(0).random(
        (4, 64, 64, 1), dtype=np.float32), axes="SYXC")
    code, _, err = run(["train", "--data", path, "--max-steps", 1, "--patch", 32,
                        "--out", tmp_path / "run"], capsys)
    one_line_error(code, err, "one.tif", "1 channel", "2 to 4")
