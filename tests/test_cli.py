"""The command line: real runs in-process, exit codes, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from musplit.cli import main
from musplit.data.io import open_image
from musplit.data.synthetic import generate_critters


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("cmd", [[], ["generate"], ["generate", "critters"], ["info"], ["demo"]])
def test_help_for_every_command(cmd, capsys):
    code, out, _ = run(cmd + ["--help"], capsys)
    assert code == 0
    assert "Usage:" in out


def test_generate_critters_then_info(tmp_path, capsys):
    out_dir = tmp_path / "crit"
    code, out, err = run(["generate", "critters", "--frames", "10", "--size", "64",
                          "--connector", "0", "--seed", "3", "--out", str(out_dir)], capsys)
    assert code == 0, err
    img = out_dir / "critters.tif"
    src = open_image(img)  # axes come from the file's metadata
    data = src.read()
    assert data.shape == (10, 64, 64, 2) and data.dtype == np.float32
    assert src.channel_names == ["ch1", "ch2"]
    np.testing.assert_array_equal(data, generate_critters(10, size=64, connector=0, seed=3))
    split = json.loads((out_dir / "split.json").read_text())
    assert split == {"train": list(range(2, 10)), "val": [0], "test": [1]}
    man = json.loads((out_dir / "manifest.json").read_text())
    assert man["params"]["connector"] == 0 and man["shape"] == [10, 64, 64, 2]

    code, out, err = run(["info", str(img)], capsys)
    assert code == 0, err
    assert "10 frames of 64x64, 2 channels" in out

    # refuses to overwrite, without touching the existing file
    before = img.read_bytes()
    code, _, err = run(["generate", "critters", "--frames", "10", "--size", "64",
                        "--out", str(out_dir)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "exists" in err
    assert img.read_bytes() == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["info", "{tmp}/missing.tif"], "missing.tif"),
        (["info", "{tmp}/empty.tif"], "empty.tif"),
        (["generate", "critters", "--frames", "1", "--out", "{tmp}/x"], "--frames"),
        (["generate", "critters", "--bogus"], "--bogus"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, needle, tmp_path, capsys):
    (tmp_path / "empty.tif").write_bytes(b"")
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert needle in err
    assert "Traceback" not in err
    # click usage errors print a usage line plus the error; ours print exactly one line
    assert len(lines) <= 3


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "musplit", "info", str(tmp_path / "nope.tif")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope.tif" in proc.stderr


def test_import_official_then_predict(tmp_path, capsys):
    import torch

    from musplit.config import ModelConfig
    from musplit.models import build
    from musplit.models.official import musplit_to_reference
    from musplit.splitter import Splitter

    model = build(ModelConfig(kind="hae", lc="lean", filters=8, z_dims=[4, 4, 4, 4], scales=3,
                              dropout=0.0)).eval()
    ref = tmp_path / "ref.ckpt"
    torch.save({"state_dict": musplit_to_reference(model.state_dict()), "epoch": 1}, ref)
    stats = {"clip_max": 10.0, "input_mean": 1.0, "input_std": 2.0, "target_mean": [1.0, 1.0],
             "target_std": [2.0, 2.0], "alpha": [0.5, 0.5]}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    out = tmp_path / "model.ckpt"
    code, _, err = run(["import-official", str(ref), "--out", str(out), "--kind", "hae",
                        "--stats-json", str(tmp_path / "stats.json")], capsys)
    assert code == 0, err
    s = Splitter.load(out)
    assert s.stats.input_std == 2.0 and s.config.model.kind == "hae"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(s.model(x)[0], model(x)[0], atol=1e-5)
    img = np.random.default_rng(0).random((1, 40, 52)).astype(np.float32)
    pred = s.predict(img, grid=32)
    assert pred.mean.shape == (1, 40, 52, 2) and np.isfinite(pred.mean).all()
    # a missing reference file is a one-line user error
    code, _, err = run(["import-official", str(tmp_path / "nope.ckpt"), "--out",
                        str(tmp_path / "m2.ckpt")], capsys)
    assert code == 2 and "nope.ckpt" in err and len(err.strip().splitlines()) == 1
