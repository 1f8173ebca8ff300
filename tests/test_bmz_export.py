"""BioImage Model Zoo export (docs/bmz.md): a tiny trained model exported at 64x64 with inner
padding (grid 16 inside 32-px patches) passes bioimageio.core's test, and the package's
TorchScript model reproduces ``musplit predict`` (mean mode) within the stated tolerance."""

import zipfile

import numpy as np
import pytest
import torch
import yaml

import musplit.predict as P
from musplit.bmz.compat import patch_bioimageio
from musplit.bmz.export import export_bmz
from musplit.cli import main
from musplit.errors import InputError
from musplit.splitter import Splitter
from musplit.training import train
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("bmz") / "run", progress=False)


@pytest.fixture(scope="module")
def package(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "model.zip"
    return out, export_bmz(ckpt, out, size=64, grid=16)


def test_package_passes_bioimageio_core_and_matches_predict(ckpt, package, tmp_path):
    out, info = package
    assert out.is_file() and info["grid"] == 16 and info["size"] == 64
    assert 0 <= info["measured"] <= info["tolerance"] < 1e-2
    patch_bioimageio()
    from bioimageio.core import test_model

    summary = test_model(out)
    assert summary.status == "passed", summary.format()
    reproduced = {d.name for d in summary.details if d.status == "passed"
                  and d.name.startswith("Reproduce test outputs")}
    assert reproduced == {"Reproduce test outputs from test inputs (torchscript)",
                          "Reproduce test outputs from test inputs (pytorch_state_dict)"}

    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        z.extractall(tmp_path)
    assert {"rdf.yaml", "README.md", "cover.png", "musplit_config.yaml", "test_input.npy",
            "test_output.npy", "musplit_split.pt", "musplit_state_dict.pt"} <= names
    rdf = yaml.safe_load((tmp_path / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5") and rdf["license"] == "BSD-3-Clause"
    tol = rdf["config"]["bioimageio"]["reproducibility_tolerance"][0]["absolute_tolerance"]
    assert tol == pytest.approx(info["tolerance"])
    readme = (tmp_path / "README.md").read_text()
    assert "ICCV 2023" in readme and "critters" in readme
    assert yaml.safe_load((tmp_path / "musplit_config.yaml").read_text())["model"]["lc"] == "lean"

    # The package's own model on its test input, against musplit predict on the same image.
    x = np.load(tmp_path / "test_input.npy")
    model = torch.jit.load(str(tmp_path / "musplit_split.pt"))
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    s = Splitter.load(ckpt)
    ref = P.predict_image(s.model, s.config, s.stats, x[0, 0], padding="inner", grid=16,
                          samples=1, sample_mode="mean", brightness="off").mean[0]
    assert y.shape == (1, 2, 64, 64)
    assert np.abs(y[0] - np.moveaxis(ref, -1, 0)).max() <= tol
    # the command line, the way a user checks a package: musplit predict --sample-mode mean
    import tifffile

    tifffile.imwrite(tmp_path / "test_input.tif", x[0, 0])
    code = main(["predict", str(ckpt), str(tmp_path / "test_input.tif"), "--out",
                 str(tmp_path / "cli.tif"), "--grid", "16", "--samples", "1",
                 "--sample-mode", "mean", "--brightness", "off"])
    assert code == 0
    cli = tifffile.imread(tmp_path / "cli.tif")  # (C, H, W): one frame
    assert np.abs(y[0] - cli.reshape(y[0].shape)).max() <= tol
    # the facade, with the model in its deterministic mode, gives the same split
    s.model.sample_mode = "mean"
    facade = s.predict(x[0, 0], padding="inner", grid=16, samples=1).mean[0]
    assert np.abs(y[0] - np.moveaxis(facade, -1, 0)).max() <= tol
    # and on another image: the traced graph is not specialised to the test input
    x2 = (np.random.default_rng(3).random((64, 64)) * float(x.max())).astype(np.float32)
    with torch.no_grad():
        y2 = model(torch.from_numpy(x2)[None, None]).numpy()
    ref2 = P.predict_image(s.model, s.config, s.stats, x2, padding="inner", grid=16,
                           samples=1, sample_mode="mean", brightness="off").mean[0]
    assert np.abs(y2[0] - np.moveaxis(ref2, -1, 0)).max() <= tol


def test_refusals_are_one_line(ckpt, package, tmp_path, capsys):
    out, _ = package
    assert main(["export-bmz", str(tmp_path / "missing.ckpt"), "--out",
                 str(tmp_path / "m.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.ckpt" in err and "\n" not in err
    assert main(["export-bmz", str(ckpt), "--out", str(out), "--size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "\n" not in err
    with pytest.raises(InputError, match="multiple of the tile grid"):
        export_bmz(ckpt, tmp_path / "m.zip", size=72, grid=16)
    assert not (tmp_path / "m.zip").exists()
    assert out.is_file()  # the existing package is left as it was


def test_variants_that_cannot_be_exported_say_which_and_why(ckpt):
    from musplit.bmz.export import _check_exportable

    s = Splitter.load(ckpt)
    _check_exportable(s, "tiny")  # the plain model is exportable
    cfg = s.config
    consistent = cfg.model_copy(update={"predict": cfg.predict.model_copy(
        update={"consistent": True})})
    floor = cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"lc_alignment": "floor"})})
    for c, why in ((consistent, "predict.consistent"), (floor, "floor LC alignment")):
        with pytest.raises(InputError) as e:
            _check_exportable(Splitter(s.model, c, s.stats), "tiny")
        msg = str(e.value)
        assert "cannot export tiny (hvae, lc=lean)" in msg and why in msg and "\n" not in msg
    with pytest.raises(InputError, match="no normalisation statistics"):
        _check_exportable(Splitter(s.model, cfg, None), "tiny")


@pytest.mark.parametrize("lc", ["lean", "none"])
def test_the_demo_s_models_export_and_pass_bioimageio_core(lc, tmp_path):
    """The two architectures ``make demo`` trains (Lean-LC and Vanilla at the demo's size),
    briefly trained: their packages pass bioimageio.core's test and reproduce predict."""
    from bioimageio.core import test_model

    from musplit.config.presets import demo_preset

    best = train(demo_preset(lc, frames=8, size=128, steps=4, seed=0), tmp_path / "run",
                 progress=False)
    info = export_bmz(best, tmp_path / f"demo-{lc}.zip", size=128)
    assert 0 <= info["measured"] <= info["tolerance"] < 1e-2
    patch_bioimageio()
    summary = test_model(tmp_path / f"demo-{lc}.zip")
    assert summary.status == "passed", summary.format()
