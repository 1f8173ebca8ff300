"""``musplit demo``: the main job on built-in synthetic data, end to end.

It generates SinosoidalCritters, trains a Lean-LC HVAE and a Vanilla HVAE of the ``cpu-small``
preset for the same step budget, predicts the test split with inner padding, evaluates both,
and writes a report (Markdown with figures and metrics) into the output folder: the paper's
central claim — lateral context beats the vanilla model — visible in minutes on a laptop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from musplit.config.presets import DEMO_PAIRING, demo_preset
from musplit.data.context import lateral_context
from musplit.data.sources import write_critters
from musplit.data.synthetic import generate_critters
from musplit.evaluation import evaluate_arrays, write_metrics
from musplit.figures import plot_context_stack, plot_prediction
from musplit.files import atomic_write
from musplit.splitter import Splitter

log = logging.getLogger(__name__)

#: Models compared by the demo: (folder, title, lc).
MODELS = (("lean", "HVAE Lean-LC", "lean"), ("vanilla", "HVAE Vanilla", "none"))


#: Critters pairing of the demo: :data:`musplit.config.presets.DEMO_PAIRING` (why: there).
PAIRING = DEMO_PAIRING

#: The demo's run settings (:func:`musplit.config.presets.demo_preset`), under their old name.
demo_config = demo_preset


def _context_figure(out_dir: Path, targets, split, stats, echo) -> Path:
    i = split.train[0]
    raw = stats.mix(stats.clip(targets[i]))
    h, w = raw.shape
    corner = np.array([[h // 2 - 32 + 5, w // 2 - 32 - 7]])
    t0 = time.perf_counter()
    # Zero padding is intensity 0 (background), so the context is cut from the raw mix and
    # normalised afterwards, as the training dataset does.
    stack = stats.normalize_input(lateral_context(raw, corner, patch=64, scales=5,
                                                  pad="zeros")[0])
    t1 = time.perf_counter()
    frame = stats.normalize_input(raw)
    tgt = stats.normalize_target(stats.clip(targets[i]))[corner[0, 0]:corner[0, 0] + 64,
                                                         corner[0, 1]:corner[0, 1] + 64]
    path = plot_context_stack(frame, corner[0], stack, out_dir / "context_stack.png",
                              targets=np.moveaxis(tgt, -1, 0), channel_names=["ch1", "ch2"],
                              title=f"SinosoidalCritters frame {i}: the network's view")
    echo(f"lateral context of one patch: {stack.shape} in {1e3 * (t1 - t0):.1f} ms -> {path}")
    return path


def run_demo(out_dir: str | os.PathLike = "runs/demo", *, frames: int = 100, size: int = 256,
             steps: int = 1000, seed: int = 0, samples: int = 5, echo=print) -> Path:
    """Run the demo and return the path of its report.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created; the demo's own earlier results in it are replaced).
    frames, size : int
        SinosoidalCritters frames and frame size (split 80/10/10).
    steps : int
        Training steps per model (the same budget for both).
    samples : int
        Posterior samples for the MMSE prediction and its std.
    """
    # Lazy: musplit.training imports lightning (slow to import; demo_config needs none of it).
    from musplit.training import prepare_data, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t_start = time.time()

    echo(f"[1/4] generating SinosoidalCritters N25 (pairing {PAIRING}): {frames} frames of "
         f"{size}x{size}")
    targets = generate_critters(frames, size=size, connector=25, seed=seed, pairing=PAIRING)
    write_critters(out_dir / "data", targets, overwrite=True,
                   params={"frames": frames, "size": size, "connector": 25, "seed": seed,
                           "pairing": PAIRING})
    data, stats = prepare_data(demo_config("lean", frames=frames, size=size, steps=steps,
                                           seed=seed))
    split = data.split
    _context_figure(out_dir, targets, split, stats, echo)

    results = {}
    for folder, title, lc in MODELS:
        cfg = demo_config(lc, frames=frames, size=size, steps=steps, seed=seed)
        echo(f"[2/4] training {title} ({steps} steps, batch {cfg.train.batch_size}, "
             f"{cfg.model.filters} filters)")
        t0 = time.time()
        best = train(cfg, out_dir / folder, overwrite=True, progress=True)
        t_train = time.time() - t0
        echo(f"[3/4] predicting the {len(split.test)} test frames with {title} "
             f"(inner padding, G={cfg.predict.grid}, {samples} samples)")
        splitter = Splitter.load(best)
        gt = targets[split.test]
        inp = splitter.stats.mix(splitter.stats.clip(gt))
        t0 = time.time()
        pred = splitter.predict(inp, samples=samples, seed=seed)
        t_pred = time.time() - t0
        pred.save(out_dir / folder / "test_prediction.tif", overwrite=True)
        res = evaluate_arrays(gt, pred.mean, stats=splitter.stats,
                              channel_names=pred.channel_names, source=title)
        write_metrics(res, out_dir / folder / "metrics.json")
        fig = plot_prediction(inp[0], pred.mean[0], out_dir / f"prediction_{folder}.png",
                              target=splitter.stats.clip(gt[0]), std=pred.std[0]
                              if pred.std is not None else None,
                              channel_names=pred.channel_names,
                              title=f"{title}, test frame {split.test[0]}")
        results[folder] = {"title": title, "metrics": res, "train_s": t_train,
                           "predict_s": t_pred, "figure": fig.name,
                           "params": sum(p.numel() for p in splitter.model.parameters())}

    echo("[4/4] evaluation on the test split (normalised units, as the paper)")
    report = _write_report(out_dir, results, frames=frames, size=size, steps=steps,
                           samples=samples, split=split, elapsed=time.time() - t_start)
    table = _comparison_table(results)
    echo(table)
    lean = results["lean"]["metrics"]["summary"]["ri_psnr"]["mean"]["mean"]
    van = results["vanilla"]["metrics"]["summary"]["ri_psnr"]["mean"]["mean"]
    verdict = "beats" if lean > van else "does NOT beat"
    echo(f"Lean-LC {verdict} Vanilla by {lean - van:+.2f} dB range-invariant PSNR.")
    echo(f"report: {report}")
    return report


def _comparison_table(results: dict) -> str:
    head = "| model | params | RI-PSNR (dB) | SSIM | train (s) | predict (s) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in results.values():
        s = r["metrics"]["summary"]
        ri, ss = s["ri_psnr"]["mean"], s["ssim"]["mean"]
        lines.append(f"| {r['title']} | {r['params']:,} | {ri['mean']:.2f} ± {ri['sem']:.2f} | "
                     f"{ss['mean']:.3f} ± {ss['sem']:.3f} | {r['train_s']:.0f} | "
                     f"{r['predict_s']:.1f} |")
    return "\n".join(lines)


def _write_report(out_dir: Path, results: dict, *, frames, size, steps, samples, split,
                  elapsed) -> Path:
    lines = [
        "# musplit demo: lateral context on SinosoidalCritters",
        "",
        f"SinosoidalCritters N25, {frames} frames of {size}×{size} (train {len(split.train)}, "
        f"val {len(split.val)}, test {len(split.test)}), with the `{PAIRING}` pairing: the "
        "high-frequency half of each critter identifies its channel (R2 for ch1, R3 for ch2) "
        "and the low-frequency half (R0 or R1) occurs in both channels, so that half can only be "
        "assigned by seeing the rest of its critter. (With the paper's pairing only the pair of "
        "frequencies identifies a channel; the paper trains for hundreds of thousands of steps, "
        "and in a few minutes on a CPU neither model learns it.) Each model: `cpu-small` preset "
        f"(β-NLL with β = 1) with 16 filters and 4×16 latents, {steps} training steps of batch "
        f"16, prediction with inner padding (G = 32, P = 64), MMSE over {samples} samples. "
        "Metrics on whole test frames in normalised units (docs/evaluation.md), mean ± standard "
        "error over frames, averaged over the two channels.",
        "",
        _comparison_table(results),
        "",
        "Per channel (RI-PSNR dB):",
        "",
    ]
    for r in results.values():
        s = r["metrics"]["summary"]["ri_psnr"]
        chans = [c for c in s if c != "mean"]
        lines.append(f"- {r['title']}: " + ", ".join(
            f"{c} {s[c]['mean']:.2f} ± {s[c]['sem']:.2f}" for c in chans))
    lines += [
        "",
        "## What the network sees",
        "",
        "![context stack](context_stack.png)",
        "",
    ]
    path = finish_report(out_dir, lines, results, heading="##",
                         total=f"Total time {elapsed:.0f} s.")
    summary = {k: {"ri_psnr": v["metrics"]["summary"]["ri_psnr"]["mean"],
                   "ssim": v["metrics"]["summary"]["ssim"]["mean"],
                   "train_s": v["train_s"], "predict_s": v["predict_s"]}
               for k, v in results.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary name, then rename
    (:func:`musplit.files.atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path


def finish_report(out_dir: Path, lines: list[str], results: dict, *, heading: str,
                  total: str) -> Path:
    """End a demo report and write it as ``out_dir/report.md``: ``lines``, then one section
    (``heading`` level) with the figure of every model result that has one, then ``total``."""
    lines = list(lines)
    for r in results.values():
        if isinstance(r, dict) and r.get("figure"):
            lines += [f"{heading} {r['title']}", "", f"![{r['title']}]({r['figure']})", ""]
    lines += [total, ""]
    return write_text_atomic(out_dir / "report.md", "\n".join(lines))
