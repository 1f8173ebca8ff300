"""The demo's report and figures, read as a biologist reads them (issue 17): what was split and
how well, each metric explained in plain words, what the std map means and its units, colour
bars on every image panel, context windows drawn within the frame with the legend outside it,
and run times only beside the machine's load."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from musplit import figures
from musplit.data.context import lateral_context
from musplit.demo import run_demo

JARGON = re.compile(r"\bspec\b|β-NLL|beta-NLL|\bR[0-3] for\b|§|DESIGN\.md|\.\./shared",
                    re.IGNORECASE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One tiny demo run: 10 frames of 64 px, 2 training steps per model, 2 samples."""
    out = tmp_path_factory.mktemp("demo")
    echoed: list[str] = []
    report = run_demo(out, frames=10, size=64, steps=2, samples=2, echo=echoed.append)
    return out, report.read_text(), [str(x) for x in echoed]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_the_report_says_what_was_split_and_what_training_saw(demo):
    out, text, _ = demo
    split = json.loads((out / "data" / "split.json").read_text())
    n_test, n_train = len(split["test"]), len(split["train"])
    what = _section(text, "## What was split")
    assert "**ch1**" in what and "**ch2**" in what  # the two structures
    assert "superimposition" in what and "average of the two channels" in what
    assert f"**{n_test} test frames**" in what and "neither model saw" in what
    assert f"{n_train} training frames" in what
    assert "2 steps of 16 patches per model" in what and "64 × 64 pixel patches" in what


def test_every_metric_is_explained_in_plain_words(demo):
    _, text, _ = demo
    how = _section(text, "## How well")
    assert "**RI-PSNR** (range-invariant peak signal-to-noise ratio, in decibels" in how
    assert "+1 dB means about 11 % less error" in how
    assert "**SSIM** (structural similarity, 0 to 1, 1 = identical)" in how
    assert "standard error of the mean over the 1 test frames" in how
    assert "docs/evaluation.md" in how  # a document of this repository
    assert "| RI-PSNR (dB) | SSIM (0 to 1) |" in how


def test_the_report_has_no_jargon_and_cites_only_the_repositorys_docs(demo):
    _, text, _ = demo
    assert not [line for line in text.splitlines() if JARGON.search(line)]
    cited = set(re.findall(r"[\w./-]+\.md\b", text))
    assert cited and all(re.fullmatch(r"docs/\w+\.md", c) for c in cited), cited
    assert "(G = " not in text and "MMSE" not in text


def test_the_std_map_is_explained_with_its_units(demo):
    _, text, _ = demo
    std = _section(text, "## The uncertainty (std) maps")
    assert "standard deviation of those samples" in std
    assert "same units as the image intensities (intensity, a.u." in std
    assert "2 possible splits" in std  # the samples of this run


def test_run_times_are_shown_only_beside_the_machine_load(demo):
    out, text, echoed = demo
    assert "train (s)" not in text and "predict (s)" not in text
    timed = [line for line in text.splitlines() + echoed if re.search(r"\d s\b", line)]
    assert len(timed) >= 6  # two models and the whole run, in the report and on the terminal
    for line in timed:
        assert re.search(r"load average \d+\.\d over the last minute, \d+\.\d over 5 minutes, "
                         rf"on {os.cpu_count()} CPU cores", line), line
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["lean"]["load"]) == {"load_1min", "load_5min", "load_15min", "cpus"}


def test_without_a_load_average_no_time_is_shown(monkeypatch):
    from musplit import demo as demo_mod

    def no_load():
        raise OSError("no load average here")

    monkeypatch.setattr(demo_mod.os, "getloadavg", no_load)
    assert demo_mod.machine_load() is None
    results = {"lean": {"title": "HVAE Lean-LC", "train_s": 12.0, "predict_s": 1.0,
                        "load": demo_mod.machine_load()}}
    lines = demo_mod.timing_lines(results, elapsed=20.0, load=None)
    assert "Run times are not shown" in "\n".join(lines)
    assert not any(re.search(r"\d s\b", line) for line in lines)
    assert demo_mod.run_times(results, elapsed=20.0, load=None) is None


def test_a_db_gain_is_translated_into_less_error():
    from musplit.demo import db_to_error

    assert db_to_error(1.0) == pytest.approx(0.109, abs=1e-3)
    assert db_to_error(6.0) == pytest.approx(0.5, abs=2e-3)
    assert db_to_error(-1.0) == pytest.approx(-0.122, abs=1e-3)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions draw, kept open instead of saved and closed."""
    kept = []

    def keep(fig, path, dpi=110):
        kept.append(fig)
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    yield kept
    for fig in kept:
        figures._pyplot().close(fig)


def _colour_bars(fig):
    """Axes that hold no image and are shown: the colour bars."""
    return [a for a in fig.axes if not a.images and a.axison]


def test_every_prediction_panel_has_a_colour_bar_with_its_unit(drawn, tmp_path):
    rng = np.random.default_rng(0)
    mean, target = rng.random((32, 40, 2)), rng.random((32, 40, 2))
    figures.plot_prediction(mean.mean(-1), mean, tmp_path / "p.png", target=target,
                            std=0.1 * rng.random((32, 40, 2)), channel_names=["ch1", "ch2"])
    (fig,) = drawn
    panels = [a for a in fig.axes if a.images]
    bars = _colour_bars(fig)
    assert len(panels) == 7 and len(bars) == 7  # input; prediction, truth and std per channel
    labels = sorted(a.get_ylabel() for a in bars)
    assert labels == ["intensity"] * 5 + ["std, intensity"] * 2  # the default unit
    assert sum("std" in a.get_title() for a in panels) == 2


def test_context_windows_stay_inside_the_frame_and_the_legend_outside_it(drawn, tmp_path):
    h, w, p = 96, 128, 32
    frame = np.random.default_rng(1).random((h, w)).astype(np.float32)
    corner = np.array([40, 50])
    stack = lateral_context(frame, corner[None], patch=p, scales=3, pad="zeros")[0]
    figures.plot_context_stack(frame, corner, stack, tmp_path / "c.png",
                               targets=stack[:1], channel_names=["ch1"])
    (fig,) = drawn
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, w) and ax.get_ylim() == (h, 0)
    windows = [r for r in ax.patches]
    assert len(windows) == 3
    for r in windows:  # the 128 px window of scale 2 is cut to the 96-row frame
        x, y = r.get_xy()
        assert 0 <= x and x + r.get_width() <= w and 0 <= y and y + r.get_height() <= h
    assert windows[2].get_height() == h and windows[2].get_linestyle() == "--"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[2] == "scale 2: 128 px (beyond the frame)" and labels[0] == "scale 0: 32 px"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert not legend_box.overlaps(ax.get_window_extent(renderer))
    # the padding the network sees beyond the frame is hatched, only where there is some
    hatched = [sum(bool(q.get_hatch()) for q in a.patches) for a in fig.axes[1:4]]
    assert hatched[0] == 0 and hatched[1] == 0 and hatched[2] > 0
    assert len([a for a in _colour_bars(fig) if a.get_ylabel()]) == 2


def test_the_demo_writes_its_figures(demo):
    out, text, _ = demo
    for png in ("context_stack.png", "prediction_lean.png", "prediction_vanilla.png"):
        assert (out / png).stat().st_size > 10_000
        assert f"({png})" in text
