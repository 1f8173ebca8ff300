"""Self-describing checkpoints: the file format, saving and loading (docs/checkpoints.md,
"Checkpoint layout").

A musplit checkpoint is one file saved with ``torch.save`` that holds only tensors and plain
Python data, so it loads with ``torch.load(weights_only=True)``: a checkpoint from a stranger
cannot run code. Payload keys:

``format_version``, ``musplit_version``, ``torch_version``, ``config`` (the full run config as
JSON-compatible data), ``stats`` (normalisation statistics), ``state_dict``, ``extra``
(provenance, split indices, training counters, ...).

Every file is written to a temporary name beside its destination and renamed over it
(:func:`_atomic_write`), so a crash never leaves a half-written checkpoint or report.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from musplit import __version__
from musplit.errors import CheckpointError
from musplit.files import atomic_write

__all__ = ["FORMAT_VERSION", "atomic_torch_save", "file_sha256", "load_checkpoint",
           "save_checkpoint", "weights_sha256"]

#: Version of the payload layout; :func:`load_checkpoint` reads this and older.
FORMAT_VERSION = 1
_REQUIRED = ("format_version", "musplit_version", "config", "state_dict")


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` for a temporary name beside ``path``, then rename it over ``path``.

    The folder is created first; the temporary file is removed if ``write`` fails
    (:func:`musplit.files.atomic_write`, for a ``write`` callback).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "tmp") as tmp:  # also removes an interrupted write's leftovers
        write(tmp)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name in the same folder, then rename over ``path``."""
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights (key order independent), for provenance."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    *,
    state_dict: dict[str, torch.Tensor],
    config: dict,
    stats: dict | None,
    extra: dict | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically.

    Parameters
    ----------
    path : path-like
        Output file (conventionally ``.ckpt``); written to a temporary name, then renamed.
    state_dict : dict of str to Tensor
        Model weights and buffers (moved to CPU).
    config : dict
        The full run configuration, ``Config.model_dump(mode="json")``.
    stats : dict or None
        ``NormStats.to_dict()``.
    extra : dict, optional
        Anything else JSON-like: provenance, split indices, counters.
    """
    sd = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "musplit_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "config": config,
        "stats": stats,
        "state_dict": sd,
        "extra": dict(extra or {}),
    }
    payload["extra"].setdefault("weights_sha256", weights_sha256(sd))
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a musplit checkpoint safely (``weights_only=True``) and check its layout.

    Raises
    ------
    CheckpointError
        Missing file, not a torch file, truncated, unsafe content, or not a musplit checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if not zipfile.is_zipfile(path):  # a TIFF, a text file, a cut download, ...
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated (not a PyTorch "
                              "checkpoint archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} holds more than tensors and plain data and was not loaded "
            f"(weights-only loading refused it: {first})"
        ) from None
    except Exception as e:  # noqa: BLE001 - garbage makes the legacy unpickler raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({first})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        raise CheckpointError(
            f"{path} is not a musplit checkpoint (a reference µSplit checkpoint must be "
            "converted first: musplit import-official)"
        )
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {payload['format_version']}, this musplit "
            f"({__version__}) reads up to {FORMAT_VERSION}: upgrade musplit "
            f"(it was written by musplit {payload['musplit_version']})"
        )
    return payload
