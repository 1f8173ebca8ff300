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

from musplit.checkpoints.format import load_checkpoint
from musplit.config.presets import DEMO_PAIRING, demo_preset
from musplit.data.context import lateral_context
from musplit.data.sources import write_critters
from musplit.data.synthetic import generate_critters
from musplit.evaluation import evaluate_arrays, write_metrics
from musplit.figures import plot_context_stack, plot_prediction
from musplit.files import atomic_write
from musplit.runtime import apply_threads
from musplit.splitter import Splitter

log = logging.getLogger(__name__)

#: Models compared by the demo: (folder, title, lc).
MODELS = (("lean", "HVAE Lean-LC", "lean"), ("vanilla", "HVAE Vanilla", "none"))


#: The intensity unit of the synthetic data (as generated: 0 is background).
UNIT = "intensity, a.u."

#: Critters pairing of the demo: :data:`musplit.config.presets.DEMO_PAIRING` (why: there).
PAIRING = DEMO_PAIRING

#: The demo's run settings (:func:`musplit.config.presets.demo_preset`), under their old name.
demo_config = demo_preset


def _context_figure(out_dir: Path, targets, split, stats, echo) -> Path:
    i = split.train[0]
    raw = stats.mix(stats.clip(targets[i]))
    h, w = raw.shape
    # near the centre, a little off it; inside the frame (the targets are cut from it)
    corner = np.clip(np.array([[h // 2 - 32 + 5, w // 2 - 32 - 7]]), 0, [h - 64, w - 64])
    # Zero padding is intensity 0 (background), so the context is cut from the raw mix and
    # normalised afterwards, as the training dataset does.
    stack = stats.normalize_input(lateral_context(raw, corner, patch=64, scales=5,
                                                  pad="zeros")[0])
    frame = stats.normalize_input(raw)
    tgt = stats.normalize_target(stats.clip(targets[i]))[corner[0, 0]:corner[0, 0] + 64,
                                                         corner[0, 1]:corner[0, 1] + 64]
    path = plot_context_stack(frame, corner[0], stack, out_dir / "context_stack.png",
                              targets=np.moveaxis(tgt, -1, 0), channel_names=["ch1", "ch2"],
                              title=f"SinosoidalCritters training frame {i}: what Lean-LC sees "
                                    "of one 64 px patch",
                              unit="input, normalised", target_unit="true channel, normalised")
    echo(f"lateral context of one patch: {stack.shape} -> {path}")
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
    apply_threads()  # musplit.runtime: MUSPLIT_THREADS or one per core
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
        runtime = load_checkpoint(best)["extra"].get("runtime")
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
                              channel_names=pred.channel_names, unit=UNIT,
                              title=f"{title}, test frame {split.test[0]}")
        results[folder] = {"title": title, "metrics": res, "train_s": t_train,
                           "predict_s": t_pred, "load": machine_load(), "figure": fig.name,
                           "runtime": runtime,
                           "params": sum(p.numel() for p in splitter.model.parameters())}

    echo("[4/4] evaluation on the test split (normalised units, as the paper)")
    report = _write_report(out_dir, results, frames=frames, size=size, steps=steps,
                           samples=samples, split=split, elapsed=time.time() - t_start,
                           load=machine_load())
    echo(_comparison_table(results))
    for line in run_times(results, elapsed=time.time() - t_start, load=machine_load()) or []:
        echo(line)
    lean = results["lean"]["metrics"]["summary"]["ri_psnr"]["mean"]["mean"]
    van = results["vanilla"]["metrics"]["summary"]["ri_psnr"]["mean"]["mean"]
    verdict = "beats" if lean > van else "does NOT beat"
    echo(f"Lean-LC {verdict} Vanilla by {lean - van:+.2f} dB range-invariant PSNR.")
    echo(f"report: {report}")
    return report


def score_cell(summary: dict, metric: str, digits: int = 3) -> str:
    """``mean ± sem`` of the channel mean of ``metric`` in an evaluation summary, or ``–`` where
    it was not computed (MicroSSIM without the microssim package)."""
    if metric not in summary:
        return "–"
    m = summary[metric]["mean"]
    return f"{m['mean']:.{digits}f} ± {m['sem']:.{digits}f}"


def _comparison_table(results: dict) -> str:
    head = "| model | trainable parameters | RI-PSNR (dB) | SSIM (0 to 1) | MicroSSIM (0 to 1) |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for r in results.values():
        s = r["metrics"]["summary"]
        lines.append(f"| {r['title']} | {r['params']:,} | {score_cell(s, 'ri_psnr', 2)} | "
                     f"{score_cell(s, 'ssim')} | {score_cell(s, 'microssim')} |")
    return "\n".join(lines)


def machine_load() -> dict | None:
    """The machine's load average (over 1, 5 and 15 minutes) and CPU count now, or None where
    the system reports no load average: run times are only shown beside it."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return {"load_1min": round(one, 2), "load_5min": round(five, 2),
            "load_15min": round(fifteen, 2), "cpus": os.cpu_count() or 1}


def _load_text(load: dict) -> str:
    return (f"load average {load['load_1min']:.1f} over the last minute, "
            f"{load['load_5min']:.1f} over 5 minutes, on {load['cpus']} CPU cores")


def run_times(results: dict, *, elapsed: float, load: dict | None) -> list[str] | None:
    """One line per model (training and prediction time) and one for the whole run, each with
    the machine's load beside it (taken when that model finished); None where the system
    reports no load (:func:`machine_load`): then no time is shown at all."""
    runs = [r for r in results.values() if isinstance(r, dict) and "train_s" in r]
    if load is None or any(r.get("load") is None for r in runs):
        return None
    return [*(f"- {r['title']}: trained in {r['train_s']:.0f} s, predicted the test data in "
              f"{r['predict_s']:.1f} s ({_load_text(r['load'])})"
              + (f"; {r['runtime'].removeprefix('runtime: ')}" if r.get("runtime") else "")
              + "." for r in runs),
            f"- The whole run: {elapsed:.0f} s ({_load_text(load)})."]


def timing_lines(results: dict, *, elapsed: float, load: dict | None) -> list[str]:
    """The report's *Run time* section (:func:`run_times` with what the load means)."""
    times = run_times(results, elapsed=elapsed, load=load)
    if times is None:
        return ["## Run time", "", "Run times are not shown: this system does not report how "
                "busy it was, and without that they cannot be compared.", ""]
    return ["## Run time", "",
            "Times depend on what else the computer was doing, so each is shown with the "
            "machine's load average at the time (the number of programs running or waiting for "
            f"a CPU core). A load above the number of cores ({load['cpus']} here) means other "
            "programs competed for the CPU and the times are longer than on an idle machine; "
            "compare times only between runs at similar load. The first model's training time "
            "also holds a few seconds of one-off start-up.", "", *times, ""]


def db_to_error(db: float) -> float:
    """How much lower (fraction, negative = higher) the RMS error is after a gain of ``db``."""
    return 1 - 10 ** (-db / 20)


def metric_notes(over: str) -> list[str]:
    """Plain explanations of the metrics of a demo report; ``over``: what the ± is over."""
    return [
        "How to read the numbers:",
        "",
        "- **RI-PSNR** (range-invariant peak signal-to-noise ratio, in decibels, higher is "
        "better): the typical (root-mean-square) difference between the predicted and the true "
        "structure, relative to the true structure's brightness range, on a logarithmic scale. "
        "Before comparing, the prediction's brightness is rescaled (one scale factor and one "
        "offset per image) to fit the truth best, so only where the signal is counts, not its "
        "absolute brightness. +1 dB means about 11 % less error, +3 dB about 29 % less, +6 dB "
        "half the error.",
        "- **SSIM** (structural similarity, 0 to 1, 1 = identical): how well local brightness, "
        "contrast and structure agree in small (7 × 7 pixel) windows; it drops when fine "
        "structure is blurred or missing, which RI-PSNR forgives more.",
        "- **MicroSSIM** (0 to 1, 1 = identical): SSIM adapted to microscopy; before comparing, "
        "the background level is removed and the prediction's overall brightness is rescaled by "
        "one factor per structure, fitted on all the scored images together, so a prediction "
        "that is right but dimmer than the truth is not penalised as plain SSIM penalises it "
        "(– where the microssim package is not installed, which needs Python 3.11 or later).",
        f"- ± is the standard error of the mean over {over}: differences much smaller than it "
        "may be chance.",
        "- The definitions (RI-PSNR and SSIM as the µSplit paper computes them, MicroSSIM as its "
        "successor MicroSplit reports it) are in docs/evaluation.md of the musplit repository.",
        "",
    ]


def std_notes(samples: int, unit: str) -> list[str]:
    """What the std panels of a demo report show, in ``unit``."""
    return [
        "## The uncertainty (std) maps",
        "",
        f"The network is probabilistic: for every test image it drew {samples} possible splits, "
        "and the prediction shown is their average. The *std* panels show, per pixel, the "
        "standard deviation of those samples around the average: bright where the samples "
        "disagree, i.e. where the model is unsure which structure a signal belongs to, dark "
        f"where they agree. The std is in the same units as the image intensities ({unit}, the "
        "colour bars of the input, prediction and ground truth), so a std of 1 next to a "
        "predicted intensity of 10 means the samples spread by about ±10 %. It is the spread of "
        f"the samples, not a calibrated error bar, and with {samples} samples it is itself "
        "noisy.",
        "",
    ]


def _write_report(out_dir: Path, results: dict, *, frames, size, steps, samples, split,
                  elapsed, load=None) -> Path:
    lean = results["lean"]["metrics"]["summary"]
    van = results["vanilla"]["metrics"]["summary"]
    gain = lean["ri_psnr"]["mean"]["mean"] - van["ri_psnr"]["mean"]["mean"]
    dssim = lean["ssim"]["mean"]["mean"] - van["ssim"]["mean"]["mean"]
    sem = max(lean["ri_psnr"]["mean"]["sem"], van["ri_psnr"]["mean"]["sem"])
    if gain > sem:
        verdict = "**With lateral context the split is better**"
    elif gain > 0:
        verdict = ("**With lateral context the split is slightly better**, by less than the "
                   "standard errors (it could be chance)")
    else:
        verdict = "**Here lateral context did not help**"
    verdict += (f": Lean-LC minus Vanilla is {gain:+.2f} dB RI-PSNR (about "
                f"{100 * abs(db_to_error(gain)):.0f} % {'less' if gain > 0 else 'more'} error) "
                f"and {dssim:+.3f} SSIM.")
    n_test = len(split.test)
    cfg = demo_config("lean", frames=frames, size=size, steps=steps, seed=0)
    p, k, b, g = cfg.data.patch, cfg.data.scales - 1, cfg.train.batch_size, cfg.predict.grid
    clip = 100 * (1 - cfg.data.clip_quantile)
    lines = [
        "# musplit demo: separating two superimposed structures",
        "",
        "## What was split",
        "",
        "The images are synthetic (*SinosoidalCritters*, generated by musplit): each frame holds "
        "two structures, **ch1** and **ch2**, five wavy tubes (\"critters\") each, as if imaged "
        "in two separate fluorescence channels. The network gets only their superimposition, "
        "the pixel-wise average of the two channels (what one detector records when both "
        "structures carry the same dye), and has to give back each structure on its own.",
        "",
        "What tells the structures apart: each critter is two joined wavy segments. One half "
        "wiggles fast and identifies the structure (a period of about 20 pixels in ch1, about 10 "
        "pixels in ch2); the other half wiggles slowly (a period of about 50 or 100 pixels) and "
        "looks the same in both. A slow half can only be assigned by following it to its fast "
        f"half, often further away than one {p}-pixel patch, which is where seeing the "
        "surroundings (*lateral context*) should help. (In the paper's version of this data only "
        "the combination of both halves identifies a structure; learning that takes hundreds of "
        "thousands of training steps on a GPU, so this few-minute CPU demo uses the easier "
        "variant.)",
        "",
        f"Data: {frames} frames of {size} × {size} pixels, split into {len(split.train)} training "
        f"frames, {len(split.val)} validation frames (used to keep the best model during "
        f"training) and **{n_test} test frames**, which neither model saw during training. "
        f"Training saw random {p} × {p} pixel patches of the training frames, each with both "
        f"true channels: {steps} steps of {b} patches per model. Intensities are in arbitrary "
        f"units (a.u.) with 0 as background; the brightest {clip:g} % of the training data's "
        "intensities are clipped, in training and in the scores below.",
        "",
        "Two models of the same kind (a hierarchical variational autoencoder, HVAE, as in "
        "µSplit), with the same training budget:",
        "",
        f"- **HVAE Lean-LC** sees each {p}-pixel patch and, at {k} coarser scales, its "
        f"surroundings up to a {p * 2**k}-pixel-wide field, each shrunk to {p} × {p} pixels "
        "(the figure *What the network sees* below);",
        f"- **HVAE Vanilla** sees the {p}-pixel patch only.",
        "",
        f"Each model is the small `cpu-small` preset ({cfg.model.filters} filters, "
        f"{len(cfg.model.z_dims)} × {cfg.model.z_dims[0]} latent variables). Its "
        "training loss weights each pixel's error so that the intensities are learned about as "
        "fast as with a plain squared error (`train.nll_beta = 1`); the paper, which trains far "
        "longer, uses the unweighted loss. The test frames are predicted in "
        f"{g} × {g} pixel tiles, each the centre of a {p}-pixel patch so that it sees its "
        "neighbours (no seams), as the "
        f"average of {samples} samples (see the uncertainty maps below).",
        "",
        "## How well",
        "",
        f"Scores on the {n_test} whole test frames, against the true structures:",
        "",
        _comparison_table(results),
        "",
        verdict,
        "",
        "The table averages the two structures; per structure (RI-PSNR, dB):",
        "",
    ]
    for r in results.values():
        s = r["metrics"]["summary"]["ri_psnr"]
        chans = [c for c in s if c != "mean"]
        lines.append(f"- {r['title']}: " + ", ".join(
            f"{c} {s[c]['mean']:.2f} ± {s[c]['sem']:.2f}" for c in chans))
    lines += [
        "",
        *metric_notes(f"the {n_test} test frames"),
        "Lean-LC has more trainable parameters than Vanilla: the extra ones read the context.",
        "",
        *std_notes(samples, UNIT),
        "## What the network sees",
        "",
        "Left: one training frame (the superimposed input as the network gets it, rescaled "
        "with the training data's mean and standard deviation) with the field of view at each "
        f"of the {k + 1} scales around one {p}-pixel patch (scale 0). Fields wider than the "
        "frame are drawn clipped to it (dashed); beyond the frame edge the network sees zeros, "
        f"i.e. background, hatched in their panels. Middle: the {k + 1} inputs of {p} × {p} "
        f"pixels Lean-LC gets for that patch (scale s shows a field {p}·2^s pixels wide, shrunk "
        "2^s times). Right: the two true structures in the patch. Vanilla gets only the scale-0 "
        "patch.",
        "",
        "![context stack](context_stack.png)",
        "",
        "## The predictions, one test frame",
        "",
        "Top row: the superimposed input and each model's prediction per structure; middle: the "
        "true structures (the prediction and the truth of a structure share one colour scale); "
        f"bottom: the uncertainty (std). Colour bars in intensity units ({UNIT}).",
        "",
    ]
    path = finish_report(out_dir, lines, results, heading="###",
                         total="\n".join(timing_lines(results, elapsed=elapsed, load=load)))
    summary = {k: {"ri_psnr": v["metrics"]["summary"]["ri_psnr"]["mean"],
                   "ssim": v["metrics"]["summary"]["ssim"]["mean"],
                   "microssim": v["metrics"]["summary"].get("microssim", {}).get("mean"),
                   "train_s": v["train_s"], "predict_s": v["predict_s"], "load": v.get("load")}
               for k, v in results.items()}
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
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
