"""Training for an unknown mixing ratio (issue 18, item 4): ``data.alpha_ranges``.

The config refuses a wrong count, bad bounds and combinations with the other mixing settings;
the sampler draws per-patch weights inside the ranges (normalised to sum 1) and mixes the
channels with them exactly; ``musplit train --alpha-ranges`` parses and refuses; a tiny run end
to end records the midpoints as the ratio it assumes, and ``predict`` and ``info`` say so (the
prediction's metadata hold it too).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from musplit.cli.options import range_list
from musplit.config import Config, preset
from musplit.config.flags import train_overrides
from musplit.data.context import apply_d4, lateral_context
from musplit.data.mixing import assumed_weights, draw_weights, mixing_line, mixing_summary
from musplit.data.normalize import compute_stats
from musplit.data.patches import TrainPatches
from musplit.errors import ConfigError, InputError
from musplit.predict.result import Prediction
from tests.test_cli_denoisplit import one_line_error, run
from tests.test_dataset import smooth_targets
from tests.test_training import tiny_config

P, S = 16, 3
RANGES3 = [(0.1, 0.3), (0.5, 0.9), (0.0, 0.2)]


def four_channel(**data):
    return Config.validated({
        "data": {"path": "x.tif", "channels": [0, 1, 2, 3], **data},
        "model": {"out_channels": 4}})


# -- config ---------------------------------------------------------------------------------
def test_the_config_takes_one_range_per_channel_for_two_to_four_channels():
    cfg = tiny_config().updated({"data": {"alpha_ranges": [[0.2, 0.8], [0.2, 0.8]]}})
    assert cfg.data.alpha_ranges == [(0.2, 0.8), (0.2, 0.8)]
    assert Config.validated(cfg.model_dump(mode="json")).data.alpha_ranges == [(0.2, 0.8)] * 2
    four = four_channel(alpha_ranges=[[0.1, 0.4]] * 4)
    assert len(four.data.alpha_ranges) == 4
    # a range may reach beyond 1: only the ratio of the weights matters after normalising
    assert four_channel(alpha_ranges=[[0, 2], [1, 1], [0.5, 3], [0, 0]]).data.alpha_ranges


@pytest.mark.parametrize("data,needle", [
    ({"alpha_ranges": [[0.2, 0.8]] * 3}, "3 (lo, hi) ranges for 2 target channels"),
    ({"alpha_ranges": [[0.2, 0.8]]}, "one (lo, hi) per target channel"),
    ({"alpha_ranges": [[0.8, 0.2], [0.2, 0.8]]}, "channel 0's range (0.8, 0.2)"),
    ({"alpha_ranges": [[0.2, 0.8], [-0.1, 0.5]]}, "channel 1's range (-0.1, 0.5)"),
    ({"alpha_ranges": [[0, 0], [0, 0]]}, "every range is (0, 0)"),
    ({"alpha_ranges": [[0.2, 0.8]] * 2, "alpha_range": [0.2, 0.8]}, "data.alpha_range"),
    ({"alpha_ranges": [[0.2, 0.8]] * 2, "alpha": [0.5, 0.5]}, "data.alpha sets fixed"),
    ({"alpha_ranges": [[0.2, 0.8]] * 2, "input_is_sum": True}, "data.input_is_sum"),
])
def test_the_config_refuses_a_bad_alpha_ranges_in_one_line(data, needle):
    with pytest.raises(ConfigError) as e:
        tiny_config().updated({"data": data})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_four_channels_with_three_ranges_are_refused():
    with pytest.raises(ConfigError, match="3 \\(lo, hi\\) ranges for 4 target channels"):
        four_channel(alpha_ranges=[[0.1, 0.4]] * 3)


def test_the_old_alpha_range_still_loads_and_is_reported_as_its_two_channel_ranges():
    cfg = tiny_config().updated({"data": {"alpha_range": [0.6, 0.9]}})
    assert cfg.data.alpha_range == (0.6, 0.9) and cfg.data.alpha_ranges is None
    assert assumed_weights(None, cfg.data.alpha_range) == pytest.approx([0.75, 0.25])
    stats = compute_stats(smooth_targets(), alpha=[0.75, 0.25])
    s = mixing_summary(cfg.data, stats)
    assert s["input"] == "range"
    assert np.allclose(s["trained_on"], [[0.6, 0.9], [0.1, 0.4]])


# -- the sampler ----------------------------------------------------------------------------
def test_draw_weights_are_uniform_in_their_ranges_then_normalised():
    raw = draw_weights(np.random.default_rng(7), 20000, RANGES3, normalise=False)
    lo, hi = np.array(RANGES3).T
    assert raw.shape == (20000, 3)
    assert (raw >= lo - 1e-7).all() and (raw <= hi + 1e-7).all()
    np.testing.assert_allclose(raw.mean(0), (lo + hi) / 2, atol=0.005)
    for c in range(3):  # uniform: ten equal bins each hold 10% +- 1.5%
        hist, _ = np.histogram(raw[:, c], bins=10, range=(lo[c], hi[c]))
        assert np.abs(hist / len(raw) - 0.1).max() < 0.015, (c, hist)
    # the channels are drawn independently
    assert abs(np.corrcoef(raw.T)[0, 1]) < 0.03
    norm = draw_weights(np.random.default_rng(7), 20000, RANGES3)
    np.testing.assert_allclose(norm, raw / raw.sum(1, keepdims=True), rtol=1e-5)


@pytest.fixture(scope="module")
def three():
    targets = smooth_targets(n=6, h=40, w=40, t=3)
    return targets, compute_stats(targets, [1, 2, 3, 4], alpha=assumed_weights(
        alpha_ranges=RANGES3))


def test_the_sampler_draws_normalised_weights_within_the_ranges_seeded(three):
    targets, stats = three
    ds = TrainPatches(targets, stats, [1, 2, 3, 4], patch=P, scales=S, alpha_ranges=RANGES3,
                      seed=3)
    w = np.concatenate([ds.draw(range(len(ds)))["alpha"] for _ in range(100)])
    assert w.shape == (100 * len(ds), 3)
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-5)
    lo, hi = np.array(RANGES3).T
    # w_c / w_k = u_c / u_k lies within [lo_c / hi_k, hi_c / lo_k]
    for c, k in ((0, 1), (1, 0), (2, 1)):
        r = w[:, c] / w[:, k]
        assert r.min() >= lo[c] / hi[k] - 1e-5 and r.max() <= hi[c] / lo[k] + 1e-5
        assert r.max() - r.min() > 0.8 * (hi[c] / lo[k] - lo[c] / hi[k])  # they span it
    # the same seed draws the same weights, another seed others
    again = TrainPatches(targets, stats, [1, 2, 3, 4], patch=P, scales=S,
                         alpha_ranges=RANGES3, seed=3).draw(range(len(ds)))["alpha"]
    np.testing.assert_array_equal(again, w[: len(ds)])
    other = TrainPatches(targets, stats, [1, 2, 3, 4], patch=P, scales=S,
                         alpha_ranges=RANGES3, seed=4).draw(range(len(ds)))["alpha"]
    assert not np.allclose(other, w[: len(ds)])


def test_the_input_is_the_weighted_sum_of_the_channels(three):
    targets, stats = three
    frames = [1, 2, 3, 4]
    ds = TrainPatches(targets, stats, frames, patch=P, scales=S, alpha_ranges=RANGES3,
                      augment="d4", pad="zeros", seed=0)
    draw = ds.draw(range(len(ds)))
    x, y = ds.sample(**draw)
    for k in range(len(ds)):
        clipped = stats.clip(targets[frames[draw["frame"][k]]])
        w = draw["alpha"][k]
        mix = sum(float(w[c]) * clipped[..., c] for c in range(3))  # the slow reference
        lc = lateral_context(mix, [draw["corners"][k]], P, S, pad="zeros")[0]
        want = apply_d4(stats.normalize_input(lc), draw["transform"][k])
        np.testing.assert_allclose(x[k], want, atol=1e-5)
    # the targets are the unweighted channels, as without ranges
    plain = TrainPatches(targets, stats, frames, patch=P, scales=S, augment="d4", pad="zeros")
    np.testing.assert_allclose(y, plain.sample(**(draw | {"alpha": None}))[1], atol=1e-6)
    # without per-patch weights the channel stacks mix at the statistics' (assumed) ratio
    np.testing.assert_allclose(ds.sample(draw["frame"], draw["corners"], draw["transform"])[0],
                               plain.sample(draw["frame"], draw["corners"],
                                            draw["transform"])[0], atol=1e-5)


def test_the_sampler_refuses_bad_ranges_and_weights(three):
    targets, stats = three
    with pytest.raises(InputError, match="3 target channels"):
        TrainPatches(targets, stats, patch=P, scales=S, alpha_ranges=RANGES3[:2])
    with pytest.raises(InputError, match="not both"):
        TrainPatches(targets, stats, patch=P, scales=S, alpha_ranges=RANGES3,
                     alpha_range=(0.2, 0.8))
    summed = compute_stats(targets, input_is_sum=True)
    with pytest.raises(InputError, match="summed input"):
        TrainPatches(targets, summed, patch=P, scales=S, alpha_ranges=RANGES3)
    ds = TrainPatches(targets, stats, patch=P, scales=S, alpha_ranges=RANGES3)
    d = ds.draw(range(4))
    with pytest.raises(InputError, match=r"\(K, 3\) weights"):
        ds.sample(d["frame"], d["corners"], alpha=np.full(4, 0.5))


# -- the command line -----------------------------------------------------------------------
def test_the_flag_parses_into_the_config_overrides():
    assert range_list("0.2:0.8, 0.1:0.9", "--alpha-ranges") == [[0.2, 0.8], [0.1, 0.9]]
    assert range_list(None, "--alpha-ranges") is None
    over = train_overrides(alpha_ranges=[[0.2, 0.8], [0, 1]])
    assert over["data"]["alpha_ranges"] == [[0.2, 0.8], [0, 1]]
    assert "alpha_ranges" not in train_overrides()["data"]


@pytest.mark.parametrize("value,needle", [
    ("", "is empty"),
    ("0.2:0.8,", "has an empty item"),
    ("0.2-0.8,0.2:0.8", "'0.2-0.8' is not lo:hi"),
    ("0.2:0.8:0.9,0.1:0.2", "is not lo:hi"),
    ("a:b,0.1:0.2", "'a:b' is not lo:hi"),
    ("0.8:0.2,0.1:0.2", "the range 0.8:0.2 must satisfy 0 <= lo <= hi"),
    ("-1:0.2,0.1:0.2", "must satisfy"),
])
def test_bad_flag_text_is_one_line_and_exit_2(tmp_path, capsys, value, needle):
    code, _, err = run(["train", "--critters", "n0", "--alpha-ranges", value,
                        "--out", tmp_path / "r"], capsys)
    one_line_error(code, err, "--alpha-ranges", needle)
    assert not (tmp_path / "r").exists()


def test_a_flag_that_the_config_refuses_is_one_line(tmp_path, capsys):
    code, _, err = run(["train", "--critters", "n0", "--alpha-ranges", "0.2:0.8,0.2:0.8,0:1",
                        "--out", tmp_path / "r"], capsys)
    one_line_error(code, err, "3 (lo, hi) ranges for 2 target channels")
    code, _, err = run(["train", "--critters", "n0", "--preset", "cpu-real", "--alpha-ranges",
                        "0.2:0.8,0.2:0.8", "--out", tmp_path / "r"], capsys)
    one_line_error(code, err, "data.input_is_sum")


def test_a_tiny_range_trained_run_reports_the_ratio_it_assumes(tmp_path, capsys):
    cfg = tiny_config(max_steps=2, val_every_steps=2).model_dump(mode="json")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "run"
    code, _, err = run(["train", "--config", tmp_path / "cfg.yaml", "--alpha-ranges",
                        "0.2:0.8,0.1:0.3", "--max-steps", "2", "--out", runs], capsys)
    assert code == 0, err
    from musplit.splitter import Splitter

    sp = Splitter.load(runs / "best.ckpt")
    assert sp.config.data.alpha_ranges == [(0.2, 0.8), (0.1, 0.3)]
    np.testing.assert_allclose(sp.stats.alpha, [0.5 / 0.7, 0.2 / 0.7], rtol=1e-6)

    # predict: one line on stderr, and the metadata of the file
    image = np.random.default_rng(0).random((1, 64, 64, 1), dtype=np.float32) * 20
    from musplit.data.io import write_tiff

    write_tiff(tmp_path / "mix.tif", image, "SYXC")
    out = tmp_path / "pred.tif"
    code, _, err = run(["predict", runs / "best.ckpt", tmp_path / "mix.tif", "--out", out,
                        "--brightness", "off"], capsys)
    assert code == 0, err
    a, b = sp._names()  # the channel names the prediction files carry
    line = (f"assumed mixing ratio: {a} 0.71, {b} 0.29 (trained on ranges {a} [0.2, 0.8], "
            f"{b} [0.1, 0.3], normalised to sum 1 per patch")
    assert line in err
    meta = Prediction.load(out).meta["mixing"]
    assert meta["input"] == "ranges" and meta["trained_on"] == [[0.2, 0.8], [0.1, 0.3]]
    np.testing.assert_allclose(meta["assumed"], [0.5 / 0.7, 0.2 / 0.7], rtol=1e-6)
    # a Zarr output records it too
    code, _, err = run(["predict", runs / "best.ckpt", tmp_path / "mix.tif", "--out",
                        tmp_path / "pred.zarr", "--brightness", "off"], capsys)
    assert code == 0, err
    assert Prediction.load(tmp_path / "pred.zarr").meta["mixing"]["input"] == "ranges"
    # info
    code, out_text, err = run(["info", runs / "best.ckpt"], capsys)
    assert code == 0, err
    assert line in out_text


def test_a_fixed_ratio_model_says_it_assumes_its_weights(tmp_path, capsys):
    from pathlib import Path

    ckpt = Path(__file__).parent / "fixtures" / "hae_2026-12-07.ckpt"
    code, out_text, err = run(["info", ckpt], capsys)
    assert code == 0, err
    assert "assumed mixing ratio: " in out_text and "0.50" in out_text
    assert "trained on this fixed ratio only" in out_text
    cfg = preset("cpu-small", data={"synthetic": {"frames": 3, "size": 32}})
    assert mixing_summary(cfg.data, None)["assumed"] is None
    assert "unknown" in mixing_line(mixing_summary(cfg.data, None))


def test_the_bench_section_renders_its_table_and_reading():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import mixing_ratio

    def cell(v):
        return {"ch0": {"mean": v, "sem": 0.1}, "ch1": {"mean": v, "sem": 0.1},
                "mean": {"mean": v, "sem": 0.1}}

    rows = [{"ratio": w, "baseline": cell(15.0), "fixed": cell(20 - 10 * abs(w - 0.5)),
             "ranges": cell(19.5)} for w in (0.1, 0.5, 0.9)]
    result = {"rows": rows, "ranges": [[0.1, 0.9], [0.1, 0.9]], "steps": 3, "frames": 4,
              "size": 32, "seed": 0, "samples": 1, "test_frames": [0], "threads": 1,
              "seconds": 60, "machine": "a test", "load": [0.1, 0.2],
              "models": {"fixed": {"train_s": 1, "assumed": [0.5, 0.5]},
                         "ranges": {"train_s": 1, "assumed": [0.5, 0.5]}}}
    text = mixing_ratio.section(result)
    assert text.startswith("## Unknown mixing ratio (issue 18)")
    assert "| 0.1 | 15.00 ± 0.10 | 16.00 ± 0.10 | 19.50 ± 0.10 | +3.50 |" in text
    assert "ahead at 2 of the 2 other ratios" in text and "-0.50 dB from it" in text
    assert "bench/figures/mixing_ratio.png" in text and "load average" not in text
