"""Unknown mixing ratio (issue 18): a fixed-ratio model against a range-trained one.

Two Lean-LC HVAEs of the ``cpu-small`` preset (16 filters, 4 x 16 latents) train on the same
SinosoidalCritters N25 frames (pairing ``shared-low``, the synthetic demo's), for the same steps
and seed: (a) on the fixed mix ``0.5 y_0 + 0.5 y_1`` (``data.alpha``, the default), (b) with
``data.alpha_ranges`` (each training patch draws ``u_c ~ U(lo_c, hi_c)`` per channel and mixes
with ``u_c / sum u``; docs/data.md, "Input formation"). Both then split the test frames mixed at
``w y_0 + (1 - w) y_1`` for every ``w`` in ``--ratios``, and are scored with range-invariant
PSNR per channel against the clean (clipped) targets in normalised units (docs/evaluation.md,
"Metrics"). The linear baseline is the input itself, which RI-PSNR rescales per channel.

Writes ``bench/results/mixing_ratio.json``, ``bench/results/mixing_ratio.md`` (the
BENCHMARKS.md section "Unknown mixing ratio (issue 18)") and ``bench/figures/mixing_ratio.png``.

    .venv/bin/python bench/mixing_ratio.py                 # about 6 min on 2 CPU cores
    .venv/bin/python bench/mixing_ratio.py --render        # only rewrite the section and figure
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

RATIOS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9)
#: The range-trained model's ranges, one (lo, hi) per channel.
RANGES = ((0.1, 0.9), (0.1, 0.9))


def config(name: str, *, steps: int, frames: int, size: int, seed: int, ranges=None):
    from musplit.config import preset
    from musplit.config.presets import DEMO_PAIRING

    data = {"synthetic": {"frames": frames, "size": size, "connector": 25, "seed": seed,
                          "pairing": DEMO_PAIRING}, "pad": "zeros"}
    if ranges is not None:
        data["alpha_ranges"] = [list(r) for r in ranges]
    return preset(
        "cpu-small", name=name, data=data,
        model={"lc": "lean", "filters": 16, "z_dims": [16, 16, 16, 16]},
        train={"max_steps": steps, "batch_size": 16, "val_every_steps": max(1, steps // 4),
               "early_stopping_patience": 1000, "lr_patience": 3, "seed": seed},
        predict={"grid": 32, "batch_size": 128})


def _summary(res: dict, names) -> dict:
    s = res["summary"]["ri_psnr"]
    return {n: {"mean": s[n]["mean"], "sem": s[n]["sem"]} for n in [*names, "mean"]}


def run(steps: int, frames: int, size: int, seed: int, samples: int, ratios, ranges,
        out: Path, threads: int | None = None) -> dict:
    import numpy as np
    import torch

    from musplit.evaluation import evaluate_arrays
    from musplit.splitter import Splitter
    from musplit.training import prepare_data, train

    threads = threads or max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    t_start = time.time()
    load_start = os.getloadavg()[0]
    models = {"fixed": config("mix-fixed", steps=steps, frames=frames, size=size, seed=seed),
              "ranges": config("mix-ranges", steps=steps, frames=frames, size=size, seed=seed,
                               ranges=ranges)}
    data, _ = prepare_data(models["fixed"])
    test = list(data.split.test)
    truth = np.stack([np.asarray(data.targets[i], dtype=np.float32) for i in test])
    result = {"steps": steps, "frames": frames, "size": size, "seed": seed, "samples": samples,
              "ratios": list(ratios), "ranges": [list(r) for r in ranges],
              "test_frames": test, "threads": threads, "date": time.strftime("%Y-%m-%d"),
              "models": {}}
    splitters = {}
    for key, cfg in models.items():
        print(f"training {key} ({steps} steps) ...", flush=True)
        t0 = time.time()
        best = train(cfg, out / key, overwrite=True, progress=False)
        splitters[key] = Splitter.load(best)
        result["models"][key] = {"train_s": round(time.time() - t0, 1),
                                 "assumed": [float(a) for a in splitters[key].stats.alpha]}
    st = splitters["fixed"].stats
    names = ["ch0", "ch1"]
    clipped = st.clip(truth)
    rows = []
    for w in ratios:
        print(f"test ratio {w:.2f} ...", flush=True)
        mix = (w * clipped[..., 0] + (1 - w) * clipped[..., 1]).astype(np.float32)
        row = {"ratio": float(w)}
        base = np.repeat(mix[..., None], 2, axis=-1)
        row["baseline"] = _summary(evaluate_arrays(truth, base, stats=st, channel_names=names),
                                   names)
        for key, sp in splitters.items():
            pred = sp.predict(mix, samples=samples, seed=seed, brightness="off")
            res = evaluate_arrays(truth, pred.mean, stats=sp.stats, channel_names=names)
            row[key] = _summary(res, names)
        rows.append(row)
        print(json.dumps({"ratio": w, **{k: round(row[k]["mean"]["mean"], 2)
                                          for k in ("baseline", "fixed", "ranges")}}),
              flush=True)
    result["rows"] = rows
    result["seconds"] = round(time.time() - t_start, 1)
    result["load"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    import run_all

    result["machine"] = run_all.machine()
    return result


def _load(result: dict) -> str:
    """", load average a to b" where the machine was busier than its cores, else ""."""
    a, b = result.get("load", (0, 0))
    return (f", load average {a:.1f} at the start and {b:.1f} at the end: other jobs shared "
            "the cores" if max(a, b) > (os.cpu_count() or 1) else "")


def _cell(m: dict) -> str:
    return f"{m['mean']:.2f} ± {m['sem']:.2f}"


def reading(result: dict) -> str:
    """What the table says, computed from it (so that it stays true when the bench reruns)."""
    rows = result["rows"]
    gap = {r["ratio"]: r["ranges"]["mean"]["mean"] - r["fixed"]["mean"]["mean"] for r in rows}
    at_half = gap.get(0.5)
    off = {w: g for w, g in gap.items() if w != 0.5}
    better = sorted(w for w, g in off.items() if g > 0)
    worse = sorted(w for w, g in off.items() if g <= 0)
    fixed = {r["ratio"]: r["fixed"]["mean"]["mean"] for r in rows}
    ranged = {r["ratio"]: r["ranges"]["mean"]["mean"] for r in rows}
    spread_f = max(fixed.values()) - min(fixed.values())
    spread_r = max(ranged.values()) - min(ranged.values())
    parts = []
    if at_half is not None:
        parts.append(f"At the training ratio of the fixed model (w = 0.5) the range-trained "
                     f"model is {at_half:+.2f} dB from it (mean over the two channels).")
    if off:
        parts.append(
            f"Away from 0.5 the range-trained model is ahead at "
            f"{len(better)} of the {len(off)} other ratios"
            + (f" ({', '.join(f'{w:g}' for w in better)})" if better else "")
            + (f" and behind at {', '.join(f'{w:g}' for w in worse)}" if worse else "")
            + f"; its mean gain there is {sum(off.values()) / len(off):+.2f} dB, "
            f"largest {max(off.values()):+.2f} dB at w = "
            f"{max(off, key=off.get):g}.")
    parts.append(f"Across the ratios the fixed model's mean RI-PSNR varies by {spread_f:.2f} dB "
                 f"and the range-trained model's by {spread_r:.2f} dB.")
    return " ".join(parts)


def section(result: dict) -> str:
    rows = result["rows"]
    rng = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in result["ranges"])
    m = result["models"]
    lines = [
        "## Unknown mixing ratio (issue 18)",
        "",
        f"Measured by `bench/mixing_ratio.py` on {result['machine']} (torch threads: "
        f"{result.get('threads', '?')}; {result['seconds'] / 60:.0f} min in all{_load(result)})"
        ". Two "
        "Lean-LC HVAEs of the `cpu-small` preset (16 filters, 4 × 16 latents) trained on the "
        f"same SinosoidalCritters N25 frames ({result['frames']} frames of {result['size']} × "
        f"{result['size']}, pairing `shared-low`), {result['steps']} steps of batch 16 each, "
        f"seed {result['seed']}: **fixed**, on the mix 0.5·y0 + 0.5·y1 (`data.alpha`, the "
        f"default; {m['fixed']['train_s']:.0f} s), and **ranges**, with `data.alpha_ranges` "
        f"{rng} (per training patch u_c ~ U(lo_c, hi_c), weights u_c / Σu; "
        f"{m['ranges']['train_s']:.0f} s), which assumes "
        + ", ".join(f"ch{c} {a:.2f}" for c, a in enumerate(m["ranges"]["assumed"]))
        + ". Each splits the "
        f"{len(result['test_frames'])} test frames mixed at w·y0 + (1 − w)·y1 "
        f"({result['samples']} posterior samples, inner padding, G = 32, brightness check "
        "off). RI-PSNR (dB) against the clipped targets in normalised units, mean over the "
        "two channels ± s.e.m. over frames; the baseline is the input itself, rescaled per "
        "channel by the metric.",
        "",
        "| test ratio w (ch0) | baseline | fixed (0.5/0.5) | ranges | ranges − fixed | "
        "fixed ch0 / ch1 | ranges ch0 / ch1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = r["ranges"]["mean"]["mean"] - r["fixed"]["mean"]["mean"]
        lines.append(
            f"| {r['ratio']:.1f} | {_cell(r['baseline']['mean'])} | "
            f"{_cell(r['fixed']['mean'])} | {_cell(r['ranges']['mean'])} | {d:+.2f} | "
            f"{r['fixed']['ch0']['mean']:.2f} / {r['fixed']['ch1']['mean']:.2f} | "
            f"{r['ranges']['ch0']['mean']:.2f} / {r['ranges']['ch1']['mean']:.2f} |")
    lines += ["", "![PSNR against the test mixing ratio](bench/figures/mixing_ratio.png)", "",
              reading(result), "",
              "With two channels the drawn ratio u0 / (u0 + u1) is not uniform over the "
              "ranges: for [0.1, 0.9] on both channels about 5% of the training patches have "
              "a ratio below 0.2 (and 5% above 0.8), none below 0.1. `data.alpha_range` "
              "(two channels) draws the ratio uniformly instead.", ""]
    return "\n".join(lines)


def other_runs(results: list[dict]) -> str:
    """A table of ``ranges - fixed`` per test ratio for other stored runs (``--suffix``)."""
    if not results:
        return ""
    ratios = results[0]["ratios"]
    lines = ["Other stored runs of the same comparison (`--suffix`), ranges − fixed in dB per "
             "test ratio (mean of the two channels):", "",
             "| steps | " + " | ".join(f"{w:g}" for w in ratios) + " |",
             "|---:|" + "---:|" * len(ratios)]
    for r in results:
        gap = {row["ratio"]: row["ranges"]["mean"]["mean"] - row["fixed"]["mean"]["mean"]
               for row in r["rows"]}
        lines.append(f"| {r['steps']} | "
                     + " | ".join(f"{gap[w]:+.2f}" if w in gap else "–" for w in ratios) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from musplit.figures import save_figure

    rows = result["rows"]
    w = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    rng = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in result["ranges"])
    for key, label, style in (("fixed", "fixed ratio 0.5/0.5", "o-"),
                              ("ranges", f"alpha_ranges {rng}", "s-"),
                              ("baseline", "baseline (the input)", "k:")):
        ys = [r[key]["mean"]["mean"] for r in rows]
        es = [r[key]["mean"]["sem"] for r in rows]
        ax.errorbar(w, ys, yerr=es, fmt=style, capsize=2, label=label, ms=4)
    ax.axvline(0.5, color="0.7", lw=0.8, zorder=0)
    ax.set_xlabel("test mixing ratio w (input = w·ch0 + (1 − w)·ch1)")
    ax.set_ylabel("RI-PSNR, mean of 2 channels (dB)")
    ax.set_title(f"Unknown mixing ratio: {result['steps']} steps each", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300,
                    help="training steps per model (300: about 6 min in all on 2 idle cores, "
                         "estimated from BENCHMARKS.md's step times)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: every core; 1 is faster on a busy machine)")
    ap.add_argument("--frames", type=int, default=40, help="critters frames (80/10/10 split)")
    ap.add_argument("--size", type=int, default=128, help="frame side")
    ap.add_argument("--samples", type=int, default=3, help="posterior samples per prediction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)),
                    help="test ratios w of channel 0 (channel 1: 1 - w)")
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    ap.add_argument("--render", action="store_true", help="only rewrite the section and figure")
    ap.add_argument("--suffix", default="",
                    help="results under mixing_ratio<suffix>.* (default: the BENCHMARKS.md ones)")
    args = ap.parse_args()
    stem = f"mixing_ratio{args.suffix}"
    res_path = ROOT / "results" / f"{stem}.json"
    if not args.render:
        ratios = [float(v) for v in args.ratios.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.steps, args.frames, args.size, args.seed, args.samples, ratios,
                         RANGES, args.out or Path(tmp), threads=args.threads)
        res_path.parent.mkdir(exist_ok=True)
        res_path.write_text(json.dumps(result, indent=1))
    result = json.loads(res_path.read_text())
    figure(result, ROOT / "figures" / f"{stem}.png")
    text = section(result).replace("figures/mixing_ratio.png", f"figures/{stem}.png")
    if not args.suffix:
        others = [json.loads(p.read_text())
                  for p in sorted((ROOT / "results").glob("mixing_ratio_*.json"))]
        extra = other_runs(sorted(others, key=lambda r: r["steps"]))
        text = text + ("\n" + extra if extra else "")
    (ROOT / "results" / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
