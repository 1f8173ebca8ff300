"""``musplit export-bmz``: a checkpoint as a BioImage Model Zoo model package (docs/bmz.md)."""

from __future__ import annotations

from pathlib import Path

import click

# Lazy-import policy (musplit.cli): torch and bioimageio are imported inside the command.


@click.command("export-bmz")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="The package to write (.zip).")
@click.option("--size", type=click.IntRange(min=2), default=256, show_default=True,
              help="Fixed input side H = W of the exported model (a multiple of the grid).")
@click.option("--grid", type=click.IntRange(min=2), default=None,
              help="Inner-padding tile size (default: as for musplit predict).")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Test image (its centre crop is the test input); default: a fresh frame of "
                   "the synthetic training data.")
@click.option("--name", default=None, help="Model name in the package (default: 'musplit "
                                           "<config name>').")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def export_bmz(checkpoint: Path, out: Path, size: int, grid: int | None, image: Path | None,
               name: str | None, overwrite: bool) -> None:
    """Write CHECKPOINT as a bioimageio 0.5 model package (pip install 'musplit[bmz]'): the
    raw image in, the split out, lateral context and inner-padded tiles built inside."""
    from musplit.bmz.export import export_bmz as run  # torch, bioimageio
    from musplit.errors import InputError

    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint file")
    r = run(checkpoint, out, size=size, grid=grid, image=image, name=name, overwrite=overwrite)
    click.echo(f"wrote {r['path']}: {r['size']}x{r['size']} input, grid {r['grid']}; "
               f"measured difference to musplit predict {r['measured']:.3g}, test tolerance "
               f"{r['tolerance']:.3g}")
