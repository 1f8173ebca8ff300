"""The encoder-share measurement of bench/predict.py and the tables bench/run_all.py writes."""

import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import predict as bench_predict  # noqa: E402
import run_all  # noqa: E402

from musplit.config import Config  # noqa: E402
from musplit.models import build  # noqa: E402


def test_encoder_share_bounds_the_cost_of_samples():
    cfg = Config.validated({"model": {"lc": "lean", "patch": 16, "filters": 4,
                                      "z_dims": [2, 2, 2, 2]}, "data": {"patch": 16}})
    model = build(cfg.model).eval()
    args = Namespace(amp=None, device="cpu", batch_size=2, patch=16, channels_last=True)
    r = bench_predict.encoder_share(model, cfg, args, repeat=1)
    e, d = r["encode_s"], r["decode_s"]
    assert e > 0
    assert d > 0
    assert abs(r["encoder_share"] - e / (e + d)) < 0.002
    # One encoder pass plus ten top-down passes, against one of each.
    assert abs(r["floor_10_vs_1"] - (e + 10 * d) / (e + d)) < 0.02 * r["floor_10_vs_1"]


def _row(variant, samples, mp, **extra):
    return {"variant": variant, "grid": 32, "samples": samples, "size": 128,
            "megapixels_per_s": mp, "params": 10, "peak_rss_gb": 1.0, "tune_malloc": True,
            **extra}


def test_predict_table_shows_measured_cost_and_its_floor():
    rows = [_row("none", 1, 0.02, encoder_share=0.25, floor_10_vs_1=7.75),
            _row("none", 10, 0.0025),
            _row("lean", 1, 0.01)]  # a row measured before the floor existed
    text = run_all.predict_section(rows)
    vanilla = next(line for line in text.splitlines() if line.startswith("| Vanilla, G = 32"))
    assert "| 8.0× |" in vanilla and "7.8× (encoder 25 %)" in vanilla
    lean = next(line for line in text.splitlines() if line.startswith("| Lean-LC, G = 32"))
    assert lean.count("| – |") >= 2


def test_train_table_reports_both_conv_peaks():
    base = {"params": 5, "peak_rss_gb": 1.0, "gflop_per_step": 100.0, "achieved_gflops": 50.0,
            "matmul_gflops": 100.0, "conv_gflops": 200.0, "conv_utilisation": 0.25,
            "matmul_utilisation": 0.5}
    rows = [{**base, "variant": "none", "precision": "fp32", "step_s": 2.0,
             "conv_train_gflops": 100.0, "conv_train_utilisation": 0.5},
            {**base, "variant": "none", "precision": "bf16", "step_s": 1.0}]
    lines = run_all.train_step_section(rows).splitlines()
    fp32 = next(x for x in lines if x.startswith("| Vanilla | fp32"))
    bf16 = next(x for x in lines if x.startswith("| Vanilla | bf16"))
    assert "| 200 | 100 | 25 % | 50 % | 50 % |" in fp32
    assert "| 200 | – | 25 % | – | 50 % |" in bf16
    speed = next(x for x in lines if x.startswith("| Vanilla | 5 |"))
    assert "| 2.00 | 0.45 | 1.00 | 0.23 |" in speed  # 2.0 / 4.4 and 1.0 / 4.4


def test_train_table_shows_the_native_kernel_comparison_only_when_measured():
    base = {"params": 5, "peak_rss_gb": 1.0, "precision": "fp32", "step_s": 1.5}
    with_ab = [{**base, "variant": "none", "eager_step_s": 1.8, "native_step_s": 1.5,
                "native_speedup": 1.2, "compare_pairs": 2},
               {**base, "variant": "lean"}]
    lines = run_all.train_step_section(with_ab).splitlines()
    start = lines.index("| variant | eager s/step | native s/step | speed-up | pairs |") + 2
    table = lines[start:lines.index("", start) if "" in lines[start:] else len(lines)]
    assert table == ["| Vanilla | 1.80 | 1.50 | 1.20× | 2 |"]  # Lean-LC has no comparison
    without = run_all.train_step_section([{**base, "variant": "none"}])
    assert "Compiled elementwise kernels" not in without


def test_direct_2048_rows_are_checked_against_the_per_tile_rate():
    rows = [_row("none", 1, 0.05),
            {**_row("none", 1, 0.04, seconds=104.9, tiles=4096), "size": 2048, "direct": True}]
    text = run_all.predict_section(rows)
    main = [x for x in text.splitlines() if x.startswith("| Vanilla, G = 32")]
    assert len(main) == 1 and "| 0.0500 |" in main[0]  # the direct row is not a table row
    check = next(x for x in text.splitlines() if x.startswith("| Vanilla | 4,096 |"))
    # 2048² at 0.05 MP/s is 83.9 s extrapolated; 104.9 measured is 1.25 times that
    assert "| 105 | 0.0400 | 84 | 1.25 |" in check
    # a new direct row replaces the stored direct row only, never the per-tile row
    merged = run_all.merge_predict(rows, [{**rows[1], "seconds": 90.0}])
    assert len(merged) == 2 and sorted(r.get("direct", False) for r in merged) == [False, True]


def test_precision_table():
    rows = [{"kind": "speed", "variant": "none", "size": 512, "fp32_mp_s": 0.04,
             "bf16_mp_s": 0.07, "speedup": 1.75, "pairs": 2},
            {"kind": "accuracy", "variant": "lean", "steps": 400, "size": 256,
             "test_frames": 10, "samples": 5, "fp32_psnr": 20.5, "fp32_psnr_sem": 0.3,
             "bf16_psnr": 20.48, "bf16_psnr_sem": 0.3, "fp32_ssim": 0.61, "bf16_ssim": 0.609,
             "mean_abs_diff_norm": 0.0012, "max_abs_diff_norm": 0.05,
             "fp32_predict_s": 8.0, "bf16_predict_s": 12.5}]
    lines = run_all.precision_section(rows).splitlines()
    assert "| Vanilla | 0.0400 | 0.0700 | 1.75× | 2 |" in lines
    lean = next(x for x in lines if x.startswith("| HVAE Lean-LC"))
    assert "| 20.50 ± 0.30 | 20.48 ± 0.30 | -0.020 |" in lean
    assert lean.endswith("| 0.0012 / 0.050 | 8.0 / 12.5 |")


def test_precision_bench_runs_end_to_end(capsys):
    import precision as bench_precision

    speed = bench_precision.speed_rows(["none"], size=64, pairs=1, batch=16)
    r = speed[0]
    assert r["variant"] == "none" and r["params"] == 2_991_748  # the paper's Vanilla
    # speedup = fp32 / bf16 (stored to 4 significant digits, the times to 3 decimals: the
    # rounding is the only slack; emulated bf16 can be 60x slower, a speedup of 0.015)
    assert abs(r["speedup"] * r["bf16_s"] - r["fp32_s"]) < 0.01 * r["fp32_s"] + 0.001
    assert 0 < speed[0]["max_abs_diff_norm"] < 1  # bf16 differs from fp32, but not wildly
    acc = bench_precision.accuracy_rows(steps=2, frames=12, size=64, samples=2, seed=0)
    assert [r["variant"] for r in acc] == ["lean", "none"]
    for r in acc:
        assert abs(r["bf16_psnr"] - r["fp32_psnr"]) < 1.0 and r["max_abs_diff_norm"] > 0
    assert capsys.readouterr().out.count("\n") == 3  # one JSON line per row


def test_speed_summary_names_each_parts_fp32_conv_peak_and_date():
    line = run_all.speed_summary({
        "train_step": [{"precision": "fp32", "conv_gflops": 481.0, "date": "2026-11-21"},
                       {"precision": "bf16", "conv_gflops": 957.0, "date": "2026-11-21"},
                       {"precision": "fp32", "conv_gflops": 522.4, "date": "2026-11-21"}],
        "predict": [{"conv_gflops": 222.0, "date": "2026-12-06"}, {"variant": "old row"}],
        "precision": [{"kind": "accuracy"}]})
    assert "training step 481-522 (2026-11-21); prediction 222-222 (2026-12-06)." in line
    assert "precision" not in line.split("GFLOP/s")[1].split(".")[0]  # no peak recorded
    assert run_all.speed_summary({"predict": [{"variant": "old row"}]}) == ""
