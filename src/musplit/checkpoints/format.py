"""Self-describing checkpoints: the file format, saving and loading (docs/checkpoints.md,
"Checkpoint layout").

A musplit checkpoint is one file saved with ``torch.save`` that holds only tensors and plain
Python data, so it loads with ``torch.load(weights_only=True)``: a checkpoint from a stranger
cannot run code. Payload keys:

``format_version``, ``musplit_version``, ``torch_version``, ``config`` (the full run config as
JSON-compatible data), ``stats`` (normalisation statistics), ``state_dict``, ``extra``
(provenance, split indices, training counters, the ``weights_sha256`` of the weights, ...).
Loading checks the weights against that hash, so a damaged file (a flipped bit, a bad copy) is
refused instead of predicting wrong numbers; a checkpoint written before the hash was stored
loads as it is.

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
           "save_checkpoint", "torch_error_line", "torch_load_safely", "verify_weights",
           "weights_sha256"]

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
    # Always the hash of the weights written (an ``extra`` copied from another checkpoint may
    # carry a stale one); load_checkpoint checks it.
    payload["extra"]["weights_sha256"] = weights_sha256(sd)
    return atomic_torch_save(payload, path)


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions a torch file names that weights-only loading refuses."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - a file too broken to list: the caller says so anyway
        return []


def torch_error_line(e: BaseException) -> str:
    """The first line of a loading error, for a one-line message; torch's advice to retry
    with ``weights_only=False`` (run the file's code) is never passed on."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return type(e).__name__ if "weights_only" in first else first


def torch_load_safely(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one
    :class:`CheckpointError` line naming the file (``what`` names its kind).

    A file that holds more than tensors and plain data (a pickle with a payload, a class from
    some package) is refused as not a valid or safe musplit checkpoint. The message never
    repeats torch's suggestion to load it with ``weights_only=False``: that would run whatever
    code the file carries, which no one should do with a file from someone else.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    if not zipfile.is_zipfile(path):  # a TIFF, a text file, a cut download, ...
        raise CheckpointError(f"{what} {path} is unreadable or truncated (not a PyTorch "
                              "checkpoint archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path)
        named = f"it refers to {', '.join(names[:3])}, which " if names else "its content "
        raise CheckpointError(
            f"{what} {path} is not a valid or safe musplit checkpoint: {named}weights-only "
            "loading refuses (a musplit checkpoint holds only tensors and plain data); it was "
            "not loaded and nothing in it was run"
        ) from None
    except Exception as e:  # noqa: BLE001 - garbage makes the legacy unpickler raise anything
        raise CheckpointError(
            f"{what} {path} is unreadable or truncated ({torch_error_line(e)})") from None


def verify_weights(payload: dict, path: str | os.PathLike) -> None:
    """Check a loaded checkpoint's weights against the ``weights_sha256`` it stores.

    A checkpoint written before the hash was stored (none in ``extra``) is accepted as it is.

    Raises
    ------
    CheckpointError
        The weights differ from the ones written: the file was damaged (a flipped bit, a bad
        copy) or edited after it was saved.
    """
    extra = payload.get("extra")
    stored = extra.get("weights_sha256") if isinstance(extra, dict) else None
    if stored is None:
        return
    if weights_sha256(payload["state_dict"]) != stored:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its weights do not match the stored checksum "
            "(weights_sha256), so it was changed after it was written (a bad copy or disk, "
            "an edit); use an intact copy"
        )


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a musplit checkpoint safely (``weights_only=True``), check its layout and its
    weights against the stored ``weights_sha256``.

    Raises
    ------
    CheckpointError
        Missing file, not a torch file, truncated, unsafe content, not a musplit checkpoint,
        or weights that do not match their stored checksum (a damaged file).
    """
    path = Path(path)
    payload = torch_load_safely(path)
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
    verify_weights(payload, path)
    return payload
