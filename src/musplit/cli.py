"""The ``musplit`` command line.

User mistakes (:class:`musplit.errors.MusplitError`, bad flags) print one line on stderr and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from musplit import __version__
from musplit.errors import InputError, MusplitError

log = logging.getLogger("musplit")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="musplit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Split superimposed fluorescence microscopy images into one image per structure
    (µSplit, ICCV 2023)."""
    _setup_logging(verbose)
    from musplit.runtime import tune_allocator

    tune_allocator()  # faster CPU steps; MUSPLIT_TUNE_MALLOC=0 turns it off


# -- generate ------------------------------------------------------------------------------
@cli.group()
def generate() -> None:
    """Generate synthetic training data."""


@generate.command("critters")
@click.option("--frames", type=click.IntRange(min=3), default=1000, show_default=True)
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True,
              help="Frame side in pixels (the paper uses 128 and 256).")
@click.option("--connector", type=click.IntRange(min=0), default=25, show_default=True,
              help="Connector length in pixels: 0 ('N0') or 25 ('N25').")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["tiff", "zarr"]), default="tiff",
              show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def generate_critters_cmd(frames, size, connector, seed, out_dir, fmt, overwrite):
    """SinosoidalCritters: two channels of sinusoidal curves told apart only by context.

    Writes the two channels as one (N, H, W, 2) float32 image with axes metadata, the split
    indices (split.json) and a manifest of the parameters.
    """
    from musplit.data.sources import write_critters
    from musplit.data.synthetic import generate_critters

    data = generate_critters(frames, size=size, connector=connector, seed=seed)
    paths = write_critters(out_dir, data, fmt=fmt, overwrite=overwrite,
                           params={"frames": frames, "size": size, "connector": connector,
                                   "seed": seed})
    for p in paths:
        click.echo(f"wrote {p}")


# -- info ----------------------------------------------------------------------------------
@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--axes", default=None, help="Axes of the file if its metadata has none.")
@click.option("--series", type=click.IntRange(min=0), default=None,
              help="Image series of a TIFF file (default: the first full-resolution one).")
@click.option("--level", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pyramid level (0 = full resolution).")
@click.option("--stats/--no-stats", "with_stats", default=True, show_default=True,
              help="Per-channel intensity statistics (from a sample of a large image).")
def info(path: Path, axes: str | None, series: int | None = None, level: int = 0,
         with_stats: bool = True) -> None:
    """Describe an image file (shape, axes, channels, pixel size, per-channel intensities) or
    a musplit checkpoint."""
    if path.suffix in (".ckpt", ".pt", ".pth"):
        from musplit.checkpoint import load_checkpoint

        payload = load_checkpoint(path)
        cfg = payload["config"]
        n_params = sum(v.numel() for k, v in payload["state_dict"].items()
                       if "running_" not in k and "num_batches" not in k)
        click.echo(f"{path}: musplit checkpoint (format {payload['format_version']}, "
                   f"written by musplit {payload['musplit_version']})")
        click.echo(f"  model: {cfg['model']['kind']} lc={cfg['model']['lc']} "
                   f"patch={cfg['model']['patch']} ~{n_params:,} tensor elements")
        if payload.get("stats"):
            click.echo(f"  normalisation: {json.dumps(payload['stats'])}")
        return
    from musplit.data.io import open_image

    src = open_image(path, axes=axes, series=series, level=level)
    click.echo(f"{path}: axes {src.axes}, shape {tuple(src.shape)}, dtype {src.dtype}")
    if src.n_series > 1:
        click.echo(f"  series {src.series_index} of {src.n_series} (0..{src.n_series - 1}; "
                   "--series N shows another)")
    if src.n_levels > 1:
        click.echo(f"  pyramid level {src.level} of {src.n_levels} (0 = full resolution; "
                   "--level N shows another)")
    click.echo(f"  as SYXC: {src.n_frames} frames of {src.height}x{src.width}, "
               f"{src.n_channels} channels"
               + (f" ({', '.join(src.channel_names)})" if src.channel_names else ""))
    if src.pixel_size:
        py, px = src.pixel_size
        click.echo(f"  pixel size: {py:.6g} x {px:.6g} µm (y x x)")
    else:
        click.echo("  pixel size: not recorded")
    if with_stats:
        _echo_channel_statistics(src)


def _echo_channel_statistics(src) -> None:
    """The per-channel table of ``musplit info`` (musplit.data.io.channel_statistics)."""
    from musplit.data.io import channel_statistics

    rows = channel_statistics(src)
    width = max([7] + [len(r["name"]) for r in rows])
    click.echo(f"  {'channel':<{width}} {'min':>11} {'median':>11} {'99.9%':>11} {'max':>11} "
               f"{'saturated':>10} {'zeros':>8}")
    for r in rows:
        cells = " ".join(f"{r[k]:>11.6g}" for k in ("min", "median", "p99_9", "max"))
        click.echo(f"  {r['name']:<{width}} {cells} {100 * r['saturated']:>9.3f}% "
                   f"{100 * r['zeros']:>7.3f}%")
        if r["non_finite"]:
            click.echo(f"  {r['name']}: {100 * r['non_finite']:.3f}% of the pixels are NaN or "
                       "Inf, left out of these statistics")
    if src.dtype.kind in "iu":
        click.echo(f"  saturated: pixels at {rows[0]['saturation']:.0f}, the {src.dtype} "
                   "maximum")
    else:
        click.echo("  saturated: pixels at the channel maximum, counted when more than 0.1% "
                   "of them are (floating-point pixels have no fixed maximum)")
    first = rows[0]
    if first["sampled"]:
        click.echo(f"  statistics from a sample: {first['frames']} of {src.n_frames} frames, "
                   f"{first['pixels']:,} pixels per channel")
    else:
        click.echo(f"  statistics of all {src.n_frames} frames")


# -- train ---------------------------------------------------------------------------------
def _int_list(value: str | None, name: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got '{value}'") from None


def _switch_kind(over: dict, base_kind: str) -> None:
    """``--model`` moving between the LadderVAE and a baseline (or between baselines): the
    settings that depend on the kind go back to the new kind's defaults, unless given."""
    from musplit.models.config import LADDER_KINDS

    kind = over["model"].get("kind")
    if kind is None or kind == base_kind or (kind in LADDER_KINDS and base_kind in LADDER_KINDS):
        return
    for key in ("lc", "filters", "z_dims", "depth", "scales", "dropout"):
        over["model"].setdefault(key, None)
    over["data"].setdefault("scales", None)


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML config; flags below override it.")
@click.option("--preset", "preset_name", default=None,
              help="Start from a preset: cpu-small, cpu-real (cpu-small for real "
                   "acquisitions: input = sum of the channels, no clip, flips and rotations, "
                   "predictions that add up to the input), paper-pavia, paper-hagen, "
                   "paper-critters-n0, paper-critters-n25.")
@click.option("--data", "data_path", default=None,
              help="Multi-channel training data: a file, a folder or glob of files, or "
                   "comma-separated files (one or more frames each, sizes may differ).")
@click.option("--channel-files", default=None,
              help="Comma-separated files (or one folder of files), one per channel "
                   "(instead of --data).")
@click.option("--split", "split", default=None,
              help="default (frames, or held-out regions when there are too few frames), "
                   "spatial (always regions), hagen, or a split.json file.  [default: default]")
@click.option("--axes", default=None, help="Axes of the data, e.g. SYXC (default: metadata).")
@click.option("--channels", default=None, help="Channel indices to separate, e.g. 2,3.")
@click.option("--critters", type=click.Choice(["n0", "n25"]), default=None,
              help="Train on built-in SinosoidalCritters instead of a file.")
@click.option("--model", "kind",
              type=click.Choice(["hvae", "hae", "unet", "ca_unet", "bravenet"]), default=None,
              help="hvae/hae: the µSplit LadderVAE; unet, ca_unet (Context-Aware U-Net), "
                   "bravenet: the paper's baselines.")
@click.option("--lc", type=click.Choice(["none", "lean", "regular", "deep"]), default=None,
              help="Lateral context (unet: none or regular).")
@click.option("--filters", type=click.IntRange(min=1), default=None,
              help="Trunk width (LadderVAE) or first-level width (baselines).")
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="Baselines: U-Net Down blocks (default 5) or BRAVE-NET levels (default 4).")
@click.option("--patch", type=int, default=None)
@click.option("--max-steps", type=click.IntRange(min=1), default=None)
@click.option("--max-epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--val-every", type=click.IntRange(min=1), default=None,
              help="Validate every N steps (default: every epoch).")
@click.option("--precision", type=click.Choice(["32", "bf16-mixed", "16-mixed"]), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Run folder (default runs/<name>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--devices", default="auto", show_default=True)
@click.option("--strategy", default="auto", show_default=True, help="e.g. ddp")
@click.option("--init-from", "init_from", default=None,
              help="Start from the encoder of a pre-training checkpoint (musplit pretrain).")
def train(config_path, preset_name, data_path, channel_files, split, axes, channels, critters,
          kind, lc, filters, depth, patch, max_steps, max_epochs, batch_size, val_every,
          precision, seed, out_dir, resume, devices, strategy, init_from=None):
    """Train a model; the run folder gets the config, split, logs and checkpoints."""
    from musplit.config import PRESETS, Config, preset
    from musplit.training import train as run_training

    over: dict = {"data": {}, "model": {}, "train": {}}
    if data_path:
        parts = [p.strip() for p in data_path.split(",") if p.strip()]
        over["data"]["path"] = parts[0] if len(parts) == 1 else parts
    if split:
        over["data"]["split"] = split
    if channel_files:
        over["data"]["channel_paths"] = [p.strip() for p in channel_files.split(",")]
    if critters:
        over["data"]["synthetic"] = {"connector": 0 if critters == "n0" else 25}
        over["data"]["pad"] = "zeros"
    if axes:
        over["data"]["axes"] = axes
    if channels:
        over["data"]["channels"] = _int_list(channels, "--channels")
    if patch:
        over["data"]["patch"] = patch
        over["model"]["patch"] = patch
    for key, val in (("kind", kind), ("lc", lc), ("filters", filters), ("depth", depth)):
        if val is not None:
            over["model"][key] = val
    if lc == "deep" and preset_name in ("cpu-small", "cpu-real"):
        width = PRESETS[preset_name]["model"]["z_dims"][0]
        over["model"]["z_dims"] = [width] * 8
    for key, val in (("max_steps", max_steps), ("max_epochs", max_epochs),
                     ("batch_size", batch_size), ("val_every_steps", val_every),
                     ("precision", precision), ("seed", seed), ("init_from", init_from)):
        if val is not None:
            over["train"][key] = val
    if config_path is not None:
        base = Config.from_yaml(config_path)
        _switch_kind(over, base.model.kind)
        over = {k: v for k, v in over.items() if v}
        cfg = base.updated(over) if over else base
    elif resume and out_dir is not None and (out_dir / "config.yaml").is_file():
        cfg = Config.from_yaml(out_dir / "config.yaml")
    else:
        name = preset_name or "cpu-small"
        _switch_kind(over, PRESETS.get(name, {}).get("model", {}).get("kind", "hvae"))
        over = {k: v for k, v in over.items() if v}
        cfg = preset(name, **over)
    if cfg.data.path is None and cfg.data.channel_paths is None and cfg.data.synthetic is None:
        raise InputError("no training data: give --data FILE, --channel-files A,B, "
                         "--critters n0|n25 or a --config that names the data")
    best = run_training(cfg, out_dir, resume=resume, devices=devices, strategy=strategy,
                        echo=click.echo)
    click.echo(f"best checkpoint: {best}")


# -- predict -------------------------------------------------------------------------------
@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Output .tif/.tiff or .zarr (the std goes next to it with --std).")
@click.option("--axes", default=None, help="Axes of INPUT (default: metadata).")
@click.option("--series", type=click.IntRange(min=0), default=None,
              help="Image series of a TIFF INPUT (default: the first full-resolution one).")
@click.option("--level", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pyramid level of INPUT (0 = full resolution).")
@click.option("--mix-channels", default=None,
              help="INPUT holds separate channels: predict from their mix (e.g. 0,1), "
                   "for evaluation against them.")
@click.option("--padding", type=click.Choice(["inner", "outer", "none"]), default=None)
@click.option("--grid", type=click.IntRange(min=2), default=None, help="Tile size G.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Posterior samples averaged (MMSE).")
@click.option("--std", "with_std", is_flag=True, help="Also write the per-pixel std.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Network arithmetic (default: the model's config, fp32). bf16 is about "
                   "1.6x faster for models of the paper's width on CPUs with AVX512-BF16 "
                   "or AMX and on recent GPUs.")
@click.option("--input-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True,
              help="Multiply INPUT by this first (another gain or exposure than training).")
@click.option("--brightness", type=click.Choice(["check", "match", "off"]), default=None,
              help="An INPUT more than 2x brighter or dimmer than the training mixes: refuse "
                   "it with the reason (check, the default), rescale it to the training "
                   "brightness and return the channels in INPUT's units (match), or go on (off).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def predict(model, input_path, out_path, axes, mix_channels, padding, grid, samples, with_std,
            batch_size, precision, seed, overwrite, series=None, level=0, input_scale=1.0,
            brightness=None):
    """Split the superimposed image INPUT with the trained MODEL.

    With a .zarr output (and no --mix-channels) the image is read and predicted block by
    block (2048-px blocks plus their context), so images larger than memory work. The output
    is float32 in INPUT's intensity units, with the model's channel names and INPUT's pixel
    size.
    """
    from musplit.data.io import open_image
    from musplit.predict import _file_kind, _sibling, refuse_existing
    from musplit.splitter import Splitter

    if out_path.resolve() == input_path.resolve():
        raise InputError(f"--out {out_path} is the input file: it would be overwritten")
    kind = _file_kind(out_path)
    # Refuse an existing output now, not after a long prediction.
    refuse_existing([_sibling(out_path, t) for t in (("", "_std") if with_std else ("",))],
                    overwrite)
    splitter = Splitter.load(model)
    src = open_image(input_path, axes=axes, series=series, level=level)
    if not mix_channels and src.n_channels != 1:
        raise InputError(
            f"{input_path} has {src.n_channels} channels; musplit predicts from one "
            "superimposed channel (use --mix-channels to mix separate channels)")
    if samples and samples > 1 and not with_std:
        log.info("--samples > 1: the std is computed; add --std to write it")
    if kind == "zarr" and not mix_channels:
        written = splitter.predict_to_zarr(
            src, out_path, padding=padding, grid=grid, samples=samples,
            batch_size=batch_size, seed=seed, precision=precision, std=with_std,
            overwrite=overwrite, progress=True, protect=[input_path], input_scale=input_scale,
            brightness=brightness)
        click.echo(f"wrote {written}")
        return
    chans = _int_list(mix_channels, "--mix-channels") if mix_channels else None
    _check_in_memory_prediction(src, splitter, samples, input_path,
                                n_read=len(chans) if chans else 1, zarr=kind == "zarr")
    if chans:
        stacked = src.read(channels=chans)
        image = splitter.stats.mix(splitter.stats.clip(stacked))
    else:
        image = src.read()[..., 0]
    pred = splitter.predict(image, padding=padding, grid=grid, samples=samples,
                            batch_size=batch_size, seed=seed, precision=precision,
                            progress=True, pixel_size=src.pixel_size, input_scale=input_scale,
                            brightness=brightness)
    if not with_std:
        pred.std = None
    written = pred.save(out_path, overwrite=overwrite, protect=[input_path])
    click.echo(f"wrote {written}")


def _check_in_memory_prediction(src, splitter, samples, input_path, *, n_read: int,
                                zarr: bool) -> None:
    """Refuse, before any work, a prediction held in memory that cannot fit in it.

    The in-memory path keeps the input, the output arrays (mean, aleatoric std, std) of every
    frame and the lateral-context stack of the frame being tiled (about ``scales + 3`` frame
    copies), all float32. Streaming to Zarr keeps one block at a time.
    """
    from musplit.runtime import available_memory

    avail = available_memory()
    if avail is None:
        return
    px = src.n_frames * src.height * src.width
    c = splitter.stats.n_channels if splitter.stats is not None else 2
    outputs = 2 * c + (c if (samples or splitter.config.predict.samples) > 1 else 0)
    need = 4 * px * (n_read + 1 + outputs) + 4 * src.height * src.width * (
        splitter.config.data.scales + 3)
    if need <= 0.9 * avail:
        return
    how = ("mix the channels into one image first, then predict it to a .zarr output"
           if zarr or n_read > 1 else
           "write the result to a .zarr output instead (--out NAME.zarr), which is "
           "predicted block by block")
    raise InputError(
        f"predicting {input_path} ({src.n_frames} x {src.height} x {src.width} px) in memory "
        f"needs about {need / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB are available; "
        f"{how}")


# -- evaluate ------------------------------------------------------------------------------
@cli.command()
@click.option("--pred", "pred_path", type=click.Path(path_type=Path), required=True)
@click.option("--target", "target_path", type=click.Path(path_type=Path), required=True)
@click.option("--target-channels", default=None,
              help="Channels of --target that match the prediction's, e.g. 2,3.")
@click.option("--axes", default=None, help="Axes of --target (default: metadata).")
@click.option("--series", type=click.IntRange(min=0), default=None,
              help="Image series of a TIFF --target (default: the first full-resolution one).")
@click.option("--level", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pyramid level of --target (0 = full resolution).")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Checkpoint: clip and normalise as in training (the paper's protocol).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Write the metrics as .json (and .csv next to it).")
def evaluate(pred_path, target_path, target_channels, axes, model_path, out_path, series=None,
             level=0):
    """Range-invariant PSNR, PSNR, SSIM and RMSE per frame and channel, mean ± s.e.m."""
    from musplit.data.io import open_image
    from musplit.evaluation import check_pixel_sizes, evaluate_arrays, write_metrics

    psrc = open_image(pred_path)
    pred = psrc.read()
    tsrc = open_image(target_path, axes=axes, series=series, level=level)
    check_pixel_sizes(psrc, tsrc)
    target = tsrc.read(channels=_int_list(target_channels, "--target-channels"))
    stats = None
    if model_path is not None:
        from musplit.splitter import Splitter

        stats = Splitter.load(model_path).stats
    names = psrc.channel_names
    res = evaluate_arrays(target, pred, stats=stats, channel_names=names,
                          source=f"{pred_path} vs {target_path}")
    click.echo(res["table"])
    if out_path is not None:
        for p in write_metrics(res, out_path):
            click.echo(f"wrote {p}")


# -- double-dip ----------------------------------------------------------------------------
@cli.command("double-dip")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Output .tif/.tiff or .zarr: the two layers of every crop, "
                   "(crops, crop, crop, 2), crop positions in its metadata.")
@click.option("--axes", default=None, help="Axes of INPUT (default: metadata).")
@click.option("--mix-channels", default=None,
              help="INPUT holds the separate channels: split their average (e.g. 0,1) and "
                   "evaluate the layers against them (layer order resolved per crop).")
@click.option("--frames", "frame_list", default=None,
              help="Frame indices to take crops from, e.g. 0,3 (default: all).")
@click.option("--crop", type=click.IntRange(min=96), default=256, show_default=True,
              help="Crop side (a multiple of 32).")
@click.option("--crops", "per_frame", type=click.IntRange(min=1), default=1,
              show_default=True, help="Random crops per frame.")
@click.option("--iterations", type=click.IntRange(min=1), default=8000, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4,
              show_default=True)
@click.option("--mix", type=click.Choice(["fixed", "learned"]), default="fixed",
              show_default=True, help="Mixing mask: the channel average (1/2) or fitted per crop.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--metrics", "metrics_path", type=click.Path(path_type=Path), default=None,
              help="With --mix-channels: also write the metrics as .json (and .csv).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def double_dip(input_path, out_path, axes, mix_channels, frame_list, crop, per_frame,
               iterations, lr, mix, seed, metrics_path, overwrite):
    """Unsupervised baseline: split random crops of INPUT with Double-DIP (no training data).

    Each crop is fitted on its own by two deep-image-prior generators (8000 iterations each by
    default: minutes per crop on a GPU, much longer on a CPU).
    """
    import numpy as np

    from musplit import __version__
    from musplit.data.io import _check_output, open_image
    from musplit.doubledip import (
        MULTIPLE,
        match_layers,
        random_crops,
        separate_crops,
    )
    from musplit.evaluation import evaluate_arrays, write_metrics
    from musplit.predict import Prediction, _file_kind

    if crop % MULTIPLE:
        raise InputError(f"--crop must be a multiple of {MULTIPLE}, got {crop}")
    if metrics_path is not None and not mix_channels:
        raise InputError("--metrics needs --mix-channels (the ground truth to compare with)")
    kind = _file_kind(out_path)
    _check_output(out_path, overwrite, [input_path], kind)  # refuse now, not after hours
    src = open_image(input_path, axes=axes)
    targets = None
    names = ["layer_0", "layer_1"]
    if mix_channels:
        chans = _int_list(mix_channels, "--mix-channels")
        if len(chans) != 2:
            raise InputError(f"--mix-channels takes two channels, got {chans}")
        targets = src.read(channels=chans).astype(np.float32)
        image = targets.mean(axis=-1)
        if src.channel_names:
            names = [src.channel_names[c] for c in chans]
        else:
            names = [f"channel_{c}" for c in chans]
    else:
        if src.n_channels != 1:
            raise InputError(
                f"{input_path} has {src.n_channels} channels; Double-DIP splits one "
                "superimposed channel (use --mix-channels to split the average of two)")
        image = src.read()[..., 0].astype(np.float32)
    frames = np.arange(image.shape[0])
    if frame_list:
        frames = np.asarray(_int_list(frame_list, "--frames"), dtype=np.int64)
        bad = frames[(frames < 0) | (frames >= image.shape[0])]
        if bad.size:
            raise InputError(f"--frames {bad.tolist()} out of range: {input_path} has "
                             f"{image.shape[0]} frames")
    corners = random_crops(len(frames), image.shape[1], image.shape[2], crop, per_frame, seed)
    corners[:, 0] = frames[corners[:, 0]]
    results = separate_crops(image, corners, crop, seed=seed, progress=True,
                             iterations=iterations, lr=lr, mix=mix)
    layers = np.stack([r.layers for r in results])
    perms = None
    if targets is not None:
        gt = np.stack([targets[f, t : t + crop, lf : lf + crop] for f, t, lf in corners])
        ordered = [match_layers(gt[i], layers[i]) for i in range(len(layers))]
        layers = np.stack([o[0] for o in ordered])
        perms = [o[1] for o in ordered]
    meta = {
        "method": "double-dip",
        "crop": crop,
        "corners": corners.tolist(),
        "corner_axes": "frame, top, left",
        "iterations": iterations,
        "lr": lr,
        "mix": mix,
        "alpha": [r.alpha for r in results],
        "reconstruction_psnr": [r.psnr for r in results],
        "kept_step": [r.step for r in results],
        "seed": seed,
        "layer_order": perms if perms is not None else "arbitrary (no ground truth)",
        "units": "intensity",
        "musplit_version": __version__,
    }
    pred = Prediction(layers, channel_names=names, meta=meta)
    written = pred.save(out_path, overwrite=overwrite, protect=[input_path])
    click.echo(f"wrote {written}")
    if targets is not None:
        res = evaluate_arrays(gt, layers, channel_names=names,
                              source=f"{out_path} vs {input_path}")
        click.echo(res["table"])
        if metrics_path is not None:
            for p in write_metrics(res, metrics_path):
                click.echo(f"wrote {p}")


# -- import-official -----------------------------------------------------------------------
@cli.command("import-official")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="The musplit checkpoint to write.")
@click.option("--kind", type=click.Choice(["hvae", "hae"]), default=None,
              help="Needed unless the run's config.pkl says it.")
@click.option("--stats-from", "stats_from", default=None,
              help="Training data to recompute the normalisation statistics from "
                   "(one multi-channel file, or comma-separated files one per channel).")
@click.option("--axes", default=None, help="Axes of --stats-from.")
@click.option("--channels", default=None, help="Channels of --stats-from, e.g. 2,3.")
@click.option("--critters", type=click.Choice(["n0", "n25"]), default=None,
              help="Statistics from built-in SinosoidalCritters (1000 frames of 256²).")
@click.option("--stats-json", type=click.Path(path_type=Path), default=None,
              help="Explicit statistics (JSON of clip_max, input_mean, ... ).")
@click.option("--patch", type=int, default=None, help="Training patch size (default 64).")
@click.option("--overwrite", is_flag=True)
@click.option("--allow-pickled-classes", is_flag=True,
              help="Read a checkpoint that weights-only loading refuses, with inert stubs for "
                   "unknown classes (never runs code from the file).")
def import_official_cmd(ckpt, out_path, kind, stats_from, axes, channels, critters, stats_json,
                        patch, overwrite, allow_pickled_classes):
    """Convert a reference µSplit checkpoint CKPT into a musplit checkpoint."""
    from musplit.data.normalize import NormStats, compute_stats
    from musplit.models.official import import_official

    stats = None
    if stats_json is not None:
        try:
            stats = NormStats.from_dict(json.loads(Path(stats_json).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"--stats-json {stats_json}: {e}") from None
    elif stats_from or critters:
        from musplit.config import DataConfig
        from musplit.data.sources import load_targets

        if critters:
            dc = DataConfig(synthetic={"connector": 0 if critters == "n0" else 25})
        elif "," in stats_from:
            dc = DataConfig(channel_paths=[p.strip() for p in stats_from.split(",")], axes=axes)
        else:
            dc = DataConfig(path=stats_from, axes=axes,
                            channels=_int_list(channels, "--channels"))
        data = load_targets(dc)
        stats = compute_stats(data.targets, data.split.train)
    written = import_official(ckpt, out_path, kind=kind, stats=stats, patch=patch,
                              overwrite=overwrite,
                              stub_unknown_classes=allow_pickled_classes)
    click.echo(f"wrote {written}")


# -- demo ----------------------------------------------------------------------------------
@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output folder.  [default: runs/demo, or runs/demo-real]")
@click.option("--real", is_flag=True,
              help="Run on a real confocal image (PartSegData's stack.tif; "
                   "pip install 'musplit[examples]') instead of synthetic data.")
@click.option("--channels", default="0,3", show_default=True,
              help="With --real: the two channels of the stack to split.")
@click.option("--frames", type=click.IntRange(min=10), default=100, show_default=True)
@click.option("--size", type=click.IntRange(min=64), default=256, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training steps per model.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Posterior samples.  [default: 5, or 3 with --real]")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: Path | None, real: bool, channels: str, frames: int, size: int, steps: int,
         samples: int | None, seed: int) -> None:
    """The main job on built-in synthetic data: train Lean-LC and Vanilla HVAEs on
    SinosoidalCritters, predict the test split, evaluate, and write a report. With --real,
    the same on two channels of a real confocal image, against the linear baseline."""
    if real:
        from musplit.demo_real import run_real_demo

        chans = _int_list(channels, "--channels") or []
        if len(chans) != 2 or len(set(chans)) != 2 or not all(0 <= c < 4 for c in chans):
            raise InputError(f"--channels must be two different channels of the 4-channel "
                             f"stack (0..3), got '{channels}'")
        run_real_demo(out_dir or Path("runs/demo-real"), channels=tuple(chans), steps=steps,
                      samples=samples or 3, seed=seed, echo=click.echo)
        return
    from musplit.demo import run_demo

    run_demo(out_dir or Path("runs/demo"), frames=frames, size=size, steps=steps,
             samples=samples or 5, seed=seed, echo=click.echo)


# -- issue 7: pseudo-colorize masked cells (musplit.pretrain) -------------------------------
# [detect/synth commands: registered below this line]
from musplit.pretrain.cli_detect import detect, synth  # noqa: E402

cli.add_command(detect)
cli.add_command(synth)
# [pretrain command: registered below this line]
from musplit.pretrain.cli_pretrain import pretrain  # noqa: E402

cli.add_command(pretrain)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``musplit`` console script; returns the exit status."""
    try:
        cli.main(args=argv, prog_name="musplit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.ClickException as e:
        e.show()
        return 2
    except MusplitError as e:
        click.echo(f"musplit: error: {e}", err=True)
        return 2
    except FileNotFoundError as e:
        click.echo(f"musplit: error: {e.filename or e}: no such file", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def _exit() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


__all__ = ["cli", "main", "InputError"]
