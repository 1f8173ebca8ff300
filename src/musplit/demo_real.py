"""``musplit demo --real``: the main job on a real confocal image, end to end.

The data is the OME-TIFF that the PartSegData package ships (``pip install 'musplit[examples]'``):
one 1024 x 1024 frame, four separately imaged channels of nuclei, LZW-compressed, as Bio-Formats
wrote it. Two of its channels are the targets; their sum is the superimposed image a one-channel
acquisition would give. The bottom 256 rows are held out as the test region and never trained on
(a spatial split, see :mod:`musplit.data.splits`); a validation band is chosen in the rest where
both channels have signal. A Lean-LC and a Vanilla HVAE are trained for the same steps, the test
region is predicted from the superimposed image of the whole frame, and both are scored against
the linear baseline: the superimposed image itself, which range-invariant PSNR rescales per
channel, so a model must add something to beat it.

Real-data settings (the ``cpu-real`` preset, ``real_config``) differ from the synthetic demo in
four ways, each measured in ``BENCHMARKS.md`` (*Real data*): the input is the *sum* of the
channels (a superimposed acquisition adds photons; ``data.input_is_sum``), nothing is clipped
(``clip_quantile = 1``: a pooled quantile clip falls inside the bright nuclei of the brighter
channel), training patches are flipped and rotated (``data.augment = "d4"``: one frame holds few
nuclei, and their texture has no preferred orientation), and each predicted sample is made to
add up to the input (``predict.consistent``), which gives the residual to the channel the
network is least sure of.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from musplit.config.presets import real_demo_preset
from musplit.data.io import open_image
from musplit.data.splits import Region, Split, load_split, save_split, spatial_split
from musplit.demo import (
    finish_report,
    machine_load,
    metric_notes,
    run_times,
    score_cell,
    std_notes,
    timing_lines,
    write_text_atomic,
)
from musplit.errors import MusplitError
from musplit.evaluation import evaluate_arrays, write_metrics
from musplit.figures import _pyplot, plot_prediction, save_figure
from musplit.runtime import apply_threads
from musplit.splitter import Splitter

#: Where the stack lies inside the PartSegData package.
STACK = ("static_files", "initial_images", "stack.tif")
#: Models compared: (folder, title, lc).
MODELS = (("lean", "HVAE Lean-LC", "lean"), ("vanilla", "HVAE Vanilla", "none"))
#: Rows held out for testing (the bottom quarter of the 1024-row frame).
TEST_ROWS = 256
#: The intensity unit of the stack: its float32 values as the file stores them.
UNIT = "intensity (file)"


def partseg_stack() -> Path:
    """Path of PartSegData's ``stack.tif``; a clear error when the extra is not installed."""
    try:  # lazy: the optional examples extra
        import PartSegData
    except ImportError:
        raise MusplitError(
            "the real-data demo needs the PartSegData package: pip install 'musplit[examples]' "
            "(or make demo-real)") from None
    path = Path(PartSegData.__file__).parent.joinpath(*STACK)
    if not path.is_file():
        raise MusplitError(f"PartSegData is installed but has no {'/'.join(STACK)}")
    return path


#: The ``cpu-real`` preset (the real-data settings of the module docstring) on a file:
#: :func:`musplit.config.presets.real_demo_preset`, under its old name.
real_config = real_demo_preset


def make_split(path, channels, out: Path, *, patch: int = 64) -> Path:
    """Test = the bottom :data:`TEST_ROWS` rows; validation = a band of the rest where every
    channel has signal. Written to ``out`` (split.json) and returned."""
    src = open_image(path)
    try:
        frame = src.read(channels=list(channels))[0]
    finally:
        src.close()
    h, w = frame.shape[:2]
    top = h - TEST_ROWS
    sub, _ = spatial_split([(top, w)], patch, frames=lambda i: frame[:top], test_fraction=0.0,
                           val_fraction=0.1)
    split = Split([0], [], [], val_regions=sub.val_regions,
                  test_regions=(Region(0, (top, h), (0, w)),))
    split.validate(1, shapes=[(h, w)])
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_split(split, out)


def _tiles(region: np.ndarray, size: int = TEST_ROWS) -> np.ndarray:
    """Cut an (H, W, C) region into (N, size, size, C) tiles: metrics are mean ± s.e.m. over
    them."""
    h, w = region.shape[:2]
    return np.stack([region[r:r + size, c:c + size] for r in range(0, h - size + 1, size)
                     for c in range(0, w - size + 1, size)])


def run_pair(path, channels, out_dir: Path, *, steps: int, samples: int = 3, seed: int = 0,
             filters: int = 16, batch_size: int = 16, models=MODELS, echo=print,
             figures: bool = True, overrides: dict | None = None) -> dict:
    """Train the ``models`` on 2 to 4 channels of ``path``, predict and score the test region.

    Returns
    -------
    dict
        ``{"baseline": metrics, folder: {"title", "metrics", "train_s", "predict_s", ...}}``,
        metrics as :func:`musplit.evaluation.evaluate_arrays` gives them, over the 256² tiles of
        the test region, in intensity units against the unclipped channels. ``overrides``
        (nested, as :meth:`musplit.config.Config.updated` takes them) change the settings of
        every model, e.g. ``{"data": {"augment": "none"}}``.
    """
    # Lazy: musplit.training imports lightning (slow; gains and the tables need none of it).
    from musplit.training import train

    out_dir = Path(out_dir)
    split_path = make_split(path, channels, out_dir / "data" / "split.json")
    split = load_split(split_path)
    src = open_image(path)
    try:
        truth = src.read(channels=list(channels))[0]
        names = [src.channel_names[c] for c in channels] if src.channel_names else [
            f"ch{c}" for c in channels]
        pixel_size = src.pixel_size
    finally:
        src.close()
    mix = truth.sum(-1)  # the superimposed acquisition: the photons of both structures
    test = split.test_regions[0]
    gt = _tiles(truth[test.slices])
    base = evaluate_arrays(gt, np.repeat(_tiles(mix[test.slices][..., None]), len(channels), -1),
                           channel_names=names, source="linear baseline")
    results: dict = {"baseline": {"title": "linear baseline (the superimposed image)",
                                  "metrics": base}, "split": split.describe([truth.shape[:2]]),
                     "channels": list(channels), "names": names}
    for folder, title, lc in models:
        cfg = real_config(path, channels, lc, steps=steps, split=str(split_path), seed=seed,
                          filters=filters, batch_size=batch_size)
        if overrides:
            cfg = cfg.updated(overrides)
        echo(f"training {title} on channels {' + '.join(map(str, channels))} ({steps} steps, "
             f"batch {cfg.train.batch_size}, {cfg.model.filters} filters)")
        t0 = time.time()
        best = train(cfg, out_dir / folder, overwrite=True, progress=True)
        t_train = time.time() - t0
        splitter = Splitter.load(best)
        t0 = time.time()
        # the image the model expects: the sum (cpu-real) or, trained as the paper, the mean
        image = mix if splitter.stats.input_is_sum else splitter.stats.mix(truth)
        pred = splitter.predict(image[None], samples=samples, seed=seed, pixel_size=pixel_size)
        t_pred = time.time() - t0
        mean = pred.mean[0][test.slices]
        std = None if pred.std is None else pred.std[0][test.slices]
        res = evaluate_arrays(gt, _tiles(mean), channel_names=names, source=title)
        write_metrics(res, out_dir / folder / "metrics.json")
        entry = {"title": title, "metrics": res, "train_s": t_train, "predict_s": t_pred,
                 "load": machine_load(),
                 "params": sum(p.numel() for p in splitter.model.parameters())}
        if figures:
            region = pred.__class__(mean=mean[None], std=None if std is None else std[None],
                                    channel_names=pred.channel_names, meta=pred.meta,
                                    pixel_size=pixel_size)
            region.save(out_dir / folder / "test_prediction.ome.tif", overwrite=True)
            show = (slice(0, TEST_ROWS), slice(0, 2 * TEST_ROWS))
            entry["figure"] = plot_prediction(
                mix[test.slices], mean, out_dir / f"prediction_{folder}.png",
                target=truth[test.slices], std=std, channel_names=names, crop=show, unit=UNIT,
                title=f"{title}: test region (rows {test.y[0]}-{test.y[1]}), left half").name
        results[folder] = entry
    return results


def _split_figure(mix: np.ndarray, split, path: Path) -> Path:
    """The superimposed frame with the validation and test regions outlined."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.imshow(mix, cmap="magma", vmax=float(np.quantile(mix, 0.999)))
    for regions, colour, label in ((split.val_regions, "cyan", "validation"),
                                   (split.test_regions, "lime", "test (never trained on)")):
        for r in regions:
            ax.add_patch(plt.Rectangle((r.x[0], r.y[0]), r.width, r.height, fill=False,
                                       edgecolor=colour, linewidth=2, label=label))
    ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    ax.set_title("superimposed image; training uses everything outside the boxes", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _row(title: str, m: dict, names, params="") -> str:
    s = m["summary"]
    chans = " | ".join(f"{s['ri_psnr'][n]['mean']:.2f} ± {s['ri_psnr'][n]['sem']:.2f}"
                       for n in names)
    return (f"| {title} | {params} | {chans} | {score_cell(s, 'ri_psnr', 2)} | "
            f"{score_cell(s, 'ssim')} | {score_cell(s, 'microssim')} |")


def table(results: dict) -> str:
    """The comparison table (no run times: those need the load beside them, see
    :func:`musplit.demo.timing_lines`)."""
    names = results["names"]
    head = ("| method | trainable parameters | " + " | ".join(f"RI-PSNR {n} (dB)" for n in names)
            + " | RI-PSNR mean (dB) | SSIM mean (0 to 1) | MicroSSIM mean (0 to 1) |")
    lines = [head, "|---|---:|" + "---:|" * len(names) + "---:|---:|---:|",
             _row(results["baseline"]["title"], results["baseline"]["metrics"], names)]
    for r in results.values():
        if isinstance(r, dict) and "params" in r:
            lines.append(_row(r["title"], r["metrics"], names, f"{r['params']:,}"))
    return "\n".join(lines)


def gains(results: dict) -> dict:
    """Per model: RI-PSNR gain over the linear baseline, per channel and mean (dB)."""
    names = results["names"]
    b = results["baseline"]["metrics"]["summary"]["ri_psnr"]
    out = {}
    for key, r in results.items():
        if isinstance(r, dict) and "params" in r:
            s = r["metrics"]["summary"]["ri_psnr"]
            out[key] = {n: s[n]["mean"] - b[n]["mean"] for n in [*names, "mean"]}
    return out


def run_real_demo(out_dir: str | os.PathLike = "runs/demo-real", *, channels=(0, 3),
                  steps: int = 1000, samples: int = 3, seed: int = 0, filters: int = 16,
                  echo=print) -> Path:
    """Run the real-data demo and return the path of its report (module docstring)."""
    path = partseg_stack()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    apply_threads()  # musplit.runtime: MUSPLIT_THREADS or one per core
    t_start = time.time()
    src = open_image(path)
    echo(f"[1/3] real data: {path.name} from PartSegData, {src.height}x{src.width}, "
         f"{src.n_channels} channels, pixel {src.pixel_size[0]:.4f} µm; splitting channels "
         f"{' + '.join(map(str, channels))}")
    src.close()
    echo(f"[2/3] training and predicting ({steps} steps per model)")
    results = run_pair(path, channels, out_dir, steps=steps, samples=samples, seed=seed,
                       filters=filters, echo=echo)
    split = load_split(out_dir / "data" / "split.json")
    src = open_image(path)
    mix = src.read(channels=list(channels))[0].sum(-1)
    src.close()
    _split_figure(mix, split, out_dir / "split.png")
    echo("[3/3] scoring the held-out test region against the linear baseline")
    report = _write_report(out_dir, results, path=path, steps=steps, samples=samples,
                           elapsed=time.time() - t_start, load=machine_load(), filters=filters)
    echo(table(results))
    for line in run_times(results, elapsed=time.time() - t_start, load=machine_load()) or []:
        echo(line)
    for key, g in gains(results).items():
        echo(f"{results[key]['title']} vs the superimposed image: "
             + ", ".join(f"{n} {v:+.2f} dB" for n, v in g.items()))
    echo(f"report: {report}")
    return report


def _write_report(out_dir: Path, results: dict, *, path, steps, samples, elapsed,
                  load=None, filters: int = 16) -> Path:
    names = results["names"]
    n_tiles = results["baseline"]["metrics"]["frames"]
    g = gains(results)
    verdicts = []
    for key, d in g.items():
        above = all(d[n] > 0 for n in names)
        verdicts.append(f"- **{results[key]['title']}** " + (
            "is above the linear baseline on every channel" if above else
            "is NOT above the linear baseline on every channel") + ": "
            + ", ".join(f"{n} {d[n]:+.2f} dB" for n in names) + f" (mean {d['mean']:+.2f} dB).")
    lines = [
        f"# musplit on real data: splitting {len(names)} channels of a confocal image",
        "",
        f"Data: `{path.name}` from the PartSegData package (BSD-3), a confocal OME-TIFF of "
        "nuclei written by Bio-Formats, 1024 × 1024 px, four separately imaged channels, "
        f"LZW-compressed, read as shipped. Channels {', '.join(names)} are the {len(names)} "
        "structures; the image to split is their sum, which is what one detector channel would "
        "record if all were labelled with the same dye.",
        "",
        f"Split: {results['split']}. The test region is never trained on; training patches may "
        "see into it only through their lateral context, as tiles do at prediction time.",
        "",
        "![split](split.png)",
        "",
        "## How well",
        "",
        f"Scores on the {n_tiles} tiles of 256 × 256 pixels of the test region, against the true "
        "(unclipped) channels:",
        "",
        table(results),
        "",
        *verdicts,
        "",
        "The *linear baseline* is the superimposed image itself offered as the answer for each "
        "channel: RI-PSNR rescales it per channel, so it is the best a brightness-only split can "
        "do. Where one channel holds most of the photons the baseline is already good for that "
        "channel, and a model must be precise to beat it.",
        "",
        *metric_notes(f"the {n_tiles} tiles"),
        f"Each model: the `cpu-real` preset ({filters} filters, 4 × {filters} latent variables), "
        f"{steps} training steps of 16 patches of 64 × 64 pixels, with the real-data settings: "
        "the input is the sum of the channels, intensities are not clipped, training patches are "
        "flipped and rotated at random, and each sampled split adds up to the input. The test "
        "region is predicted in 32 × 32 pixel tiles, each the centre of a 64-pixel patch so that "
        f"it sees its neighbours (no seams), as the average of {samples} samples.",
        "",
        *std_notes(samples, UNIT),
        "## What the predictions look like",
        "",
        "Top row: the image to split and each model's prediction per channel; middle: the true "
        "channels (the prediction and the truth of a channel share one colour scale); bottom: "
        f"the uncertainty (std). Colour bars in intensity units ({UNIT}).",
        "",
    ]
    path_out = finish_report(out_dir, lines, results, heading="###",
                             total="\n".join(timing_lines(results, elapsed=elapsed, load=load)))
    summary = {"channels": results["channels"], "split": results["split"],
               "baseline": results["baseline"]["metrics"]["summary"]["ri_psnr"],
               "gains_db": g, "elapsed_s": elapsed}
    for key, r in results.items():
        if isinstance(r, dict) and "params" in r:
            summary[key] = {"ri_psnr": r["metrics"]["summary"]["ri_psnr"],
                            "ssim": r["metrics"]["summary"]["ssim"]["mean"],
                            "microssim": r["metrics"]["summary"].get("microssim", {}).get("mean"),
                            "train_s": r["train_s"], "predict_s": r["predict_s"],
                            "load": r.get("load")}
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1))
    return path_out
