"""``musplit generate ...``: synthetic training data."""

from __future__ import annotations

from pathlib import Path

import click

from musplit.data.sources import write_critters

# Lazy-import policy (musplit.cli): modules that load torch, pydantic configs, tifffile/zarr or
# scipy are imported inside the commands, so that ``musplit --help`` starts fast.

#: The keys of :data:`musplit.data.synthetic.PAIRINGS` (spelled out here: that module loads scipy).
PAIRING_NAMES = ("paper", "shared-low", "shared-high")


@click.group("generate")
def generate() -> None:
    """Generate synthetic training data."""


def _dataset_output(command):
    """The options every generated dataset shares: --seed, --out, --format, --overwrite."""
    for option in reversed([
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
                         required=True, help="Output folder."),
            click.option("--format", "fmt", type=click.Choice(["tiff", "zarr"]),
                         default="tiff", show_default=True),
            click.option("--overwrite", is_flag=True, help="Replace existing output files.")]):
        command = option(command)
    return command


@generate.command("critters")
@click.option("--frames", type=click.IntRange(min=3), default=1000, show_default=True)
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True,
              help="Frame side in pixels (the paper uses 128 and 256).")
@click.option("--connector", type=click.IntRange(min=0), default=25, show_default=True,
              help="Connector length in pixels: 0 ('N0') or 25 ('N25').")
@click.option("--pairing", type=click.Choice(PAIRING_NAMES), default="paper", show_default=True,
              help="Which curve frequencies make a channel: 'paper' (the paper's pairing) or "
                   "'shared-low' / 'shared-high' (what musplit demo uses: half of each critter "
                   "is shared, the other half names its channel).")
@_dataset_output
def generate_critters_cmd(frames, size, connector, pairing, seed, out_dir, fmt, overwrite):
    """SinosoidalCritters: two channels of sinusoidal curves told apart only by context.

    Writes the two channels as one (N, H, W, 2) float32 image with axes metadata, the split
    indices (split.json) and a manifest of the parameters.
    """
    from musplit.data.synthetic import generate_critters  # scipy

    data = generate_critters(frames, size=size, connector=connector, seed=seed, pairing=pairing)
    paths = write_critters(out_dir, data, fmt=fmt, overwrite=overwrite,
                           params={"frames": frames, "size": size, "connector": connector,
                                   "seed": seed, "pairing": pairing})
    for p in paths:
        click.echo(f"wrote {p}")


@generate.command("structures")
@click.option("--channels", type=click.IntRange(2, 4), default=3, show_default=True,
              help="How many structures: 2 (filaments, blobs), 3 (+ puncta) or 4 "
                   "(+ membranes).")
@click.option("--frames", type=click.IntRange(min=3), default=64, show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=256, show_default=True,
              help="Frame side in pixels.")
@click.option("--psf-sigma", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Gaussian PSF blur of every channel, in pixels.")
@click.option("--peak", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Also write noisy.tif: Poisson shot noise at this many photons for the "
                   "brightest structures, plus Gaussian read noise (--read-sigma; default: "
                   "none, clean.tif only).")
@click.option("--read-sigma", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Read noise in photons (with --peak).")
@_dataset_output
def generate_structures_cmd(channels, frames, size, psf_sigma, peak, read_sigma, seed, out_dir,
                            fmt, overwrite):
    """Two to four structures at distinct scales, with known clean ground truth.

    Writes clean.tif, an (N, H, W, C) float32 stack of the separately "imaged" structures
    (train on it and score against it), with --peak also noisy.tif (the same in photons, as a
    camera records them), the split (split.json) and a manifest.
    """
    from musplit.data.sources import write_dataset
    from musplit.data.structures import add_poisson_gaussian, generate_structures  # scipy

    data = generate_structures(frames, size, channels, seed=seed, psf_sigma=psf_sigma)
    stacks = {"clean": data.clean}
    if peak is not None:
        stacks["noisy"] = add_poisson_gaussian(data.clean, peak, read_sigma, seed=seed + 1)
    params = {"channels": channels, "frames": frames, "size": size, "psf_sigma": psf_sigma,
              "peak": peak, "read_sigma": read_sigma if peak is not None else None,
              "seed": seed}
    for p in write_dataset(out_dir, stacks, dataset="musplit structures",
                           channel_names=list(data.names), fmt=fmt, overwrite=overwrite,
                           params=params):
        click.echo(f"wrote {p}")


__all__ = ["generate", "generate_critters_cmd", "generate_structures_cmd"]
