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
