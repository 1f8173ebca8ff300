"""The ``musplit`` command group, where every command is attached, and the entry point.

User mistakes (:class:`musplit.errors.MusplitError`, bad flags) print one line on stderr and exit
with status 2; anything else is a bug and keeps its traceback. The commands live one family per
module of :mod:`musplit.cli`; the list below is the one place they join the group.
"""

from __future__ import annotations

import logging
import sys

import click

from musplit import __version__
from musplit.cli.calibrate import calibrate
from musplit.cli.demo import demo
from musplit.cli.detect import detect, synth
from musplit.cli.doubledip import double_dip
from musplit.cli.evaluate import evaluate
from musplit.cli.export_bmz import export_bmz
from musplit.cli.generate import generate
from musplit.cli.import_official import import_official_cmd
from musplit.cli.info import info
from musplit.cli.noise import noise_model
from musplit.cli.predict import predict
from musplit.cli.pretrain import pretrain
from musplit.cli.train import train
from musplit.errors import MusplitError
from musplit.runtime import tune_allocator


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="musplit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Split superimposed fluorescence microscopy images into one image per structure
    (µSplit, ICCV 2023)."""
    _setup_logging(verbose)
    tune_allocator()  # faster CPU steps; MUSPLIT_TUNE_MALLOC=0 turns it off


# Every command of ``musplit``, in one place (``musplit --help`` lists them sorted by name).
for _command in (generate, info, train, predict, evaluate, double_dip, import_official_cmd,
                 demo, detect, synth, pretrain, noise_model, calibrate, export_bmz):
    cli.add_command(_command)
del _command


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


__all__ = ["cli", "main"]
