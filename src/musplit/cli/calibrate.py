"""``musplit calibrate``: fit the std of a trained model to its errors on validation data and write
a checkpoint that predicts the calibrated std (docs/microsplit.md, "Calibration in musplit")."""

from __future__ import annotations

from pathlib import Path

import click

from musplit.cli.options import check_channels, int_list
from musplit.cli.outputs import check_outputs, write_json
from musplit.errors import InputError

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.

#: Spelled out here (musplit.calibration loads torch); the tests check they match.
DEFAULT_BINS, DEFAULT_SAMPLES = 15, 50


def outputs(out_path: Path, plot: bool) -> dict[str, Path]:
    """What ``musplit calibrate --out OUT`` writes: the checkpoint, the calibration as JSON and
    (unless ``--no-plot``) its figure, named after OUT."""
    stem = out_path.with_suffix("")
    paths = {"checkpoint": out_path,
             "json": stem.with_name(f"{stem.name}_calibration.json")}
    if plot:
        paths["plot"] = stem.with_name(f"{stem.name}_calibration.png")
    return paths


@click.command("calibrate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True,
              help="Trained checkpoint (e.g. runs/x/best.ckpt).")
@click.option("--target", "target_path", type=click.Path(path_type=Path), required=True,
              help="Validation ground truth: one channel per model channel, intensity units.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="The superimposed validation image that --target splits (default: none, "
                   "the mix of --target with the training weights).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Calibrated checkpoint to write (.ckpt); OUT_calibration.json and "
                   "OUT_calibration.png go next to it.")
@click.option("--target-channels", default=None,
              help="Channels of --target that match the model's, e.g. 2,3 (default: all).")
@click.option("--axes", default=None, help="Axes of --input (default: metadata; a plain stack "
                                           "is frames).")
@click.option("--target-axes", default=None, help="Axes of --target (default: metadata).")
@click.option("--samples", type=click.IntRange(min=2), default=DEFAULT_SAMPLES,
              help="Posterior samples of the std; predict with as many later.")
@click.option("--bins", "n_bins", type=click.IntRange(min=1), default=DEFAULT_BINS,
              help="Bins of predicted std per channel.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Patches per network call (default: the model's config, 64).")
@click.option("--brightness", type=click.Choice(["check", "match", "off"]), default=None,
              help="As for musplit predict (default: the model's config, check).")
@click.option("--seed", type=int, default=0)
@click.option("--plot/--no-plot", default=True,
              help="Write the calibration figure OUT_calibration.png.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing outputs; with --out equal to --model, add the "
                   "calibration to that checkpoint in place.")
def calibrate(model_path, target_path, input_path, out_path, target_channels, axes,
              target_axes, samples, n_bins, batch_size, brightness, seed, plot, overwrite):
    """Calibrate the per-pixel std of the --model checkpoint on validation data.

    Per channel, pixels are binned by predicted std; the root mean variance (RMV) and the
    observed RMSE of each bin are fitted with RMSE = a RMV + b, in normalised units. The new
    checkpoint carries a and b, and musplit predict --std then writes the calibrated std
    max(a std + b, 0) (--raw-std: the raw one). The calibration error (ENCE) before and after
    is printed; it is measured on the same data, so check it on a held-out split too.
    """
    from musplit.calibration import calibrate as fit  # torch
    from musplit.calibration import save_calibrated
    from musplit.data.io import open_image  # tifffile, zarr
    from musplit.splitter import Splitter

    paths = outputs(out_path, plot)
    if out_path.suffix.lower() != ".ckpt":
        raise InputError(f"--out {out_path}: a checkpoint is written, name it .ckpt")
    inputs = [p for p in (target_path, input_path) if p is not None]
    same = out_path.resolve() == model_path.resolve()
    if same and not overwrite:
        raise InputError(f"--out {out_path} is --model: write the calibrated model to another "
                         "file, or pass --overwrite to add the calibration to it in place")
    check_outputs([p for k, p in paths.items() if k != "checkpoint" or not same], overwrite,
                  [*inputs, *([] if same else [model_path])], "tiff")
    chans = int_list(target_channels, "--target-channels")
    splitter = Splitter.load(model_path)
    splitter._need_stats()
    tsrc = open_image(target_path, axes=target_axes, stack_of="channels")
    if chans is not None:
        check_channels(chans, tsrc, "--target-channels")
    targets = tsrc.read(channels=chans)
    n = splitter.stats.n_channels
    if targets.shape[-1] != n:
        raise InputError(f"--target {target_path} has {targets.shape[-1]} channel(s) "
                         f"({tsrc.axes_note}) but the model splits {n}: pick {n} with "
                         "--target-channels, or --target-axes reads it otherwise")
    if input_path is None:
        image = splitter.stats.mix(splitter.stats.clip(targets))
    else:
        src = open_image(input_path, axes=axes, stack_of="frames")
        if src.n_channels != 1:
            raise InputError(f"--input {input_path} has {src.n_channels} channels "
                             f"({src.axes_note}); it must be the one superimposed channel")
        image = src.read()[..., 0]
    cal = fit(splitter, image, targets, samples=samples, n_bins=n_bins, seed=seed,
              batch_size=batch_size, brightness=brightness, progress=True)
    click.echo(cal.table())
    written = [save_calibrated(model_path, cal, out_path, overwrite=overwrite)]
    written.append(write_json(paths["json"], cal.to_dict()))
    if plot:
        from musplit.figures import plot_calibration  # matplotlib

        written.append(plot_calibration(cal, paths["plot"],
                                        title=f"calibration of {model_path.name}"))
    for p in written:
        click.echo(f"wrote {p}")


__all__ = ["calibrate", "outputs"]
