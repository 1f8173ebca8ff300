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


# -- issue 15: real microscope files (info, predict, evaluate) -------------------------------
def _tiny_checkpoint(path):
    """A tiny deterministic (HAE) checkpoint with channel names, for reading-side CLI tests."""
    import torch

    from musplit.checkpoint import save_checkpoint
    from musplit.config import Config
    from musplit.data.normalize import NormStats
    from musplit.models import build

    cfg = Config.validated({
        "model": {"kind": "hae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "scales": 2,
                  "patch": 16, "dropout": 0.0},
        "data": {"patch": 16, "scales": 2, "pad": "reflect"},
        "predict": {"grid": 8, "batch_size": 16}})
    torch.manual_seed(0)
    model = build(cfg.model).eval()
    stats = NormStats(clip_max=5000.0, input_mean=500.0, input_std=300.0,
                      target_mean=[500.0, 500.0], target_std=[300.0, 300.0], alpha=[0.5, 0.5])
    return save_checkpoint(path, state_dict=model.state_dict(),
                           config=cfg.model_dump(mode="json"), stats=stats.to_dict(),
                           extra={"channel_names": ["nucleus", "actin"]})


def _damaged_lzw(path, how):
    """An LZW TIFF whose second strip is overwritten in the middle, or that is cut short."""
    import tifffile

    a = (np.random.default_rng(0).random((3, 32, 32)) * 1000).astype(np.uint16)
    tifffile.imwrite(path, a, compression="lzw", photometric="minisblack")
    data = bytearray(path.read_bytes())
    if how == "overwritten":
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[1]
            start = page.dataoffsets[0] + page.databytecounts[0] // 4
            n = page.databytecounts[0] // 2
        data[start : start + n] = b"\xff" * n
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["overwritten", "truncated"])
def test_damaged_compressed_tiff_is_one_line_for_info_and_predict(tmp_path, capsys, how):
    bad = _damaged_lzw(tmp_path / "bad.tif", how)
    word = "damaged file?" if how == "overwritten" else "trunc"
    code, _, err = run(["info", str(bad)], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and word in err
    ckpt = _tiny_checkpoint(tmp_path / "m.ckpt")
    code, _, err = run(["predict", str(ckpt), str(bad), "--out", str(tmp_path / "p.tif")],
                       capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and word in err
    assert not (tmp_path / "p.tif").exists()


def _two_series(path):
    import tifffile

    rng = np.random.default_rng(3)
    a = (rng.random((2, 32, 40)) * 4000).astype(np.uint16)
    b = (rng.random((2, 16, 20)) * 4000).astype(np.uint16)
    with tifffile.TiffWriter(path, ome=True) as w:
        w.write(a, photometric="minisblack",
                metadata={"axes": "CYX", "Channel": {"Name": ["dna", "act"]},
                          "PhysicalSizeX": 0.0775, "PhysicalSizeY": 0.0775})
        w.write(b, photometric="minisblack", metadata={"axes": "TYX"})
    return a, b


def test_info_series_level_pixel_size_and_channel_statistics(tmp_path, capsys):
    path = tmp_path / "two.ome.tif"
    a, _ = _two_series(path)
    code, out, err = run(["info", str(path)], capsys)
    assert code == 0, err
    assert "series 0 of 2" in out and "--series" in out
    assert "as SYXC: 1 frames of 32x40, 2 channels (dna, act)" in out
    assert "pixel size: 0.0775 x 0.0775 µm (y x x)" in out
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if "median" in ln)
    assert all(w in lines[header] for w in ("99.9%", "max", "saturated", "zeros"))
    dna = lines[header + 1].split()
    assert dna[0] == "dna" and float(dna[1]) == a[0].min() and float(dna[4]) == a[0].max()
    assert float(dna[2]) == pytest.approx(np.median(a[0]))
    assert lines[header + 2].split()[0] == "act"
    assert "pixels at 65535, the uint16 maximum" in out
    assert "statistics of all 1 frames" in out

    code, out, err = run(["info", str(path), "--series", "1"], capsys)
    assert code == 0, err
    assert "series 1 of 2" in out and "2 frames of 16x20, 1 channels" in out
    assert "pixel size: not recorded" in out

    code, out, err = run(["info", str(path), "--series", "3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"series 3 does not exist in {path} (it has 2 series: 0..1)" in err
    code, out, err = run(["info", str(path), "--level", "1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "level 1 does not exist" in err


def test_info_says_when_statistics_are_a_sample(tmp_path, capsys, monkeypatch):
    import musplit.data.io as io

    real = io.channel_statistics
    monkeypatch.setattr(io, "channel_statistics", lambda src: real(src, max_pixels=2 * 64))
    arr = np.random.default_rng(0).random((10, 8, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", arr)
    code, out, err = run(["info", str(tmp_path / "f.npy")], capsys)
    assert code == 0, err
    assert "statistics from a sample: 2 of 10 frames, 128 pixels per channel" in out
    assert "channel maximum" in out  # the float saturation rule is explained
    code, out, _ = run(["info", str(tmp_path / "f.npy"), "--no-stats"], capsys)
    assert code == 0 and "median" not in out
    code, _, err = run(["info", str(tmp_path / "f.npy"), "--series", "0"], capsys)
    assert code == 2 and "TIFF" in err and len(err.strip().splitlines()) == 1


def test_evaluate_target_series(tmp_path, capsys):
    from musplit.data.io import write_tiff

    path = tmp_path / "gt.ome.tif"
    _, b = _two_series(path)
    pred = write_tiff(tmp_path / "pred.tif", b[None].transpose(0, 2, 3, 1).astype(np.float32),
                      channel_names=["a", "b"])
    code, out, err = run(["evaluate", "--pred", str(pred), "--target", str(path),
                          "--axes", "CYX", "--series", "1"], capsys)
    assert code == 0, err
    assert "RI-PSNR" in out and "(1 frames;" in out
    code, _, err = run(["evaluate", "--pred", str(pred), "--target", str(path),
                        "--series", "2"], capsys)
    assert code == 2 and "series 2 does not exist" in err and len(err.strip().splitlines()) == 1
