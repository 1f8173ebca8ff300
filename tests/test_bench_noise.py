"""bench/denoisplit.py and bench/calibration.py (issue 18) at a microscopic size: both write
their JSON, section and figure, the tables hold every method and channel, and the numbers
are finite."""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import calibration as bench_calibration  # noqa: E402
import denoisplit as bench_denoisplit  # noqa: E402

TINY = ["--steps", "2", "--frames", "10", "--calibration-frames", "1", "--test-frames", "2",
        "--size", "32", "--samples", "2", "--threads", "1"]


def test_denoisplit_bench_writes_a_table_of_every_method_scored_against_the_clean_truth(
        tmp_path):
    res, fig = tmp_path / "results", tmp_path / "figures"
    assert bench_denoisplit.main([*TINY, "--peaks", "10", "--no-microssim", "--results",
                                  str(res), "--figures", str(fig)]) == 0
    for name in ("denoisplit.json", "denoisplit.md", "denoisplit_images.npz"):
        assert (res / name).is_file(), name
    assert (fig / "denoisplit.png").stat().st_size > 0
    result = json.loads((res / "denoisplit.json").read_text())
    (row,) = result["rows"]
    assert row["peak"] == 10 and result["steps"] == 2
    assert set(row["scores"]) == set(bench_denoisplit.LABELS)
    for key, s in row["scores"].items():
        for ch in ("ch0", "ch1", "mean"):
            assert math.isfinite(s["summary"]["ri_psnr"][ch]["mean"]), (key, ch)
    assert math.isfinite(row["gain_denoisplit_db"]["mean"])
    assert all(math.isfinite(f["nll"]) for f in row["noise_models"])
    text = (res / "denoisplit.md").read_text()
    assert text.startswith(bench_denoisplit.SECTION)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    for label in bench_denoisplit.LABELS.values():
        assert sum(line.startswith(f"| {label} |") for line in table) == 2, label  # + per ch
    assert "**Peak 10 photons:** denoiSplit" in text and "The paper's claim" in text
    # --render rebuilds the section from the stored JSON alone
    (res / "denoisplit.md").unlink()
    assert bench_denoisplit.main(["--render", "--results", str(res), "--figures",
                                  str(fig)]) == 0
    assert (res / "denoisplit.md").read_text() == text


def test_calibration_bench_scores_the_held_out_frames_before_and_after(tmp_path):
    res, fig = tmp_path / "results", tmp_path / "figures"
    assert bench_calibration.main([*TINY, "--bins", "5", "--results", str(res), "--figures",
                                   str(fig)]) == 0
    assert (fig / "calibration.png").stat().st_size > 0
    result = json.loads((res / "calibration.json").read_text())
    assert [c["name"] for c in result["channels"]] == ["ch0", "ch1"]
    for c in result["channels"]:
        for key in ("a", "b", "ence_before", "ence_after", "ence_weighted_before",
                    "ence_weighted_after", "rmse", "rmv_before", "rmv_after"):
            assert math.isfinite(c[key]), (c["name"], key)
        assert len(c["bins_before"]["rmv"]) == 5 and len(c["bins_after"]["rmse"]) == 5
    text = (res / "calibration.md").read_text()
    assert text.startswith(bench_calibration.SECTION)
    assert any(line.startswith("| ch0 |") for line in text.splitlines())
    assert any(line.startswith("| ch1 |") for line in text.splitlines())
    assert "bench/figures/calibration.png" in text
