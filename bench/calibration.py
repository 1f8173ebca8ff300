"""Calibrated uncertainty: calibration error before and after calibration on held-out data
(issue 18).

MicroSplit (Nature Methods 2026) calibrates the posterior-sample std of its predictions with a
per-channel affine map fitted on validation data (``musplit.calibration``; docs/microsplit.md,
"Calibration in musplit"). This benchmark measures what that map is worth on data it was not
fitted on.

Data and model: the noisy synthetic setting of ``bench/denoisplit.py`` at one peak (30 photons
by default): SinosoidalCritters, Poisson shot noise plus Gaussian read noise, the image to split
is the average of the two noisy channels, one noise model per channel fitted on the
calibration frames' (noisy, clean) pairs. One Vanilla HVAE (the same size as there) trains with
MicroSplit's objective (``train.loss: denoisplit_usplit``; ``--loss`` picks another).

Calibration: the model predicts the calibration frames and a disjoint set of held-out test
frames with ``--samples`` posterior samples (normalised target units, the raw std).
:func:`musplit.calibration.calibrate` fits ``σ_cal = max(a σ̂ + b, 0)`` per channel on the
calibration frames, the errors taken against the **clean** channels (what the std should
predict is the error of the estimate of the signal). On the held-out frames the pixels are
binned by std (15 bins, the module's rules) and the calibration error, ENCE
``(1/K') Σ_k |RMV_k − RMSE_k| / RMV_k``, is computed for the raw std and for the calibrated
one. Writes ``bench/results/calibration.json``, ``.md`` (the BENCHMARKS.md section) and
``bench/figures/calibration.png`` (RMSE against RMV per bin, before and after, with the
diagonal).

    .venv/bin/python bench/calibration.py               # about 2-4 min on 2 CPU cores
    .venv/bin/python bench/calibration.py --render
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))
import denoisplit as noisy_bench  # noqa: E402  (the data and model of bench/denoisplit.py)

SECTION = "## Calibrated uncertainty (issue 18)"


def run(args, work: Path) -> dict:
    import torch

    from musplit.calibration import (
        bin_errors,
        calibrate,
        calibrated_std,
        calibration_error,
        fit_line,
    )

    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    t0 = time.time()
    sets = noisy_bench.clean_sets(args.frames, args.calibration_frames, args.test_frames,
                                  args.size)
    seed = 7000
    sig_tr, noisy_tr = noisy_bench.acquire(sets["train"], args.peak, args.read_noise, seed)
    sig_cal, noisy_cal = noisy_bench.acquire(sets["calibration"], args.peak, args.read_noise,
                                             seed + 1)
    sig_te, noisy_te = noisy_bench.acquire(sets["test"], args.peak, args.read_noise, seed + 2)
    paths = noisy_bench.write_channels(work / "noisy", noisy_tr)
    nm_paths = None
    if args.loss != "usplit":
        nm_paths, _ = noisy_bench.fit_noise_models(noisy_cal, sig_cal, work)
    cfg = noisy_bench.config("calibration", paths, args.steps, args.seed, loss=args.loss,
                             noise_models=nm_paths)
    print(f"training ({args.loss}, {args.steps} steps) ...", flush=True)
    sp, train_s = noisy_bench.train_model(cfg, work / "run")
    grid = noisy_bench.MODEL["patch"] // 2
    print("calibrating ...", flush=True)
    cal = calibrate(sp, noisy_cal.mean(-1), sig_cal, samples=args.samples, n_bins=args.bins,
                    grid=grid, brightness="off")
    pred = sp.predict(noisy_te.mean(-1), samples=args.samples, grid=grid, seed=1,
                      normalized=True, raw_std=True, brightness="off")
    y = sp.stats.normalize_target(sp.stats.clip(sig_te))
    err = pred.mean - y
    std_cal = calibrated_std(pred.std, cal)
    channels = []
    for k, name in enumerate(cal.channel_names):
        before = bin_errors(pred.std[..., k], err[..., k], args.bins)
        after = bin_errors(std_cal[..., k], err[..., k], args.bins)
        channels.append({
            "name": name, "a": cal.a[k], "b": cal.b[k],
            "fit_ence_before": cal.ence_before[k], "fit_ence_after": cal.ence_after[k],
            "ence_before": calibration_error(before), "ence_after": calibration_error(after),
            "ence_weighted_before": calibration_error(before, weighted=True),
            "ence_weighted_after": calibration_error(after, weighted=True),
            "rmse": float(np.sqrt(np.mean(err[..., k] ** 2))),
            "rmv_before": float(np.sqrt(np.mean(pred.std[..., k] ** 2))),
            "rmv_after": float(np.sqrt(np.mean(std_cal[..., k] ** 2))),
            "bins_before": before.to_dict(), "bins_after": after.to_dict(),
            "fit_bins": cal.before[k].to_dict(),
            # The line the same rule fits to the held-out bins (not used: for comparison).
            "held_out_line": list(fit_line(before)),
        })
    return {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "samples": args.samples,
            "bins": args.bins, "loss": args.loss, "peak": args.peak,
            "read_noise": args.read_noise, "seed": args.seed, "size": args.size,
            "frames": {"train": args.frames, "calibration": args.calibration_frames,
                       "test": args.test_frames},
            "model": dict(noisy_bench.MODEL), "train_seconds": train_s,
            "seconds": time.time() - t0, "channels": channels}


def _f(v, fmt=".3f") -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:{fmt}}"


def reading(result: dict) -> str:
    """What the numbers say, from the numbers."""
    parts = []
    for c in result["channels"]:
        ratio = c["rmse"] / c["rmv_before"] if c["rmv_before"] > 0 else float("inf")
        parts.append(f"{c['name']}: the raw std's RMV is {c['rmv_before']:.3f} against an "
                     f"RMSE of {c['rmse']:.3f} ({ratio:.1f}× too small), calibrated "
                     f"{c['rmv_after']:.3f} (a = {c['a']:.2f}, b = {c['b']:.3f})")
    warn = ""
    for c in result["channels"]:
        if c["a"] > 0:
            continue
        held = c.get("held_out_line")
        rise = (f"; the same rule fitted to the held-out bins gives a = {held[0]:.2f}"
                if held else "")
        warn += (f" On {c['name']} the line fitted on the calibration frames falls (a = "
                 f"{c['a']:.2f}: the fit weighs every bin equally, so a few sparsely filled "
                 f"bins can tip it){rise}. The calibrated std then varies little, and "
                 "against the raw std's order; its low ENCE says that its level is right, not "
                 "that it tells the worse pixels from the better ones.")
    return ("Reading it: the raw posterior-sample std measures only the spread of the "
            "samples (docs/microsplit.md, \"Calibration\"), not the error of their mean; "
            + "; ".join(parts) + "." + warn + " The held-out frames come from the same "
            "generator and noise "
            f"as the calibration frames, and {result['steps']} training steps are far from "
            "the paper's, so this measures the calibration procedure on a small model, not "
            "MicroSplit's published uncertainty.")


def section(result: dict) -> str:
    fr, m = result["frames"], result["model"]
    lines = [
        SECTION, "",
        f"Measured {result['date']} by `bench/calibration.py`. The noisy synthetic setting of "
        f"the section above at peak {result['peak']} photons (read noise σ = "
        f"{result['read_noise']}): one Vanilla HVAE ({m['filters']} filters, 4 × {m['z']} "
        f"latents, patch {m['patch']}) trained for {result['steps']} steps with "
        f"`train.loss: {result['loss']}` on {fr['train']} frames. `musplit.calibration."
        f"calibrate` fits `σ_cal = max(a σ̂ + b, 0)` per channel on {fr['calibration']} "
        f"calibration frames; {fr['test']} disjoint held-out frames score it. σ̂ is the "
        f"std of {result['samples']} posterior samples, errors are MMSE − **clean** channel, "
        f"all in normalised target units; {result['bins']} bins per channel. ENCE = mean over "
        "bins of |RMV − RMSE| / RMV (0: calibrated); the weighted variant weighs each bin by "
        "its pixels.",
        "",
        "| channel | a | b | ENCE held-out, raw σ̂ | ENCE held-out, calibrated | weighted, raw "
        "| weighted, calibrated | RMSE | RMV raw → calibrated | ENCE on the fit frames "
        "(in-sample) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["channels"]:
        lines.append(
            f"| {c['name']} | {_f(c['a'])} | {_f(c['b'])} | {_f(c['ence_before'])} | "
            f"**{_f(c['ence_after'])}** | {_f(c['ence_weighted_before'])} | "
            f"{_f(c['ence_weighted_after'])} | {_f(c['rmse'])} | {_f(c['rmv_before'])} → "
            f"{_f(c['rmv_after'])} | {_f(c['fit_ence_before'])} → "
            f"{_f(c['fit_ence_after'])} |")
    better = [c for c in result["channels"] if c["ence_after"] < c["ence_before"]]
    n = len(result["channels"])
    lines += [
        "",
        "![calibration](bench/figures/calibration.png)",
        "",
        (f"Calibration lowered the held-out calibration error on {len(better)} of {n} "
         "channels" + (": " + "; ".join(
             f"{c['name']} {c['ence_before']:.3f} → {c['ence_after']:.3f} "
             f"({100 * (1 - c['ence_after'] / c['ence_before']):.0f} % lower)"
             for c in better) if better else "") + "."),
        "",
        reading(result),
        "",
    ]
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from musplit.calibration import Bins
    from musplit.figures import save_figure

    chans = result["channels"]
    fig, axes = plt.subplots(1, len(chans), figsize=(4.2 * len(chans), 3.8), squeeze=False)
    for ax, c in zip(axes[0], chans, strict=True):
        top = 0.0
        for key, label, colour in (("bins_before", "raw σ̂", "C0"),
                                   ("bins_after", "calibrated", "C3")):
            b = Bins.from_dict(c[key])
            k = b.kept
            ax.plot(b.rmv[k], b.rmse[k], "o-", color=colour, ms=3,
                    label=f"{label} (ENCE {c[key.replace('bins', 'ence')]:.2f})")
            top = max(top, float(np.nanmax(b.rmv[k])), float(np.nanmax(b.rmse[k])))
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="y = x")
        ax.set_xlabel("RMV (predicted std), normalised units")
        ax.set_ylabel("RMSE against clean")
        ax.set_title(f"{c['name']}: held-out frames", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps")
    ap.add_argument("--samples", type=int, default=20, help="posterior samples for the std")
    ap.add_argument("--bins", type=int, default=15, help="bins per channel")
    ap.add_argument("--loss", default="denoisplit_usplit",
                    choices=("usplit", "denoisplit", "denoisplit_usplit"))
    ap.add_argument("--peak", type=int, default=30, help="peak photons of the noisy data")
    ap.add_argument("--read-noise", type=float, default=1.5)
    ap.add_argument("--frames", type=int, default=40, help="training frames")
    ap.add_argument("--calibration-frames", type=int, default=8)
    ap.add_argument("--test-frames", type=int, default=8, help="held-out frames")
    ap.add_argument("--size", type=int, default=64, help="frame side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 was ten times slower on a busy 2-core machine)")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temp dir)")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--figures", type=Path, default=ROOT / "figures")
    ap.add_argument("--render", action="store_true", help="only rewrite the section and figure")
    args = ap.parse_args(argv)
    res_path = args.results / "calibration.json"
    if not args.render:
        for name in ("musplit", "lightning", "lightning.pytorch"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, args.out or Path(tmp))
        noisy_bench._write_text(res_path, json.dumps(result, indent=1))
    result = json.loads(res_path.read_text())
    figure(result, args.figures / "calibration.png")
    text = section(result)
    noisy_bench._write_text(args.results / "calibration.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
