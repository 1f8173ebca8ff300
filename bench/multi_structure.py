"""Three and four structures in one image: musplit against the linear baseline (issue 18).

Two kinds of data, each split into C = 3 and C = 4 structures:

* **synthetic** (:func:`musplit.data.structures.generate_structures`): filaments, blobs,
  puncta and membranes at distinct scales, blurred by a Gaussian PSF, clean (no noise), so
  the ground truth is exact. Frames are split by the default frame split; the test frames are
  never trained on. The image to split is the mean of the C channels (the paper's synthetic
  input).
* **real** (PartSegData's ``stack.tif``, 1024 x 1024, 4 channels of nuclei): channels 0,1,2 and
  0,1,2,3 with the real-data settings of ``musplit demo-real`` (the ``cpu-real`` preset: input
  = the sum of the channels, no clip, flips and rotations, predictions that add up to the
  input); the bottom 256 rows are the test region.

Each is trained with the Lean-LC HVAE for the same steps and scored by RI-PSNR per channel
(mean ± s.e.m. over test frames / tiles) against the linear baseline: the superimposed image
itself, which RI-PSNR rescales per channel (the best per-channel affine map of the input, so
a model must add something to beat it). Writes ``bench/results/multi_structure.json``,
``bench/results/multi_structure.md`` (the BENCHMARKS.md section) and
``bench/figures/multi_structure.png``.

    .venv/bin/python bench/multi_structure.py --steps 300     # about 15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

#: What the synthetic structures look like, in generator order.
SYNTH_LOOKS = ("thin curves", "large, smooth", "small dots", "cell outlines")
#: What the channels of the PartSegData stack show (bench/real_data.py).
REAL_LOOKS = ("nuclei, textured", "sparse bright foci", "small bright puncta",
              "nuclei, bright and even")


def _summary(metrics: dict, names) -> dict:
    s = metrics["summary"]
    return {m: {n: s[m][n] for n in [*names, "mean"]} for m in ("ri_psnr", "ssim")
            if m in s}


def run_synthetic(n_structures: int, steps: int, samples: int, out: Path, *, frames: int,
                  size: int, seed: int = 0, filters: int = 16,
                  figures: Path = ROOT / "figures") -> dict:
    """Train Lean-LC on ``n_structures`` synthetic channels; score its test frames."""
    from musplit.config.presets import preset
    from musplit.data.io import write_tiff
    from musplit.data.splits import load_split
    from musplit.data.structures import generate_structures
    from musplit.evaluation import evaluate_arrays
    from musplit.splitter import Splitter
    from musplit.training import train

    t0 = time.time()
    data = generate_structures(frames, size, n_structures, seed=seed)
    clean = data.clean
    path = out / f"structures{n_structures}.tif"
    out.mkdir(parents=True, exist_ok=True)
    write_tiff(path, clean, axes="SYXC", channel_names=list(data.names))
    names = list(data.names)
    cfg = preset("cpu-small", name=f"structures{n_structures}",  # out_channels follows the file
                 data={"path": str(path)}, model={"lc": "lean", "filters": filters},
                 train={"max_steps": steps, "batch_size": 16,
                        "val_every_steps": max(1, steps // 6), "seed": seed})
    run_dir = out / f"run{n_structures}"
    best = train(cfg, run_dir, overwrite=True, progress=False)
    t_train = time.time() - t0
    split = load_split(run_dir / "split.json")
    test = split.test or split.val
    truth = clean[test]
    splitter = Splitter.load(best)
    image = splitter.stats.mix(splitter.stats.clip(truth))
    pred = splitter.predict(image, samples=samples, seed=seed).mean
    base = evaluate_arrays(truth, np.repeat(image[..., None], n_structures, -1),
                           channel_names=names, stats=splitter.stats, source="linear baseline")
    res = evaluate_arrays(truth, pred, channel_names=names, stats=splitter.stats,
                          source="Lean-LC")
    from musplit.figures import plot_prediction

    fig_path = figures / f"multi_structure_split{n_structures}.png"
    plot_prediction(image[0], pred[0], fig_path, target=truth[0], channel_names=names,
                    title=f"synthetic, {n_structures} structures: a test frame, Lean-LC "
                          f"after {steps} steps")
    return {"data": "synthetic", "structures": n_structures, "names": names,
            "looks": list(SYNTH_LOOKS[:n_structures]), "steps": steps, "samples": samples,
            "frames": frames, "size": size, "test_frames": len(test),
            "train_s": t_train, "seconds": time.time() - t0,
            "baseline": _summary(base, names), "lean": _summary(res, names),
            "date": time.strftime("%Y-%m-%d")}


def run_real(channels, steps: int, samples: int, out: Path, *, seed: int = 0) -> dict:
    """Lean-LC on ``channels`` of the PartSegData stack (the real-data demo's settings)."""
    from musplit.demo_real import partseg_stack, run_pair

    t0 = time.time()
    res = run_pair(partseg_stack(), tuple(channels), out, steps=steps, samples=samples,
                   seed=seed, models=(("lean", "HVAE Lean-LC", "lean"),),
                   echo=lambda *_: None, figures=False)
    names = res["names"]
    return {"data": "real", "structures": len(channels), "channels": list(channels),
            "names": names, "looks": [REAL_LOOKS[c] for c in channels], "steps": steps,
            "samples": samples, "train_s": res["lean"]["train_s"],
            "seconds": time.time() - t0,
            "baseline": _summary(res["baseline"]["metrics"], names),
            "lean": _summary(res["lean"]["metrics"], names), "date": time.strftime("%Y-%m-%d")}


def _cell(m: dict) -> str:
    return f"{m['mean']:.2f} ± {m['sem']:.2f}"


def gains(row: dict) -> dict:
    """RI-PSNR gain of Lean-LC over the baseline, per channel and mean (dB)."""
    b, m = row["baseline"]["ri_psnr"], row["lean"]["ri_psnr"]
    return {n: m[n]["mean"] - b[n]["mean"] for n in [*row["names"], "mean"]}


def _label(row: dict) -> str:
    if row["data"] == "synthetic":
        return f"synthetic, {row['structures']} structures"
    return f"PartSegData, channels {','.join(str(c) for c in row['channels'])}"


def section(result: dict) -> str:
    rows = result["rows"]
    synth = next((r for r in rows if r["data"] == "synthetic"), None)
    steps = rows[0]["steps"] if rows else 0
    samples = rows[0]["samples"] if rows else 0
    date = rows[0]["date"] if rows else ""
    lines = [
        "## Three and four structures (issue 18)",
        "",
        f"Measured {date} by `bench/multi_structure.py`. Lean-LC HVAE, {steps} steps of batch "
        f"16, {samples} posterior samples, one C-output model per row. "
        + (f"Synthetic: `musplit generate structures` ({synth['frames']} frames of "
           f"{synth['size']} × {synth['size']}: filaments, blobs, puncta and, for C = 4, "
           "membranes, blurred by a Gaussian PSF, no noise), the `cpu-small` preset, input = "
           f"the mean of the channels, scored on the {synth['test_frames']} test frames of the "
           "default frame split. " if synth else "")
        + "Real: PartSegData's `stack.tif` with the `cpu-real` preset of `musplit demo-real` "
        "(input = the sum of the channels), scored on the four 256 × 256 tiles of the held-out "
        "bottom 256 rows. RI-PSNR (dB) per channel, mean ± s.e.m.; the linear baseline is the "
        "superimposed image itself, which RI-PSNR rescales per channel (the best affine map of "
        "the input onto each channel).",
        "",
        "| data | channel | linear baseline | Lean-LC | gain |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        g = gains(r)
        for i, n in enumerate([*r["names"], "mean"]):
            label = f"{n} ({r['looks'][i]})" if i < len(r["names"]) else "**mean**"
            lines.append(f"| {_label(r)} | {label} | {_cell(r['baseline']['ri_psnr'][n])} | "
                         f"{_cell(r['lean']['ri_psnr'][n])} | {g[n]:+.2f} |")
    beat = [r for r in rows if gains(r)["mean"] > 0]
    lines += [
        "",
        f"Lean-LC above the linear baseline on the mean: {len(beat)} of {len(rows)} rows"
        + (f" ({', '.join(_label(r) for r in beat)})" if beat else "") + ". "
        + "Training times: "
        + ", ".join(f"{_label(r)} {r['train_s'] / 60:.1f} min" for r in rows) + ".",
        "",
        "![three and four structures](bench/figures/multi_structure.png)",
        "",
        "A synthetic test frame split into four structures (input, prediction and truth per "
        "channel):",
        "",
        "![four structures](bench/figures/multi_structure_split4.png)",
    ]
    if result.get("reading"):
        lines += ["", result["reading"]]
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    """RI-PSNR gain over the baseline per channel, one group of bars per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        g = gains(r)
        vals = [g[n] for n in r["names"]]
        ax.bar(range(len(vals)), vals, color=["tab:green" if v > 0 else "tab:red" for v in vals])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(vals)), [f"{n}\n{lk}" for n, lk in zip(r["names"], r["looks"],
                                                                          strict=True)],
                      fontsize=6)
        ax.set_title(_label(r), fontsize=8)
        ax.set_ylabel("RI-PSNR gain over baseline (dB)", fontsize=7)
    fig.tight_layout()
    from musplit.figures import save_figure

    save_figure(fig, path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--frames", type=int, default=40, help="synthetic frames")
    ap.add_argument("--size", type=int, default=128, help="synthetic frame side")
    ap.add_argument("--no-real", action="store_true", help="skip the PartSegData rows")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here")
    ap.add_argument("--results", type=Path, default=ROOT / "results",
                    help="folder of multi_structure.json / .md")
    ap.add_argument("--figures", type=Path, default=ROOT / "figures")
    ap.add_argument("--render", action="store_true", help="only rebuild from the stored JSON")
    args = ap.parse_args(argv)
    res_path = args.results / "multi_structure.json"
    if not args.render:
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            out = args.out or Path(tmp)
            for c in (3, 4):
                print(f"synthetic, {c} structures ...", flush=True)
                rows.append(run_synthetic(c, args.steps, args.samples, out / f"synth{c}",
                                          frames=args.frames, size=args.size,
                                          figures=args.figures))
                print(json.dumps({"row": _label(rows[-1]), "gains": gains(rows[-1])}),
                      flush=True)
            if not args.no_real:
                for chans in ((0, 1, 2), (0, 1, 2, 3)):
                    print(f"real, channels {chans} ...", flush=True)
                    rows.append(run_real(chans, args.steps, args.samples,
                                         out / f"real{len(chans)}"))
                    print(json.dumps({"row": _label(rows[-1]), "gains": gains(rows[-1])}),
                          flush=True)
        old = json.loads(res_path.read_text()) if res_path.exists() else {}
        _write(res_path, json.dumps({"rows": rows, "reading": old.get("reading", "")},
                                    indent=1))
    result = json.loads(res_path.read_text())
    figure(result, args.figures / "multi_structure.png")
    _write(args.results / "multi_structure.md", section(result))
    print(section(result))
    return 0


def _write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name, then rename (no half-written result files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
