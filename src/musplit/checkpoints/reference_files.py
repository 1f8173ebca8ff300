"""Read reference µSplit files without running their code (docs/checkpoints.md, "Reference
checkpoints").

A reference run leaves a Lightning ``.ckpt`` and a ``config.pkl``. Both are pickles: the
checkpoint is read with ``torch.load(weights_only=True)`` (unknown classes become inert stubs only
when the caller consents), the config with an unpickler that resolves every class it names to a
stub that records and never executes. :mod:`musplit.checkpoints.reference` turns what is read here
into a musplit checkpoint.
"""

from __future__ import annotations

import builtins
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from musplit.checkpoints.format import torch_error_line
from musplit.errors import CheckpointError

__all__ = ["load_reference_checkpoint", "read_reference_config"]

log = logging.getLogger(__name__)


class _Stub:
    """Inert stand-in for a class the reader does not know: it records, never executes."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj._args, obj._kwargs, obj._state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def __call__(self, *args, **kwargs):
        return _Stub(*args, **kwargs)


_STUBS: dict[str, type] = {}


def _stub_class(name: str) -> type:
    if name not in _STUBS:
        _STUBS[name] = type(f"Stub[{name}]", (_Stub,), {"__module__": __name__})
    return _STUBS[name]


def _stub_reconstructor(cls, base=None, state=None):  # copyreg._reconstructor, made inert
    obj = cls() if isinstance(cls, type) and issubclass(cls, _Stub) else _Stub()
    obj._state = state
    return obj


# The only globals a config pickle may resolve to real objects: inert containers and scalars.
_PLAIN: dict[tuple[str, str], Any] = {
    ("builtins", n): getattr(builtins, n)
    for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bytes",
              "bool", "complex")
}
_PLAIN[("collections", "OrderedDict")] = OrderedDict
_PLAIN[("copyreg", "_reconstructor")] = _stub_reconstructor


class _StubUnpickler(pickle.Unpickler):
    """Unpickler that resolves every global outside a few plain containers to a stub."""

    def find_class(self, module: str, name: str):
        plain = _PLAIN.get((module, name))
        return plain if plain is not None else _stub_class(f"{module}.{name}")

    def persistent_load(self, pid):
        return _Stub(pid)


def _walk(obj: Any, depth: int = 0) -> Iterator[Mapping]:
    """Every mapping reachable from ``obj`` (through containers and stub records)."""
    if depth > 50:
        return
    if isinstance(obj, Mapping):
        yield obj
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, _Stub):
        children = [obj._args, obj._kwargs, obj._state, getattr(obj, "__dict__", {})]
    else:
        return
    for child in children:
        yield from _walk(child, depth + 1)


def _lookup(root: Any, *path: str) -> Any:
    """The value at ``path`` (e.g. "model", "non_stochastic_version") anywhere under ``root``."""
    for mapping in _walk(root):
        if path[0] in mapping:
            value = mapping[path[0]]
            if len(path) == 1:
                # A field-reference object keeps the value in `_value`.
                if isinstance(value, _Stub):
                    inner = _lookup(value, "_value")
                    return inner
                return value
            found = _lookup(value, *path[1:])
            if found is not None:
                return found
    return None


def read_reference_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``model.non_stochastic_version`` and ``data.image_size`` from a ``config.pkl``.

    The pickle is read with an unpickler that turns every class and function it names into an
    inert stub, so nothing in the file is executed and the reference package is not needed.

    Returns
    -------
    dict
        ``{"non_stochastic_version": bool, "image_size": int}`` for the fields found; empty if
        the file is unreadable.
    """
    try:
        with open(path, "rb") as f:
            root = _StubUnpickler(f).load()
    except Exception as e:  # any malformed pickle: the caller falls back to flags
        log.warning("could not read %s (%s); using flags and defaults", path, e)
        return {}
    found: dict[str, Any] = {}
    nsv = _lookup(root, "model", "non_stochastic_version")
    if isinstance(nsv, bool):
        found["non_stochastic_version"] = nsv
    size = _lookup(root, "data", "image_size")
    if isinstance(size, int) and not isinstance(size, bool):
        found["image_size"] = size
    return found


def load_reference_checkpoint(path: str | os.PathLike, *, stub_unknown_classes: bool = False
                              ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read the weights of a reference (Lightning) checkpoint without running its code.

    Parameters
    ----------
    path : path-like
        ``*.ckpt`` file.
    stub_unknown_classes : bool
        Consent to replace classes that weights-only loading refuses (e.g. reference enums in
        callback states) by inert stubs. Nothing is executed either way.

    Returns
    -------
    state_dict : dict of str to Tensor
    meta : dict
        ``epoch``, ``global_step`` and ``lightning_version`` where present.

    Raises
    ------
    CheckpointError
        Missing, unreadable, refused (without consent) or without a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"reference checkpoint {path} does not exist")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = torch_error_line(e)
            names = (torch.serialization.get_unsafe_globals_in_checkpoint(path)
                     if zipfile.is_zipfile(path) else [])
            if not names:
                raise CheckpointError(
                    f"{path} is not a readable PyTorch checkpoint ({first})") from None
            if not stub_unknown_classes:
                raise CheckpointError(
                    f"{path} refers to classes that weights-only loading refuses "
                    f"({', '.join(names[:5])}); allow inert stubs for unknown classes to read "
                    "its weights anyway (no code from the file is run)"
                ) from None
            log.warning("reading %s with inert stubs for %s", path, ", ".join(names))
            with torch.serialization.safe_globals([(_stub_class(n), n) for n in names]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError, AttributeError, TypeError) as e:
        first = torch_error_line(e)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state_dict = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state_dict = obj  # a bare state dict
    else:
        raise CheckpointError(f"{path} holds no state_dict")
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    meta = {}
    if isinstance(obj, Mapping):
        for src, dst in (("epoch", "epoch"), ("global_step", "global_step"),
                         ("pytorch-lightning_version", "lightning_version")):
            if isinstance(obj.get(src), (int, str)):
                meta[dst] = obj[src]
    return dict(state_dict), meta
