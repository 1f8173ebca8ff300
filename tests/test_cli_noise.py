"""``musplit noise-model fit|show``: real runs in-process on small TIFFs, one-line errors."""

import re

import click
import numpy as np
import pytest
import tifffile
import torch

from musplit.cli import main
from musplit.cli.noise import BOOTSTRAP_NAMES, DEFAULTS, noise_model
from musplit.noise import (
    BOOTSTRAP_METHODS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_ITERATIONS,
    DEFAULT_MAX_PAIRS,
    load_noise_model,
)

FAST = ["--iterations", "40", "--batch-size", "2000", "--n-gaussian", "2", "--no-progress"]


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def series(tmp_path):
    """A static series of 8 noisy frames (two channels, shot + read noise) and its clean
    average, as TIFFs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    clean = np.stack([100 + 800 * (xx + yy) / 62.0, 50 + 400 * xx / 31.0], -1)
    noisy = 2 * rng.poisson(np.broadcast_to(clean / 2, (8, 32, 32, 2))) + rng.normal(
        0, 5, (8, 32, 32, 2))
    tifffile.imwrite(tmp_path / "noisy.tif", noisy.astype(np.float32), imagej=False,
                     metadata={"axes": "QYXS"})
    tifffile.imwrite(tmp_path / "clean.tif", clean[..., 0].astype(np.float32))
    return tmp_path


def test_fit_then_show(series, capsys):
    out = series / "nm_ch0.npz"
    base = ["noise-model", "fit", "--noisy", str(series / "noisy.tif"), "--axes", "SYXC",
            "--clean", str(series / "clean.tif"), "--channel", "0", "--out", str(out)] + FAST
    args = base + ["--plot", str(series / "nm_ch0.png")]
    code, text, err = run(args, capsys)
    assert code == 0, err
    assert f"wrote {out}" in text and "pixel pairs used" in text
    assert (series / "nm_ch0.png").read_bytes()[:4] == b"\x89PNG"
    model = load_noise_model(out)
    assert (model.n_gaussian, model.n_coeff, model.channel_name) == (2, 2, "ch0")
    _, var = model.moments(torch.tensor([300.0, 800.0]))
    assert torch.allclose(var, torch.tensor([625.0, 1625.0]), rtol=0.15)  # 2 s + 5²

    code, text, err = run(["noise-model", "show", str(out)], capsys)
    assert code == 0, err
    assert "musplit noise model, format 1" in text and "channel: ch0" in text
    assert "K = 2, polynomial coefficients D = 2" in text
    assert f"[{model.min_signal:.6g}, {model.max_signal:.6g}]" in text
    assert len(re.findall(r"k=\d:", text)) == 6  # 3K rows of weights

    before = out.read_bytes()  # an existing output is refused, untouched
    code, _, err = run(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already exists" in err
    assert out.read_bytes() == before
    code, _, err = run(base + ["--overwrite", "--seed", "1"], capsys)
    assert code == 0, err
    assert out.read_bytes() != before


def test_bootstrap_fit_of_the_second_channel(series, capsys):
    out = series / "nm_ch1.npz"
    code, text, err = run(["noise-model", "fit", "--noisy", str(series / "noisy.tif"),
                           "--axes", "SYXC", "--channel", "1", "--bootstrap", "mean",
                           "--out", str(out)] + FAST, capsys)
    assert code == 0, err
    model = load_noise_model(out)
    assert model.channel_name == "ch1"
    assert 40 < model.min_signal < 70 and 420 < model.max_signal < 480  # channel 1: 50..450


@pytest.mark.parametrize("extra, needle", [
    (["--clean", "{d}/missing.tif"], "missing.tif"),
    ([], "either --clean FILE or --bootstrap"),
    (["--clean", "{d}/clean.tif", "--bootstrap", "mean"], "either --clean"),
    (["--bootstrap", "mean", "--channel", "5"], "--channel 5 is out of range"),
    (["--clean", "{d}/three.tif", "--clean-axes", "SYX"], "multiple of the clean count"),
    (["--clean", "{d}/nan.tif"], "non-finite"),
    (["--bootstrap", "mean", "--out-name", "nm.txt"], "must end in .npz"),
    (["--bootstrap", "mean", "--plot", "{d}/nm.jpg"], "must end in .png"),
])
def test_bad_input_is_one_line_and_exit_2(series, capsys, extra, needle):
    tifffile.imwrite(series / "three.tif", np.ones((3, 32, 32), np.float32),
                     photometric="minisblack")
    bad = np.ones((32, 32), np.float32)
    bad[3, 3] = np.nan
    tifffile.imwrite(series / "nan.tif", bad)
    extra = [a.replace("{d}", str(series)) for a in extra]
    out = str(series / "nm.npz")
    if "--out-name" in extra:
        i = extra.index("--out-name")
        out = str(series / extra[i + 1])
        del extra[i:i + 2]
    code, _, err = run(["noise-model", "fit", "--noisy", str(series / "noisy.tif"), "--axes",
                        "SYXC", "--out", out] + FAST + extra, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (series / "nm.npz").exists()


def test_show_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "nm.npz"
    np.savez(path, trained_weight=np.full((3, 2), np.nan, np.float32), min_signal=0.0,
             max_signal=1.0, min_sigma=0.1)
    code, _, err = run(["noise-model", "show", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(path) in err and "NaN" in err


def test_the_help_shows_every_default(capsys):
    code, _, _ = run(["noise-model", "fit", "--help"], capsys)
    assert code == 0
    fit = noise_model.commands["fit"]
    ctx = click.Context(fit, info_name="fit", show_default=True)  # the group's setting
    shown = 0
    for p in fit.params:
        record = p.get_help_record(ctx)
        if record is None or p.required or (p.is_flag and not p.secondary_opts):
            continue
        text = record[1]
        assert "[default: " in text or "(default: " in text, p.name
        shown += 1
    assert shown == 19  # every option but the required ones and the plain flags


def test_the_cli_spells_the_library_defaults():
    assert BOOTSTRAP_NAMES == BOOTSTRAP_METHODS
    assert DEFAULTS == {"iterations": DEFAULT_ITERATIONS, "batch_size": DEFAULT_BATCH_SIZE,
                        "max_pairs": DEFAULT_MAX_PAIRS}


def test_a_bad_flag_value_exits_2(series, capsys):
    code, _, err = run(["noise-model", "fit", "--noisy", str(series / "noisy.tif"),
                        "--bootstrap", "mean", "--out", str(series / "nm.npz"),
                        "--n-gaussian", "0"], capsys)
    assert code == 2 and "--n-gaussian" in err
