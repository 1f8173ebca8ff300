"""Checkpoints: the self-describing file format, strict loading, reference import and the
transfer of pre-trained weights (docs/checkpoints.md).

- :mod:`musplit.checkpoints.format` -- save and load musplit checkpoints (weights-only
  loadable), content hashes, atomic writes;
- :mod:`musplit.checkpoints.strict` -- strict state-dict loading and the one report of what
  does not fit;
- :mod:`musplit.checkpoints.reference` -- import reference µSplit (Lightning) checkpoints;
- :mod:`musplit.checkpoints.transfer` -- load pre-trained encoder weights (``train.init_from``).

The names of the first two are importable from here; the last two are imported on their own
(they need the model and config modules).
"""

from musplit.checkpoints.format import (
    _REQUIRED,
    FORMAT_VERSION,
    _atomic_write,
    atomic_torch_save,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from musplit.checkpoints.strict import (
    StateMismatch,
    compare_state,
    load_strict,
    mismatch_report,
    mismatch_summary,
)

__all__ = [
    "FORMAT_VERSION",
    "StateMismatch",
    "atomic_torch_save",
    "compare_state",
    "file_sha256",
    "load_checkpoint",
    "load_strict",
    "mismatch_report",
    "mismatch_summary",
    "save_checkpoint",
    "weights_sha256",
    "_REQUIRED",
    "_atomic_write",
]
