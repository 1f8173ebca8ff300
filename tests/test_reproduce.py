"""The verdict rules and run plan of bench/reproduce.py (issue 6)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reproduce  # noqa: E402


def _s(psnr, sem=0.1):
    return {"psnr": psnr, "psnr_sem": sem, "ssim": 0.5, "ssim_sem": 0.01}


def test_verdicts_follow_difference_margin_and_noise():
    assert reproduce.verdict_greater(_s(25.0), _s(20.0), margin=2.0) == "reproduced"
    assert reproduce.verdict_greater(_s(21.0), _s(20.0), margin=2.0) == "not reproduced"
    assert reproduce.verdict_greater(_s(20.1), _s(20.0)) == "inconclusive"  # within noise
    assert reproduce.verdict_greater(_s(19.0), _s(20.0)) == "not reproduced"
    assert reproduce.verdict_greater(_s(21.0, 2.0), _s(20.0, 2.0)) == "inconclusive"
    # An unknown standard error never yields a verdict either way.
    nan = float("nan")
    assert reproduce.verdict_greater(_s(30.0, nan), _s(20.0)) == "inconclusive"


def test_plan_shares_runs_between_experiments():
    keys = [r.key for r in reproduce.plan(set(reproduce.EXPERIMENTS))]
    assert len(keys) == len(set(keys))
    assert len([k for k in keys if k.count("-") == 2]) == 13  # 12 of Table 2 + Deep-LC
    assert {"lean-s2-256-n25", "lean-floor-256-n25", "lean-bf16-256-n25"} <= set(keys)
    assert [r.key for r in reproduce.plan({"alignment"})] == ["lean-256-n25",
                                                             "lean-floor-256-n25"]
