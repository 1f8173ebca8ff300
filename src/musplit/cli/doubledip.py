"""``musplit double-dip``: the unsupervised Double-DIP baseline on random crops of an image."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from musplit import __version__
from musplit.cli.options import int_list
from musplit.cli.outputs import check_output, echo_metrics, file_kind
from musplit.errors import InputError
from musplit.evaluation import evaluate_arrays

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.


@click.command("double-dip")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Output .tif/.tiff or .zarr: the two layers of every crop, "
                   "(crops, crop, crop, 2), crop positions in its metadata.")
@click.option("--axes", default=None, help="Axes of INPUT (default: metadata).")
@click.option("--mix-channels", default=None,
              help="INPUT holds the separate channels: split their average (e.g. 0,1) and "
                   "evaluate the layers against them (layer order resolved per crop; default: "
                   "INPUT is already the superimposed image).")
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
              help="With --mix-channels: also write the metrics as .json (and .csv; default: "
                   "print them only).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def double_dip(input_path, out_path, axes, mix_channels, frame_list, crop, per_frame,
               iterations, lr, mix, seed, metrics_path, overwrite):
    """Unsupervised baseline: split random crops of INPUT with Double-DIP (no training data).

    Each crop is fitted on its own by two deep-image-prior generators (8000 iterations each by
    default: minutes per crop on a GPU, much longer on a CPU).
    """
    from musplit.data.io import open_image  # tifffile, zarr
    from musplit.doubledip import MULTIPLE, random_crops, split_crops  # torch
    from musplit.predict import Prediction  # torch

    if crop % MULTIPLE:
        raise InputError(f"--crop must be a multiple of {MULTIPLE}, got {crop}")
    if metrics_path is not None and not mix_channels:
        raise InputError("--metrics needs --mix-channels (the ground truth to compare with)")
    kind = file_kind(out_path)
    check_output(out_path, overwrite, [input_path], kind)  # refuse now, not after hours
    src = open_image(input_path, axes=axes)
    image, targets, names = _superimposed(src, input_path, mix_channels)
    frames = _frames(frame_list, image.shape[0], input_path)
    corners = random_crops(len(frames), image.shape[1], image.shape[2], crop, per_frame, seed)
    corners[:, 0] = frames[corners[:, 0]]
    found = split_crops(image, corners, crop, targets=targets, seed=seed, progress=True,
                        iterations=iterations, lr=lr, mix=mix)
    results = found.results
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
        "layer_order": found.perms if found.perms is not None else "arbitrary (no ground truth)",
        "units": "intensity",
        "musplit_version": __version__,
    }
    pred = Prediction(found.layers, channel_names=names, meta=meta)
    written = pred.save(out_path, overwrite=overwrite, protect=[input_path])
    click.echo(f"wrote {written}")
    if targets is not None:
        res = evaluate_arrays(found.targets, found.layers, channel_names=names,
                              source=f"{out_path} vs {input_path}")
        echo_metrics(res, metrics_path)


def _superimposed(src, input_path: Path, mix_channels: str | None):
    """``(image (N, H, W) float32, targets (N, H, W, 2) or None, layer names)``: INPUT's one
    channel, or the average of the two ``--mix-channels`` and those channels as targets."""
    if not mix_channels:
        if src.n_channels != 1:
            raise InputError(
                f"{input_path} has {src.n_channels} channels; Double-DIP splits one "
                "superimposed channel (use --mix-channels to split the average of two)")
        return src.read()[..., 0].astype(np.float32), None, ["layer_0", "layer_1"]
    chans = int_list(mix_channels, "--mix-channels")
    if len(chans) != 2:
        raise InputError(f"--mix-channels takes two channels, got {chans}")
    targets = src.read(channels=chans).astype(np.float32)
    if src.channel_names:
        names = [src.channel_names[c] for c in chans]
    else:
        names = [f"channel_{c}" for c in chans]
    return targets.mean(axis=-1), targets, names


def _frames(frame_list: str | None, n_frames: int, input_path: Path) -> np.ndarray:
    """The frame indices of ``--frames`` (default: all), checked against ``n_frames``."""
    if not frame_list:
        return np.arange(n_frames)
    frames = np.asarray(int_list(frame_list, "--frames"), dtype=np.int64)
    bad = frames[(frames < 0) | (frames >= n_frames)]
    if bad.size:
        raise InputError(f"--frames {bad.tolist()} out of range: {input_path} has "
                         f"{n_frames} frames")
    return frames


__all__ = ["double_dip"]
