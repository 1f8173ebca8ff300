"""MicroSSIM and MicroMS3IM from the ``microssim`` package (issue 18): fitted per channel on the
whole evaluated set, scored per frame, in the Python API, ``musplit evaluate`` (table, JSON,
CSV), the demo and benchmark tables, and a one-line note instead of a crash without the
package (Python 3.10). The package is imported inside the tests that compare with it, so that
the package-missing test runs on any Python."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from musplit import metrics
from musplit.cli import main
from musplit.data.io import write_tiff
from musplit.demo import score_cell
from musplit.errors import InputError
from musplit.evaluation import evaluate_arrays, format_table, write_metrics

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stack(n=3, size=32, seed=0) -> np.ndarray:
    """Smooth positive frames with a background, as fluorescence: (n, size, size)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size)).cumsum(1).cumsum(2)
    x -= x.min(axis=(1, 2), keepdims=True)
    return 20 + x / x.max() * 500


def _noisy(gt, scale, seed=1):
    return gt + np.random.default_rng(seed).normal(scale=scale, size=gt.shape)


def _package(gt, pred) -> list[float]:
    """The package itself: one fit on the whole stack, then a score per frame."""
    from microssim import MicroSSIM

    m = MicroSSIM().fit(gt, pred)
    return [float(m.score(a, b)) for a, b in zip(gt, pred, strict=True)]


def test_a_perfect_prediction_scores_one():
    gt = _stack(2, 176)  # MicroMS3IM's five scales need 176 px
    r = metrics.micro_ssim(gt, gt.copy())
    np.testing.assert_allclose(r["microssim"], 1.0, atol=1e-9)
    np.testing.assert_allclose(r["microms3im"], 1.0, atol=1e-5)
    assert r["fit"]["ri_factor"] == pytest.approx(1.0) and r["notes"] == []
    assert r["fit"]["offset_gt"] == pytest.approx(np.percentile(gt, 3))


def test_the_score_falls_as_noise_is_added():
    gt = _stack()
    means = [np.mean(metrics.micro_ssim(gt, _noisy(gt, s), multiscale=False)["microssim"])
             for s in (1, 5, 20, 80)]
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), means
    assert means[0] > 0.99 and means[-1] < 0.9


def test_it_is_the_package_fitted_once_on_the_whole_set():
    from microssim import MicroSSIM, micro_structural_similarity

    # The package's README example (Poisson noise, a prediction 10x dimmer), small.
    rng = np.random.default_rng(42)
    gt = 200 + rng.integers(0, 65535, (2, 32, 32))
    pred = rng.poisson(gt) / 10
    r = metrics.micro_ssim(gt, pred, multiscale=False)
    np.testing.assert_allclose(r["microssim"], micro_structural_similarity(gt, pred), rtol=1e-5)
    # frames of different brightness: one fit on all of them, not one per frame
    gt = _stack(3) * np.array([1.0, 3.0, 0.3])[:, None, None]
    pred = _noisy(gt, 10)
    r = metrics.micro_ssim(gt, pred, multiscale=False)
    np.testing.assert_allclose(r["microssim"], _package(gt, pred), rtol=1e-5)
    alone = MicroSSIM().fit(gt[2], pred[2]).score(gt[2], pred[2])
    assert abs(r["microssim"][2] - alone) > 1e-3
    fit = MicroSSIM().fit(gt, pred).get_parameters()
    for k in ("offset_gt", "offset_pred", "max_val", "ri_factor"):
        assert r["fit"][k] == pytest.approx(fit[k], rel=1e-4), k


def test_a_positive_scale_or_offset_of_the_prediction_does_not_change_it():
    gt = _stack(2, 176)
    pred = _noisy(gt, 20)
    ref = metrics.micro_ssim(gt, pred)
    for changed in (3 * pred, 0.001 * pred, 1000 * pred, pred + 50):
        r = metrics.micro_ssim(gt, changed)
        np.testing.assert_allclose(r["microssim"], ref["microssim"], atol=1e-4)
        np.testing.assert_allclose(r["microms3im"], ref["microms3im"], atol=1e-3)
    # the reported fit is in the prediction's own units: α grows as the prediction dims
    small = metrics.micro_ssim(gt, 0.001 * pred, multiscale=False)["fit"]["ri_factor"]
    assert small == pytest.approx(1000 * ref["fit"]["ri_factor"], rel=1e-3)
    # why musplit rescales before the fit: the package's α search, started at 1, does not
    # move for a prediction 1000x brighter, and the score collapses
    assert max(_package(gt, 1000 * pred)) < 0.01 and min(ref["microssim"]) > 0.5


def test_evaluate_reports_it_per_channel_with_the_other_metrics():
    gt = np.stack([_stack(3, seed=0), _stack(3, seed=5)], -1)
    pred = _noisy(gt, 10)
    res = evaluate_arrays(gt, pred, channel_names=["actin", "tubulin"])
    assert list(res["summary"]) == ["ri_psnr", "psnr", "ssim", "microssim", "rmse"]
    vals = np.array(res["per_frame"]["microssim"])
    assert vals.shape == (3, 2)
    np.testing.assert_allclose(vals[:, 1], _package(gt[..., 1].astype(np.float32),
                                                    pred[..., 1].astype(np.float32)), rtol=1e-4)
    s = res["summary"]["microssim"]
    assert s["tubulin"]["mean"] == pytest.approx(vals[:, 1].mean())
    assert s["mean"]["mean"] == pytest.approx(vals.mean())
    assert set(res["microssim_fit"]) == {"actin", "tubulin"}
    # 32-px frames are too small for MicroMS3IM: left out, with the reason
    assert "microms3im" not in res["summary"]
    assert res["notes"] == ["MicroMS3IM not computed: frames of 32 x 32 px are smaller than "
                            "the 176 px its five scales need"]
    lines = res["table"].splitlines()
    row = next(x for x in lines if x.startswith("MicroSSIM"))
    assert f"{s['actin']['mean']:.3f} ± {s['actin']['sem']:.3f}" in row
    assert lines[-1] == res["notes"][0]


def test_a_target_without_signal_is_one_clear_error():
    flat = np.full((2, 16, 16), 7.0)
    with pytest.raises(InputError, match="no signal above its background"):
        metrics.micro_ssim(flat, _noisy(flat, 1))


def test_musplit_evaluate_prints_and_writes_microssim(tmp_path, capsys):
    gt = np.stack([_stack(2, 176, seed=0), _stack(2, 176, seed=3)], -1).astype(np.float32)
    target = write_tiff(tmp_path / "gt.tif", gt, channel_names=["a", "b"])
    pred = write_tiff(tmp_path / "pred.tif", _noisy(gt, 15).astype(np.float32),
                      channel_names=["a", "b"])
    code = main(["evaluate", "--pred", str(pred), "--target", str(target),
                 "--out", str(tmp_path / "m.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = {line.split()[0]: line for line in out.out.splitlines() if line}
    assert "MicroSSIM" in rows and "MicroMS3IM" in rows and "not computed" not in out.out
    data = json.loads((tmp_path / "m.json").read_text())
    assert set(data["summary"]) >= {"ri_psnr", "ssim", "microssim", "microms3im"}
    assert 0.5 < data["summary"]["microssim"]["mean"]["mean"] <= 1
    assert data["notes"] == [] and set(data["microssim_fit"]) == {"a", "b"}
    with open(tmp_path / "m.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and "microssim" in table[0] and "microms3im" in table[0]
    assert float(table[3]["microssim"]) == pytest.approx(data["per_frame"]["microssim"][1][1])


def test_without_the_package_there_is_a_note_not_a_crash(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "microssim", None)  # as on Python 3.10: import fails
    gt = np.stack([_stack(2), _stack(2, seed=4)], -1)
    res = evaluate_arrays(gt, _noisy(gt, 5))
    assert "microssim" not in res["summary"] and "microms3im" not in res["per_frame"]
    assert "microssim_fit" not in res and res["notes"] == [metrics.MISSING_NOTE]
    assert format_table(res).splitlines()[-1] == metrics.MISSING_NOTE
    assert "ri_psnr" in res["summary"] and "ssim" in res["summary"]
    csv_path = write_metrics(res, tmp_path / "m.json")[1]
    assert csv_path.read_text().splitlines()[0] == "frame,channel,ri_psnr,psnr,ssim,rmse"
    assert score_cell(res["summary"], "microssim") == "–"
    # the command line: the other metrics and the note, exit status 0
    target = write_tiff(tmp_path / "gt.tif", gt.astype(np.float32))
    pred = write_tiff(tmp_path / "pred.tif", _noisy(gt, 5).astype(np.float32))
    code = main(["evaluate", "--pred", str(pred), "--target", str(target)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "RI-PSNR" in out.out and metrics.MISSING_NOTE in out.out
    assert not re.search(r"^MicroSSIM +\d", out.out, re.MULTILINE)  # no MicroSSIM row


def test_demo_and_benchmark_tables_have_the_microssim_column():
    gt = np.stack([_stack(2), _stack(2, seed=4)], -1)
    res = evaluate_arrays(gt, _noisy(gt, 5), channel_names=["a", "b"])
    m = res["summary"]["microssim"]["mean"]
    assert score_cell(res["summary"], "microssim") == f"{m['mean']:.3f} ± {m['sem']:.3f}"

    compare = _bench("compare_methods")
    row = {"method": "unet", "label": "U-Net", "patch": 64, "params": 10, "step_s": 0.1,
           "steps": 5, "peak_step_memory_gb": None, "ri_psnr": [20.0, 21.0],
           "ri_psnr_mean": 20.5, "ssim": [0.5, 0.6], "ssim_mean": 0.55}
    meta = {"budget_s": 1, "threads": 1, "connector": 25, "frames": 4, "frame_size": 64,
            "batch_size": 2, "patch": 64, "size": "tiny", "size_note": "test size",
            "test_frames": 1, "machine": "test"}
    scored = {**row, **compare._scores(res)}
    lines = compare.markdown([row, scored], meta).splitlines()
    head = next(x for x in lines if x.startswith("| method"))
    assert head.endswith("| SSIM mean | MicroSSIM ch1 | MicroSSIM ch2 | MicroSSIM mean |")
    body = [x for x in lines if x.startswith("| U-Net")]
    assert body[0].endswith("| 0.550 | – | – | – |")  # a row measured before MicroSSIM
    assert body[1].endswith(f"| {m['mean']:.3f} |")

    real = _bench("real_data")
    s = res["summary"]
    entry = {k: {n: s[k][n] for n in ("a", "b", "mean")} for k in ("ri_psnr", "ssim",
                                                                    "microssim")}
    old = {k: v for k, v in entry.items() if k != "microssim"}
    gains = {n: 0.0 for n in ("a", "b", "mean")}
    rows = [{"channels": [0, 3], "names": ["a", "b"], "steps": 2, "samples": 1, "date": "d",
             "gains_db": {"lean": gains, "vanilla": gains}, "baseline": old, "lean": entry,
             "vanilla": entry}]
    text = real.section({"rows": rows})
    assert "| SSIM Vanilla | MicroSSIM baseline | MicroSSIM Lean-LC | MicroSSIM Vanilla |" in text
    mean_row = next(x for x in text.splitlines() if x.startswith("| 0+3 | **mean** |")
                    and "±" in x.split("|")[3] and x.count("|") == 9)
    assert f"| – | {m['mean']:.3f} ± {m['sem']:.3f} |" in mean_row


def test_microms3im_uses_the_microssim_fit():
    from microssim import MicroMS3IM, MicroSSIM

    gt = _stack(2, 176)
    pred = 0.5 * _noisy(gt, 20)
    r = metrics.micro_ssim(gt, pred)
    fit = MicroSSIM().fit(gt, pred).get_parameters()
    ms = MicroMS3IM(**fit)
    np.testing.assert_allclose(r["microms3im"], [float(ms.score(a, b)) for a, b in
                                                 zip(gt, pred, strict=True)], atol=1e-4)
