"""Prediction in bf16 against fp32: speed and what it costs in accuracy (issue 6, defaults).

Two measurements, printed as JSON lines (one per row):

* ``speed``: for each HVAE variant at the paper's size (random weights: speed does not depend
  on them), the same ``size x size`` frame is predicted with inner padding at ``G = 32``,
  alternating fp32 and bf16 autocast in one process (``--pairs`` pairs, medians), so that the
  VM's drift cancels in the ratio. One sample.
* ``accuracy``: a small (demo-width) Lean-LC and Vanilla HVAE are trained on SinosoidalCritters
  N25 (the demo's settings, ``--steps`` steps each) and their test frames are predicted with
  fp32 and with bf16, with the same seed and so the same latent noise; RI-PSNR / SSIM of both,
  and the largest difference between the two predictions in normalised units.

    .venv/bin/python bench/precision.py --steps 400 --size 512
    .venv/bin/python bench/precision.py --only speed --variants none --size 128 --pairs 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from musplit.config import Config
from musplit.data.normalize import NormStats
from musplit.models import build, count_parameters
from musplit.predict import fast_precision, predict_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import machine_peaks  # noqa: E402


def speed_rows(variants: list[str], size: int, pairs: int, batch: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 300, (size, size)).astype(np.float32)
    for variant in variants:
        torch.manual_seed(0)
        cfg = Config.validated({"model": {"kind": "hvae", "lc": variant, "patch": 64},
                                "data": {"patch": 64, "pad": "reflect"}})
        model = build(cfg.model).eval()
        stats = NormStats(clip_max=1000.0, input_mean=100.0, input_std=50.0,
                          target_mean=[100.0, 100.0], target_std=[50.0, 50.0],
                          alpha=[0.5, 0.5])
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        means = {}
        for amp in ("fp32", "bf16"):  # warm-up: kernel selection, first allocations
            predict_image(model, cfg, stats, image[:128, :128], grid=32, batch_size=batch,
                          amp=amp)
        for _ in range(pairs):
            for amp in ("fp32", "bf16"):
                t0 = time.perf_counter()
                pred = predict_image(model, cfg, stats, image, grid=32, batch_size=batch,
                                     amp=amp, normalized=True)
                times[amp].append(time.perf_counter() - t0)
                means[amp] = pred.mean
        f32, b16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        rows.append({
            "kind": "speed", "variant": variant, "params": count_parameters(model),
            "size": size, "grid": 32, "pairs": pairs, "fp32_s": round(f32, 3),
            "bf16_s": round(b16, 3), "fp32_mp_s": round(size**2 / 1e6 / f32, 5),
            "bf16_mp_s": round(size**2 / 1e6 / b16, 5), "speedup": float(f"{f32 / b16:.4g}"),
            "max_abs_diff_norm": float(np.abs(means["fp32"] - means["bf16"]).max()),
            "fast_bf16": fast_precision("bf16"), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "conv_gflops": machine_peaks(torch.float32, repeat=3)["conv_gflops"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def accuracy_rows(steps: int, frames: int, size: int, samples: int, seed: int) -> list[dict]:
    from musplit.demo import demo_config
    from musplit.evaluation import evaluate_arrays
    from musplit.splitter import Splitter
    from musplit.training import prepare_data, train

    rows = []
    with tempfile.TemporaryDirectory(prefix="musplit-precision-") as tmp:
        for lc in ("lean", "none"):
            cfg = demo_config(lc, frames=frames, size=size, steps=steps, seed=seed)
            t0 = time.perf_counter()
            best = train(cfg, Path(tmp) / lc, overwrite=True, progress=False,
                         accelerator="cpu")
            train_s = time.perf_counter() - t0
            splitter = Splitter.load(best)
            data, _ = prepare_data(cfg)
            gt = data.targets[list(data.split.test)]
            st = splitter.stats
            inp = st.mix(st.clip(gt))
            row = {"kind": "accuracy", "variant": lc, "steps": steps, "train_s": round(train_s),
                   "params": count_parameters(splitter.model), "test_frames": len(gt),
                   "samples": samples, "size": size}
            preds = {}
            for amp in ("fp32", "bf16"):
                t0 = time.perf_counter()
                pred = splitter.predict(inp, samples=samples, seed=seed, precision=amp)
                row[f"{amp}_predict_s"] = round(time.perf_counter() - t0, 2)
                s = evaluate_arrays(gt, pred.mean, stats=st)["summary"]
                row[f"{amp}_psnr"] = round(s["ri_psnr"]["mean"]["mean"], 3)
                row[f"{amp}_psnr_sem"] = round(s["ri_psnr"]["mean"]["sem"], 3)
                row[f"{amp}_ssim"] = round(s["ssim"]["mean"]["mean"], 4)
                preds[amp] = pred.mean
            scale = np.asarray(st.target_std, dtype=np.float32)
            diff = np.abs(preds["fp32"] - preds["bf16"]) / scale
            row["max_abs_diff_norm"] = round(float(diff.max()), 4)
            row["mean_abs_diff_norm"] = round(float(diff.mean()), 5)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["speed", "accuracy"], default=None)
    ap.add_argument("--variants", default="none,lean,regular,deep")
    ap.add_argument("--size", type=int, default=512, help="frame side of the speed runs")
    ap.add_argument("--pairs", type=int, default=2, help="fp32/bf16 pairs per variant")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400, help="training steps per model")
    ap.add_argument("--frames", type=int, default=100, help="critters frames (demo: 100)")
    ap.add_argument("--frame-size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from musplit.runtime import tune_allocator

    tune_allocator()
    if args.only in (None, "speed"):
        speed_rows(args.variants.split(","), args.size, args.pairs, args.batch_size)
    if args.only in (None, "accuracy"):
        accuracy_rows(args.steps, args.frames, args.frame_size, args.samples, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
