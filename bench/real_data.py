"""musplit on real data: every pair of the PartSegData stack's 4 channels (issue 15).

For each of the 6 channel pairs, the Lean-LC and Vanilla HVAEs of the real-data demo (the
``cpu-real`` preset, the same steps) train on the frame outside the held-out bottom 256 rows and
predict it from the sum of the two channels; RI-PSNR and SSIM on the four 256 x 256 tiles of
that region (mean ± s.e.m.) are compared with the linear baseline (the superimposed image,
rescaled per channel by the metric). Writes ``bench/results/real_data.json``,
``bench/results/real_data.md`` (the BENCHMARKS.md section) and
``bench/figures/real_data.png``.

    .venv/bin/python bench/real_data.py --steps 250       # about 25 min on 2 CPU cores

It also measures what each real-data setting of the ``cpu-real`` preset is worth on pair 0+3
(one reverted at a time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

#: What the channels of the stack show (looked at in the images; see the section text).
LOOKS = {0: "nuclei, textured", 1: "sparse bright foci", 2: "small bright puncta",
         3: "nuclei, bright and even (DAPI-like)"}


def run(steps: int, samples: int, pairs, out: Path) -> dict:
    import torch

    from musplit.demo_real import gains, partseg_stack, run_pair

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = partseg_stack()
    rows = []
    for a, b in pairs:
        t0 = time.time()
        print(f"pair {a}+{b} ...", flush=True)
        res = run_pair(path, (a, b), out / f"pair{a}{b}", steps=steps, samples=samples,
                       echo=lambda *_: None, figures=False)
        names = res["names"]
        row = {"channels": [a, b], "names": names, "steps": steps, "samples": samples,
               "seconds": time.time() - t0, "gains_db": gains(res),
               "date": time.strftime("%Y-%m-%d")}
        for key in ("baseline", "lean", "vanilla"):
            s = res[key]["metrics"]["summary"]
            row[key] = {m: {n: s[m][n] for n in [*names, "mean"]}
                        for m in ("ri_psnr", "ssim", "microssim") if m in s}
        rows.append(row)
        print(json.dumps({"pair": [a, b], "gains": row["gains_db"]}), flush=True)
    return {"rows": rows, "split": "test = bottom 256 rows of the 1024x1024 frame; validation "
            "band chosen in the rest where both channels have signal"}


#: What the images show, pair by pair (written after looking at them and at the table).
READING = (
    "Reading the table: at 250 steps no pair is split better than the superimposed image "
    "itself on both channels. The baseline is hard to beat here because RI-PSNR rescales the "
    "mix per channel and, in every pair but 0+3, one channel holds almost all of the signal "
    "(channels 1 and 2 are sparse foci and puncta, about 1% of the summed intensity): the mix "
    "is then already close to the bright channel, which scores 42 to 61 dB as it stands. Where "
    "the dim channel is recovered (0+2 and 2+3: the puncta gain +5.9 and +2.5 dB), the "
    "constraint that the predictions add up to the input moves its residual error into the "
    "bright channel, which loses 12 to 16 dB from a near-perfect start. Pair 0+3, two nuclear "
    "stains of similar brightness, is the only one where the two channels genuinely overlap; "
    "there the model ties the baseline (-0.05 and -0.43 dB) at 250 steps, and `musplit "
    "demo-real` (the same pair, 1000 steps per model) beats it on both channels. Lean-LC is "
    "ahead of the Vanilla HVAE on three of the six pairs (0+2, 0+3, 2+3). The ablation "
    "below shows the setting that matters on this data: without the sum constraint the "
    "bright channel loses 7 dB; the other three settings are worth under 0.1 dB each at "
    "this training length. SSIM, which does not rescale, is lower than the baseline's "
    "for most channels; on pair 0+3 Lean-LC's channel 0 (0.31 against 0.68) is far below "
    "Vanilla's (0.59). We have not yet found why; at 1000 steps (`musplit demo-real`) the "
    "mean SSIM is 0.72 against the baseline's 0.83, still below it."
)

#: One real-data setting reverted at a time (pair 0+3, Lean-LC): what each is worth.
ABLATION = (
    ("cpu-real (all four)", None),
    ("input = mean of the channels (as the paper)", {"data": {"input_is_sum": False}}),
    ("pooled clip at the 0.995 quantile (as the paper)", {"data": {"clip_quantile": 0.995}}),
    ("no flips or rotations", {"data": {"augment": "none"}}),
)


def ablation(steps: int, samples: int, out: Path, pair=(0, 3)) -> list[dict]:
    """Lean-LC on ``pair`` with each real-data setting reverted; the unconstrained prediction
    (``predict.consistent`` off) reuses the first model."""
    from musplit.data.io import open_image
    from musplit.demo_real import _tiles, gains, partseg_stack, run_pair
    from musplit.evaluation import evaluate_arrays
    from musplit.splitter import Splitter

    path = partseg_stack()
    rows = []
    for i, (label, over) in enumerate(ABLATION):
        print(f"ablation: {label} ...", flush=True)
        res = run_pair(path, pair, out / f"ablation{i}", steps=steps, samples=samples,
                       models=(("lean", "HVAE Lean-LC", "lean"),), echo=lambda *_: None,
                       figures=False, overrides=over)
        rows.append({"label": label, "gains_db": gains(res)["lean"],
                     "ri_psnr": res["lean"]["metrics"]["summary"]["ri_psnr"]})
        if i == 0:  # the same model, predicted without the sum constraint
            src = open_image(path)
            truth = src.read(channels=list(pair))[0]
            src.close()
            sp = Splitter.load(out / "ablation0" / "lean" / "best.ckpt")
            sp.config.predict.consistent = False
            test = (slice(truth.shape[0] - 256, None), slice(None))
            pred = sp.predict(truth.sum(-1)[None], samples=samples).mean[0][test]
            m = evaluate_arrays(_tiles(truth[test]), _tiles(pred),
                                channel_names=res["names"])["summary"]["ri_psnr"]
            b = res["baseline"]["metrics"]["summary"]["ri_psnr"]
            rows.append({"label": "predictions not constrained to add up to the input",
                         "gains_db": {n: m[n]["mean"] - b[n]["mean"] for n in m},
                         "ri_psnr": m})

    return rows


def _cell(m: dict) -> str:
    return f"{m['mean']:.2f} ± {m['sem']:.2f}"


def _cell3(m: dict | None) -> str:
    return "–" if m is None else f"{m['mean']:.3f} ± {m['sem']:.3f}"


def _micro(r: dict, key: str, n: str) -> str:
    """The MicroSSIM cell of one method and channel (``–`` in rows measured without it)."""
    return _cell3(r[key].get("microssim", {}).get(n))


def section(result: dict) -> str:
    rows = result["rows"]
    steps = rows[0]["steps"] if rows else 0
    samples = rows[0]["samples"] if rows else 3
    lines = [
        "## Real data: every channel pair of a confocal stack (issue 15)",
        "",
        f"Measured {rows[0]['date'] if rows else ''} by `bench/real_data.py`: PartSegData's "
        "`stack.tif` (1024 × 1024, 4 channels, LZW, read as shipped). For each pair the image "
        "to split is the sum of the two channels; the bottom 256 rows are the test region, "
        "never trained on. Lean-LC and Vanilla HVAE of the `cpu-real` preset (16 filters, 4 × 16 "
        f"latents; input = sum of the channels, no clip, flips and rotations, predictions that "
        f"add up to the input), {steps} steps of batch 16 each, {samples} "
        "posterior samples. RI-PSNR (dB) per channel on the four 256 × 256 tiles of the test "
        "region against the unclipped channels, mean ± s.e.m.; the baseline is the superimposed "
        "image itself, which RI-PSNR rescales per channel.",
        "",
        "| pair | channel | baseline | Lean-LC | Vanilla | Lean-LC gain | Vanilla gain |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = r["channels"]
        for n, c in zip([*r["names"], "mean"], [a, b, None], strict=True):
            label = f"{n} ({LOOKS[c]})" if c is not None else "**mean**"
            lines.append(
                f"| {a}+{b} | {label} | {_cell(r['baseline']['ri_psnr'][n])} | "
                f"{_cell(r['lean']['ri_psnr'][n])} | {_cell(r['vanilla']['ri_psnr'][n])} | "
                f"{r['gains_db']['lean'][n]:+.2f} | {r['gains_db']['vanilla'][n]:+.2f} |")
    lines += [
        "",
        "SSIM on the same tiles (scikit-image defaults, data range of the target tile; SSIM "
        "does not rescale, so the baseline is the superimposed image as it is), and MicroSSIM "
        "(the microssim package, fitted per channel on the four tiles together: background "
        "offsets removed and one brightness factor fitted, so it rescales as RI-PSNR does; "
        "docs/evaluation.md, \"MicroSSIM\"):",
        "",
        "| pair | channel | SSIM baseline | SSIM Lean-LC | SSIM Vanilla | MicroSSIM baseline | "
        "MicroSSIM Lean-LC | MicroSSIM Vanilla |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = r["channels"]
        for n in [*r["names"], "mean"]:
            lines.append(
                f"| {a}+{b} | {n if n != 'mean' else '**mean**'} | "
                f"{_cell3(r['baseline']['ssim'][n])} | {_cell3(r['lean']['ssim'][n])} | "
                f"{_cell3(r['vanilla']['ssim'][n])} | {_micro(r, 'baseline', n)} | "
                f"{_micro(r, 'lean', n)} | {_micro(r, 'vanilla', n)} |")
    split = [r for r in rows if all(r["gains_db"]["lean"][n] > 0 for n in r["names"])]
    lines += [
        "",
        "Split (Lean-LC above the baseline on both channels): "
        + (", ".join(f"{r['channels'][0]}+{r['channels'][1]}" for r in split) or "none")
        + f" of {len(rows)} pairs.",
        "",
        "![real data gains](bench/figures/real_data.png)",
        "",
        READING,
    ]
    abl = result.get("ablation") or []
    if abl:
        names = [n for n in abl[0]["ri_psnr"] if n != "mean"]
        lines += [
            "",
            f"What each real-data setting is worth (pair 0+3, Lean-LC, {steps} steps, one "
            "setting of `cpu-real` reverted at a time): RI-PSNR gain over the baseline (dB).",
            "",
            "| settings | " + " | ".join(names) + " | mean |",
            "|---|" + "---:|" * (len(names) + 1),
        ]
        for a in abl:
            lines.append(f"| {a['label']} | " + " | ".join(
                f"{a['gains_db'][n]:+.2f}" for n in [*names, "mean"]) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from musplit.report import save_figure

    rows = result["rows"]
    labels, lean, van = [], [], []
    for r in rows:
        for n in r["names"]:
            labels.append(f"{r['channels'][0]}+{r['channels'][1]}\n{n}")
            lean.append(r["gains_db"]["lean"][n])
            van.append(r["gains_db"]["vanilla"][n])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels)), 3.6))
    ax.bar(x - 0.2, lean, 0.4, label="Lean-LC")
    ax.bar(x + 0.2, van, 0.4, label="Vanilla")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("RI-PSNR gain over the\nsuperimposed image (dB)")
    ax.set_title("Real data (PartSegData stack): gain per channel of each pair", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=250, help="training steps per model")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--pairs", default=None, help="e.g. 0-3,1-2 (default: all 6)")
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    ap.add_argument("--render", action="store_true", help="only rewrite the section and figure")
    ap.add_argument("--no-ablation", action="store_true",
                    help="skip the ablation of the real-data settings (pair 0+3)")
    args = ap.parse_args()
    res_path = ROOT / "results" / "real_data.json"
    if not args.render:
        pairs = (list(itertools.combinations(range(4), 2)) if args.pairs is None else
                 [tuple(int(v) for v in p.split("-")) for p in args.pairs.split(",")])
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.steps, args.samples, pairs, args.out or Path(tmp))
            if not args.no_ablation:
                result["ablation"] = ablation(args.steps, args.samples, args.out or Path(tmp))
        res_path.parent.mkdir(exist_ok=True)
        res_path.write_text(json.dumps(result, indent=1))
    result = json.loads(res_path.read_text())
    figure(result, ROOT / "figures" / "real_data.png")
    (ROOT / "results" / "real_data.md").write_text(section(result))
    print(section(result))


if __name__ == "__main__":
    main()
