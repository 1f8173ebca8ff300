"""``musplit import-official``: convert a reference µSplit checkpoint (docs/checkpoints.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from musplit.cli.options import int_list
from musplit.data.normalize import NormStats, compute_stats
from musplit.data.sources import load_targets
from musplit.errors import InputError
from musplit.kinds import LADDER_KINDS

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.


@click.command("import-official")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="The musplit checkpoint to write.")
@click.option("--kind", type=click.Choice(list(LADDER_KINDS)), default=None,
              help="Needed unless the run's config.pkl says it (default: from config.pkl).")
@click.option("--stats-from", "stats_from", default=None,
              help="Training data to recompute the normalisation statistics from "
                   "(one multi-channel file, or comma-separated files one per channel; default: "
                   "none, give one of --stats-from, --critters, --stats-json).")
@click.option("--axes", default=None, help="Axes of --stats-from (default: metadata).")
@click.option("--channels", default=None, help="Channels of --stats-from, e.g. 2,3 (default: all).")
@click.option("--critters", type=click.Choice(["n0", "n25"]), default=None,
              help="Statistics from built-in SinosoidalCritters (1000 frames of 256²; default: "
                   "none).")
@click.option("--stats-json", type=click.Path(path_type=Path), default=None,
              help="Explicit statistics (JSON of clip_max, input_mean, ... ; default: none).")
@click.option("--patch", type=int, default=None, help="Training patch size (default 64).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint at --out.")
@click.option("--allow-pickled-classes", is_flag=True,
              help="Read a checkpoint that weights-only loading refuses, with inert stubs for "
                   "unknown classes (never runs code from the file).")
def import_official_cmd(ckpt, out_path, kind, stats_from, axes, channels, critters, stats_json,
                        patch, overwrite, allow_pickled_classes):
    """Convert a reference µSplit checkpoint CKPT into a musplit checkpoint."""
    from musplit.checkpoints.reference import import_official  # torch

    stats = _stats(stats_json, stats_from, critters, axes, channels)
    written = import_official(ckpt, out_path, kind=kind, stats=stats, patch=patch,
                              overwrite=overwrite,
                              stub_unknown_classes=allow_pickled_classes)
    click.echo(f"wrote {written}")


def _stats(stats_json: Path | None, stats_from: str | None, critters: str | None,
           axes: str | None, channels: str | None) -> NormStats | None:
    """The normalisation statistics of ``--stats-json``, else recomputed from ``--stats-from``
    or ``--critters`` training data, else None."""
    if stats_json is not None:
        try:
            return NormStats.from_dict(json.loads(Path(stats_json).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"--stats-json {stats_json}: {e}") from None
    if not (stats_from or critters):
        return None
    from musplit.config import DataConfig  # pydantic, torch
    from musplit.config.flags import critters_data  # pydantic, torch

    if critters:
        dc = DataConfig(synthetic=critters_data(critters))
    elif "," in stats_from:
        dc = DataConfig(channel_paths=[p.strip() for p in stats_from.split(",")], axes=axes)
    else:
        dc = DataConfig(path=stats_from, axes=axes, channels=int_list(channels, "--channels"))
    data = load_targets(dc)
    return compute_stats(data.targets, data.split.train)


__all__ = ["import_official_cmd"]
