"""The ``musplit`` command line: parsing flags and calling the library, nothing more.

One module per command family: :mod:`~musplit.cli.generate`, :mod:`~musplit.cli.info`,
:mod:`~musplit.cli.train`, :mod:`~musplit.cli.predict`, :mod:`~musplit.cli.evaluate`,
:mod:`~musplit.cli.doubledip`, :mod:`~musplit.cli.import_official`, :mod:`~musplit.cli.demo`,
:mod:`~musplit.cli.pretrain` and :mod:`~musplit.cli.detect` (``synth`` and ``detect``); they
join the group in :mod:`musplit.cli.app`, which also maps errors to exit statuses. Shared
pieces: :mod:`~musplit.cli.options` (shared flags), :mod:`~musplit.cli.outputs` (output checks,
small files, metric tables), :mod:`~musplit.cli.detect_data` (detection datasets). What the
command line offers is described in docs/design.md ("Command line").

User mistakes (:class:`musplit.errors.MusplitError`, bad flags) print one line on stderr and exit
with status 2; anything else is a bug and keeps its traceback.

Import policy: ``musplit --help`` must start fast, so the command modules import at their top
only what loads quickly; musplit modules that load torch, lightning, pydantic configs,
tifffile/zarr or scipy are imported inside the commands that need them.
"""

from __future__ import annotations

from musplit.cli.app import (
    _exit,  # noqa: F401  (the console script: musplit.cli:_exit)
    cli,
    main,
)
from musplit.errors import InputError

# The commands are not re-exported here: ``musplit.cli.predict`` and the like name the command
# modules (the old single-module CLI exposed the click commands under those names; nothing
# imported them).

__all__ = ["cli", "main", "InputError"]
