"""Checkpoints written by an earlier musplit still load and predict the same (issue 16).

The files in ``tests/fixtures`` were written on 2026-12-07, before the code was restructured:
a deterministic HAE (made by ``tests.test_e2e._hae_checkpoint``) and a tiny HVAE trained for 4
steps through ``musplit train``, with the predictions that musplit made from them on that day.
"""

from pathlib import Path

import numpy as np
import pytest

from musplit.checkpoint import load_checkpoint
from musplit.cli import main
from musplit.data.io import open_image, write_tiff
from musplit.splitter import Splitter

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["hae", "hvae"])
def test_a_checkpoint_from_before_the_restructure_predicts_the_same(name):
    ref = np.load(FIX / "predictions_2026-12-07.npz")
    s = Splitter.load(FIX / f"{name}_2026-12-07.ckpt")
    p = s.predict(ref["input"], samples=2, seed=3, brightness="off")
    np.testing.assert_allclose(p.mean, ref[f"{name}_mean"], rtol=1e-4, atol=1e-4)


def test_the_old_checkpoint_layout_is_kept():
    payload = load_checkpoint(FIX / "hvae_2026-12-07.ckpt")
    assert payload["format_version"] == 1
    assert payload["config"]["model"]["kind"] == "hvae"
    assert "input_q999" in payload["stats"]["extra"]
    assert payload["extra"]["weights_sha256"]


def test_the_cli_predicts_with_an_old_checkpoint(tmp_path):
    ref = np.load(FIX / "predictions_2026-12-07.npz")
    img = tmp_path / "mix.tif"
    write_tiff(img, ref["input"][..., None], "SYXC")
    out = tmp_path / "pred.tif"
    code = main(["predict", str(FIX / "hae_2026-12-07.ckpt"), str(img), "--out", str(out),
                 "--brightness", "off"])
    assert code == 0
    np.testing.assert_allclose(open_image(out).read(), ref["hae_mean"], rtol=1e-4, atol=1e-4)
