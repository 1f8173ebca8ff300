"""Old home of the checkpoint functions, now the package :mod:`musplit.checkpoints`.

Re-exports what is imported from ``musplit.checkpoint`` (``save_checkpoint``,
``load_checkpoint``, ``FORMAT_VERSION``, ``weights_sha256``, ``file_sha256``,
``atomic_torch_save``, ...), so that those imports keep working.
"""

from musplit.checkpoints import (  # noqa: F401 - re-exported
    _REQUIRED,
    FORMAT_VERSION,
    StateMismatch,
    _atomic_write,
    atomic_torch_save,
    compare_state,
    file_sha256,
    load_checkpoint,
    load_strict,
    mismatch_report,
    mismatch_summary,
    save_checkpoint,
    weights_sha256,
)
from musplit.checkpoints.format import __version__  # noqa: F401 - was importable from here

__all__ = ["FORMAT_VERSION", "atomic_torch_save", "file_sha256", "load_checkpoint",
           "save_checkpoint", "weights_sha256"]
