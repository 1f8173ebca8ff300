"""``musplit predict``: split an image with a trained model (in memory, or streamed to Zarr), or
many images into a folder, in this process or on Dask (docs/distributed.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from musplit import runtime
from musplit.cli.options import check_channels, image_options, int_list
from musplit.cli.outputs import check_outputs, check_prediction_space, file_kind, sibling
from musplit.errors import InputError

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.

log = logging.getLogger("musplit")


@click.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("input_paths", metavar="INPUT...", nargs=-1, required=True)
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Output .tif/.tiff or .zarr for one INPUT (the std goes next to it with "
                   "--std); a folder for several INPUTs, a folder of images or a glob: one "
                   "NAME.zarr per image there.")
@image_options("INPUT")
@click.option("--mix-channels", default=None,
              help="INPUT holds separate channels: predict from their mix (e.g. 0,1), "
                   "for evaluation against them (default: INPUT is already superimposed).")
@click.option("--padding", type=click.Choice(["inner", "outer", "none"]), default=None,
              help="Tiling: inner padding (each tile keeps only its centre), outer, or none "
                   "(default: the model's config, inner).")
@click.option("--grid", type=click.IntRange(min=2), default=None,
              help="Tile size G: the centre of each patch that is kept (default: the "
                   "model's config, e.g. 32 for cpu-small; else half the patch, the whole patch "
                   "for Deep-LC).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Posterior samples averaged (MMSE; default: the model's config, 1).")
@click.option("--std", "with_std", is_flag=True,
              help="Also write the per-pixel std (calibrated when MODEL carries a calibration "
                   "from musplit calibrate).")
@click.option("--raw-std", is_flag=True,
              help="Write the raw posterior-sample std even when MODEL is calibrated "
                   "(implies --std).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Patches per network call (default: the model's config, 64).")
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
@click.option("--strict-range", is_flag=True,
              help="Refuse an INPUT outside the model's training range (pixels beyond 3x "
                   "the training clip in normalised units, or below the training minimum by "
                   "more than twice the clip) instead of warning.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sample-mode", type=click.Choice(["sample", "mean"]), default=None,
              help="LadderVAE latents: 'sample' draws them (the posterior samples the MMSE "
                   "averages), 'mean' takes their means, a deterministic split (what an "
                   "export-bmz package computes; default: the model's config, sample).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output (several INPUTs: write into an --out folder "
                   "that holds other files, replacing the outputs of the same name).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Predict the blocks on a Dask LocalCluster of this many worker processes "
                   "on this machine (default: in this process).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Predict the blocks on the existing Dask cluster whose scheduler is at "
                   "ADDRESS, e.g. tcp://host:8786 (default: none).")
@click.option("--resume", is_flag=True,
              help="Finish the interrupted prediction in the --out folder: only the blocks "
                   "not recorded as done are predicted.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the blocks, tasks, output size and expected time (from one block "
                   "predicted now) and write nothing.")
@click.option("--block-size", type=click.IntRange(min=1), default=2048, hidden=True,
              help="Output block side in pixels of the streamed prediction.")
def predict(model, input_paths, out_path, axes, mix_channels, padding, grid, samples, with_std,
            batch_size, precision, seed, overwrite, series=None, level=0, input_scale=1.0,
            brightness=None, strict_range=False, raw_std=False, sample_mode=None, workers=None,
            scheduler=None, resume=False, plan_only=False, block_size=2048):
    """Split the superimposed image INPUT with the trained MODEL.

    With a .zarr output (and no --mix-channels) the image is read and predicted block by
    block (2048-px blocks plus their context), so images larger than memory work. The output
    is float32 in INPUT's intensity units, with the model's channel names and INPUT's pixel
    size. A 3-D INPUT without axes metadata is read as frames (with --mix-channels: as
    channels); --axes says otherwise.

    Several INPUTs (files, OME-Zarr stores, folders of images, glob patterns) are predicted
    block by block into the --out folder, one NAME.zarr per image: in this process, or as
    Dask tasks with --workers or --scheduler. A stopped run is finished with --resume.
    """
    many = (len(input_paths) > 1 or workers is not None or scheduler is not None or resume
            or plan_only or not _one_image(input_paths[0]))
    if many:
        _predict_many(model, input_paths, out_path, axes=axes, series=series, level=level,
                      mix_channels=mix_channels, padding=padding, grid=grid, samples=samples,
                      with_std=with_std, raw_std=raw_std, batch_size=batch_size,
                      precision=precision, seed=seed, overwrite=overwrite,
                      input_scale=input_scale, brightness=brightness,
                      strict_range=strict_range, sample_mode=sample_mode, workers=workers,
                      scheduler=scheduler, resume=resume, plan_only=plan_only,
                      block=block_size)
        return
    input_path = Path(input_paths[0])
    from musplit.data.io import open_image  # tifffile, zarr
    from musplit.data.io.axes import frames_instead
    from musplit.runtime import apply_threads, cpu_settings
    from musplit.splitter import Splitter  # torch

    apply_threads()  # MUSPLIT_THREADS, else one per core this process may use
    log.info("runtime: %s", cpu_settings())
    with_std = with_std or raw_std
    if out_path.resolve() == input_path.resolve():
        raise InputError(f"--out {out_path} is the input file: it would be overwritten")
    kind = file_kind(out_path)
    # Refuse an existing, unwritable or misplaced output now, before the model is loaded.
    check_outputs([sibling(out_path, t) for t in (("", "_std") if with_std else ("",))],
                  overwrite, [input_path], kind)
    chans = int_list(mix_channels, "--mix-channels")
    splitter = Splitter.load(model)
    # A superimposed input is frames; --mix-channels reads separate channels.
    src = open_image(input_path, axes=axes, series=series, level=level,
                     stack_of="channels" if chans else "frames")
    if not chans and src.n_channels != 1:
        alt = frames_instead(src.axes)
        other = (f", or --axes {alt} if they are frames" if alt else
                 ", or --axes if they are not channels" if src.axes_guessed else "")
        raise InputError(
            f"{input_path} has {src.n_channels} channels ({src.axes_note}); musplit predicts "
            "from one superimposed channel: pass --mix-channels (e.g. --mix-channels 0,1) to "
            f"mix separate channels{other}")
    if chans:
        _check_mix_channels(chans, src, splitter)
    check_prediction_space(out_path, src, splitter, samples, with_std)
    if with_std:
        _say_which_std(splitter, raw_std)
    if samples and samples > 1 and not with_std:
        log.info("--samples > 1: the std is computed; add --std to write it")
    if kind == "zarr" and not chans:
        written = splitter.predict_to_zarr(
            src, out_path, padding=padding, grid=grid, samples=samples,
            batch_size=batch_size, seed=seed, precision=precision, std=with_std,
            overwrite=overwrite, progress=True, protect=[input_path], input_scale=input_scale,
            brightness=brightness, strict_range=strict_range, raw_std=raw_std,
            sample_mode=sample_mode, block=block_size)
        _say_assumed_ratio(splitter)
        click.echo(f"wrote {written}")
        return
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
                            brightness=brightness, strict_range=strict_range,
                            raw_std=raw_std, sample_mode=sample_mode)
    if not with_std:
        pred.std = None
    written = pred.save(out_path, overwrite=overwrite, protect=[input_path])
    _say_assumed_ratio(splitter)
    click.echo(f"wrote {written}")


def _one_image(item: str) -> bool:
    """Whether INPUT names one image (a file or a Zarr store), not a folder of them or a
    pattern: the single-image form of the command."""
    from musplit.files import ZARR_MARKERS

    p = Path(item).expanduser()
    if p.is_dir():
        return any((p / m).exists() for m in ZARR_MARKERS)
    return p.exists() or not any(c in item for c in "*?[")


def _predict_many(model, inputs, out_dir, *, mix_channels, with_std, raw_std, workers,
                  scheduler, resume, plan_only, block, **options) -> None:
    """Several images (or --workers, --scheduler, --resume, --plan): one NAME.zarr each in
    the folder ``out_dir``, block by block (musplit.predict.distributed)."""
    from musplit.predict import distributed
    from musplit.runtime import apply_threads

    apply_threads()  # this process's share when it predicts the blocks itself
    if mix_channels is not None:
        raise InputError("--mix-channels works with one INPUT; mix the channels of each image "
                         "into one first to predict several")
    with_std = with_std or raw_std
    read = {k: options.pop(k) for k in ("axes", "series", "level")}
    if plan_only:
        tiling = {k: options[k] for k in ("padding", "grid", "samples", "batch_size",
                                          "precision")}
        plan = distributed.plan_many(model, inputs, block=block, std=with_std, **read,
                                     **tiling)
        rate = distributed.measure_tile_rate(model, inputs, block=block, **read, **tiling)
        click.echo(plan.summary(rate, workers=sorted({1, 2, workers or 1})))
        return
    if with_std:
        from musplit.splitter import Splitter

        _say_which_std(Splitter.load(model), raw_std)
    written = distributed.predict_many(
        model, inputs, out_dir, workers=workers, scheduler=scheduler, resume=resume,
        block=block, std=with_std, raw_std=raw_std, progress=True,
        say=lambda line: click.echo(line, err=True), **read, **options)
    for p in written:
        click.echo(f"wrote {p}")


def _say_assumed_ratio(splitter) -> None:
    """One line on stderr once the prediction is written: the mixing ratio the model assumed
    (the files' metadata hold it too, ``mixing``; musplit.data.mixing)."""
    from musplit.data.mixing import mixing_line, mixing_summary

    names = splitter._names()
    click.echo(mixing_line(mixing_summary(splitter.config.data, splitter.stats), names),
               err=True)


def _say_which_std(splitter, raw_std: bool) -> None:
    """One log line: which std ``--std`` writes (the saved files' metadata say it too,
    ``std_calibrated``)."""
    if splitter.calibration is None:
        log.info("writing the raw posterior-sample std (the model carries no calibration: "
                 "musplit calibrate adds one)")
    elif raw_std:
        click.echo("--raw-std: the std written is the raw posterior-sample std, not the "
                   "model's calibrated one", err=True)
    else:
        click.echo("the std written is calibrated (max(a std + b, 0), fitted by musplit "
                   "calibrate); --raw-std writes the raw one", err=True)


def _check_mix_channels(chans, src, splitter) -> None:
    """``--mix-channels`` names channels of INPUT, one per channel the model splits."""
    check_channels(chans, src, "--mix-channels")
    splitter._need_stats()  # the mix is formed with the training statistics
    n = splitter.stats.n_channels
    if len(chans) != n:
        raise InputError(
            f"--mix-channels {','.join(map(str, chans))} names {len(chans)} channel"
            f"{'s' if len(chans) != 1 else ''} of {src.name} but the model splits {n}: name "
            f"{n} of its channels 0..{src.n_channels - 1}")


def _check_in_memory_prediction(src, splitter, samples, input_path, *, n_read: int,
                                zarr: bool) -> None:
    """Refuse, before any work, a prediction held in memory that cannot fit in it
    (the estimate: :func:`musplit.runtime.in_memory_prediction_bytes`)."""
    avail = runtime.available_memory()
    if avail is None:
        return
    c = splitter.stats.n_channels if splitter.stats is not None else 2
    need = runtime.in_memory_prediction_bytes(
        src.n_frames, src.height, src.width, n_read=n_read, n_channels=c,
        with_samples=(samples or splitter.config.predict.samples) > 1,
        scales=splitter.config.data.scales)
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


__all__ = ["predict"]
