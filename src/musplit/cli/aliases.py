"""Old flag spellings, kept working: one vocabulary across the commands.

Every command says ``--max-steps``, ``--batch-size``, ``--devices``, ``--init-from`` and
``--overwrite`` for the same things. Spellings that some commands used before (``--steps``,
``--batch``, ``--device``, ``--init``) still work as hidden aliases: they take the value, print a
one-line warning naming the new flag, and are refused when given together with it.
"""

from __future__ import annotations

import functools

import click
from click.core import ParameterSource

__all__ = ["renamed"]


def renamed(old: str, new: str, **option_kwargs):
    """Decorator (below ``@click.command``): a hidden ``old`` flag standing for ``new``.

    ``option_kwargs`` are those of ``new``'s :func:`click.option` that parse the value
    (``type``, ``is_flag``); the value lands in ``new``'s parameter.
    """
    hidden = "renamed_" + old.lstrip("-").replace("-", "_")

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            value = kwargs.pop(hidden)
            if value is not None:
                ctx = click.get_current_context()
                dest = next(p.name for p in ctx.command.params if new in p.opts)
                if ctx.get_parameter_source(dest) is ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"{old} is the old name of {new}; give only {new}")
                click.echo(f"musplit: warning: {old} is now called {new}; the old name will go "
                           "away", err=True)
                kwargs[dest] = value
            return f(*args, **kwargs)

        return click.option(old, hidden, hidden=True, default=None, **option_kwargs)(wrapper)

    return decorate
