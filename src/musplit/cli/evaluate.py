"""``musplit evaluate``: score a prediction against its ground truth."""

from __future__ import annotations

from pathlib import Path

import click

from musplit.cli.options import check_channels, image_options, int_list
from musplit.cli.outputs import echo_metrics
from musplit.errors import InputError
from musplit.evaluation import check_pixel_sizes, evaluate_arrays

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.


@click.command("evaluate")
@click.option("--pred", "pred_path", type=click.Path(path_type=Path), required=True)
@click.option("--target", "target_path", type=click.Path(path_type=Path), required=True)
@click.option("--target-channels", default=None,
              help="Channels of --target that match the prediction's, e.g. 2,3 (default: "
                   "all).")
@image_options("--target")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="Checkpoint: clip and normalise as in training (the paper's protocol; "
                   "default: none, raw intensities).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="Write the metrics as .json (and .csv next to it; default: print them only).")
def evaluate(pred_path, target_path, target_channels, axes, model_path, out_path, series=None,
             level=0):
    """Range-invariant PSNR, PSNR, SSIM, MicroSSIM, MicroMS3IM and RMSE per frame and channel,
    mean ± s.e.m. (MicroSSIM and MicroMS3IM fitted per channel on all the frames)."""
    from musplit.data.io import open_image  # tifffile, zarr

    chans = int_list(target_channels, "--target-channels")
    psrc = open_image(pred_path)
    pred = psrc.read()
    tsrc = open_image(target_path, axes=axes, series=series, level=level)
    check_pixel_sizes(psrc, tsrc)
    if chans is not None:
        check_channels(chans, tsrc, "--target-channels")
    target = tsrc.read(channels=chans)
    if pred.shape != target.shape:
        raise InputError(
            f"{pred_path} vs {target_path}: prediction {pred.shape} and target {target.shape} "
            f"differ in shape (N, H, W, C) (prediction: {psrc.axes_note}; target: "
            f"{tsrc.axes_note}); --axes reads the target otherwise, --target-channels picks "
            "its channels")
    stats = None
    if model_path is not None:
        from musplit.splitter import Splitter  # torch

        stats = Splitter.load(model_path).stats
    res = evaluate_arrays(target, pred, stats=stats, channel_names=psrc.channel_names,
                          source=f"{pred_path} vs {target_path}")
    echo_metrics(res, out_path)


__all__ = ["evaluate"]
