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
def info(path: Path, axes: str | None) -> None:
    """Describe an image file (shape, axes, channels) or a musplit checkpoint."""
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

    src = open_image(path, axes=axes)
    click.echo(f"{path}: axes {src.axes}, shape {tuple(src.shape)}, dtype {src.dtype}")
    click.echo(f"  as SYXC: {src.n_frames} frames of {src.height}x{src.width}, "
               f"{src.n_channels} channels"
               + (f" ({', '.join(src.channel_names)})" if src.channel_names else ""))


# -- demo ----------------------------------------------------------------------------------
@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo"), show_default=True)
@click.option("--frames", type=click.IntRange(min=10), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: Path, frames: int, seed: int) -> None:
    """The main job on built-in synthetic data (SinosoidalCritters)."""
    from musplit.demo import run_demo

    run_demo(out_dir, frames=frames, seed=seed, echo=click.echo)


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
