"""``musplit info``: describe an image file or a musplit checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

# Lazy-import policy (musplit.cli): modules that load torch, pydantic configs, tifffile/zarr or
# scipy are imported inside the commands, so that ``musplit --help`` starts fast.

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--axes", default=None,
              help="Axes of the file if its metadata has none (default: the metadata's, or a "
                   "guess).")
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
    if path.suffix in CHECKPOINT_SUFFIXES:
        _echo_checkpoint(path)
        return
    from musplit.data.io import open_image  # tifffile, zarr

    src = open_image(path, axes=axes, series=series, level=level)
    _echo_image(path, src)
    if with_stats:
        _echo_channel_statistics(src)


def _echo_checkpoint(path: Path) -> None:
    """Format, writer, model and normalisation of a musplit checkpoint."""
    from musplit.checkpoint import load_checkpoint  # torch

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
    extra = payload.get("extra") if isinstance(payload.get("extra"), dict) else {}
    _echo_mixing(cfg, payload.get("stats"), extra.get("channel_names"))


def _echo_mixing(cfg: dict, stats: dict | None, names=None) -> None:
    """The mixing ratio the checkpoint's model assumes, and the ranges it was trained on."""
    from musplit.config import Config  # pydantic
    from musplit.data.mixing import mixing_line, mixing_summary
    from musplit.data.normalize import NormStats
    from musplit.errors import ConfigError

    try:
        data = Config.validated(cfg, source="checkpoint config").data
    except ConfigError:
        return  # a config this musplit cannot read: the lines above still describe the file
    st = NormStats.from_dict(stats) if stats else None
    names = names or data.channel_names
    click.echo(f"  {mixing_line(mixing_summary(data, st), names)}")


def _echo_image(path: Path, src) -> None:
    """Axes, shape, series, pyramid level, channels and pixel size of an opened image."""
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


def _echo_channel_statistics(src) -> None:
    """The per-channel table of ``musplit info`` (musplit.data.io.channel_statistics)."""
    from musplit.data.io import channel_statistics  # tifffile, zarr

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


__all__ = ["info"]
