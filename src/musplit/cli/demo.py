"""``musplit demo``: the whole job (train, predict, evaluate, report) on built-in data."""

from __future__ import annotations

from pathlib import Path

import click

from musplit.cli.aliases import renamed
from musplit.cli.options import int_list
from musplit.errors import InputError

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.


@click.command("demo")
@renamed("--steps", "--max-steps", type=click.IntRange(min=1))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output folder.  [default: runs/demo, or runs/demo-real]")
@click.option("--real", is_flag=True,
              help="Run on a real confocal image (PartSegData's stack.tif; "
                   "pip install 'musplit[examples]') instead of synthetic data.")
@click.option("--channels", default="0,3", show_default=True,
              help="With --real: the channels of the stack to split (2 to 4 of 0..3).")
@click.option("--frames", type=click.IntRange(min=10), default=100, show_default=True)
@click.option("--size", type=click.IntRange(min=64), default=256, show_default=True)
@click.option("--max-steps", "steps", type=click.IntRange(min=1), default=1000,
              show_default=True, help="Training steps per model.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Posterior samples.  [default: 5, or 3 with --real]")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: Path | None, real: bool, channels: str, frames: int, size: int, steps: int,
         samples: int | None, seed: int) -> None:
    """The main job on built-in synthetic data: train Lean-LC and Vanilla HVAEs on
    SinosoidalCritters, predict the test split, evaluate, and write a report. With --real,
    the same on two channels of a real confocal image, against the linear baseline."""
    from musplit.demo import run_demo  # torch, lightning: lazy (see above)
    from musplit.demo_real import run_real_demo

    if real:
        chans = int_list(channels, "--channels") or []
        if not 2 <= len(chans) <= 4 or len(set(chans)) != len(chans) or not all(
                0 <= c < 4 for c in chans):
            raise InputError(f"--channels must be 2 to 4 different channels of the 4-channel "
                             f"stack (0..3), got '{channels}'")
        run_real_demo(out_dir or Path("runs/demo-real"), channels=tuple(chans), steps=steps,
                      samples=samples or 3, seed=seed, echo=click.echo)
        return
    run_demo(out_dir or Path("runs/demo"), frames=frames, size=size, steps=steps,
             samples=samples or 5, seed=seed, echo=click.echo)


__all__ = ["demo"]
