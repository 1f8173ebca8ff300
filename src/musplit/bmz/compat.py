"""A shim for bioimageio.spec 0.5.12 under pydantic >= 2.13 (docs/bmz.md, "Versions").

bioimageio.spec 0.5.12 (the newest that bioimageio.core 0.11 accepts) calls pydantic's wrap-
serializer handler as ``handler(value, info)``, as older pydantic documentation showed; newer
pydantic reads that second argument as an index key and refuses a ``SerializationInfo``, so
every model description with a file or weights in it fails to validate. :func:`patch_bioimageio`
makes the affected serializers pass a handler that drops that second argument (what later spec
releases do: ``handler(value)``), once per process and only for functions whose source still has
the old call. Nothing changes where the installed versions work together.
"""

from __future__ import annotations

import inspect
import types

_done = False


class _Handler:
    """pydantic's handler, called with the value only."""

    __slots__ = ("_h",)

    def __init__(self, h):
        self._h = h

    def __call__(self, value, *_):
        return self._h(value)

    def __getattr__(self, name):
        return getattr(self._h, name)


def _old_call(fn) -> bool:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    compact = src.replace(" ", "").replace("\n", "")
    return "handler(value,info" in compact or "handler(self,info" in compact


def _patch(fn) -> None:
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    if not isinstance(fn, types.FunctionType) or not _old_call(fn):
        return
    g = fn.__globals__
    originals = g.setdefault("_musplit_original", {})
    key = f"{fn.__qualname__}"
    originals[key] = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__,
                                        fn.__closure__)
    g["_musplit_handler"] = _Handler
    fn.__code__ = _keyed_code(key)


def _keyed_code(key: str) -> types.CodeType:
    src = (f"def _f(a, handler, info):\n"
           f"    return _musplit_original[{key!r}](a, _musplit_handler(handler), info)\n")
    ns: dict = {}
    exec(compile(src, "<musplit.bmz.compat>", "exec"), ns)  # noqa: S102 - a fixed template
    return ns["_f"].__code__


def patch_bioimageio() -> None:
    """Make bioimageio.spec's serializers work with the installed pydantic (idempotent)."""
    global _done
    if _done:
        return
    from bioimageio.spec._internal import io_packaging
    from bioimageio.spec._internal import validated_string_with_inner_node as vs
    from bioimageio.spec.model import v0_4

    _patch(io_packaging.package_file_descr_serializer)
    _patch(v0_4.package_weights)
    ser = vs.ValidatedStringWithInnerNode.__dict__.get("_serialize")
    _patch(getattr(ser, "wrapped", ser))
    _done = True
