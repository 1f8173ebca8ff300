"""Strict state-dict loading and the one report of what does not fit (docs/checkpoints.md,
"Strict loading").

:func:`compare_state` lists the keys a state dict lacks, the keys it has that are not wanted
and the tensors whose shapes differ; :func:`mismatch_report` and :func:`mismatch_summary` put
that into words (every key named, or counts with one example); :func:`load_strict` refuses a
state dict that does not fit, naming the problems, before ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from musplit.errors import CheckpointError

__all__ = ["StateMismatch", "compare_state", "load_strict", "mismatch_report",
           "mismatch_summary"]


@dataclass(frozen=True)
class StateMismatch:
    """How a given state dict differs from the one wanted.

    Attributes
    ----------
    missing : list of str
        Wanted keys that are not given.
    unexpected : list of str
        Given keys that are not wanted.
    shapes : list of (str, tuple, tuple)
        ``(key, given shape, wanted shape)`` of each tensor given with another shape.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def compare_state(own: Mapping[str, Tensor], given: Mapping[str, Tensor],
                  keys: Iterable[str] | None = None, *, sort: bool = False) -> StateMismatch:
    """Compare ``given`` with the wanted keys ``keys`` (default: all of ``own``) of ``own``.

    Keys keep the order of ``keys`` (missing, shapes) and of ``given`` (unexpected), or are
    sorted with ``sort``.
    """
    wanted = list(own) if keys is None else list(keys)
    wanted_set = set(wanted)
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted_set]
    shapes = [(k, tuple(given[k].shape), tuple(own[k].shape)) for k in wanted
              if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    if sort:
        missing, unexpected, shapes = sorted(missing), sorted(unexpected), sorted(shapes)
    return StateMismatch(missing, unexpected, shapes)


def mismatch_report(mismatch: StateMismatch, *,
                    rename: Callable[[list[str]], list[str]] | None = None,
                    limit: int = 5) -> str:
    """``"missing a, b; unexpected c; shape mismatch k (1,) vs expected (2,)"``.

    At most ``limit`` keys of each kind are named; ``rename`` maps a list of keys to the names
    the reader knows them by (e.g. the reference layout).
    """
    def names(keys: list[str]) -> list[str]:
        keys = keys[:limit]
        return rename(keys) if rename is not None and keys else keys

    problems = []
    if mismatch.missing:
        problems.append(f"missing {', '.join(names(mismatch.missing))}")
    if mismatch.unexpected:
        problems.append(f"unexpected {', '.join(names(mismatch.unexpected))}")
    if mismatch.shapes:
        shown = mismatch.shapes[:limit]
        keys = names([k for k, _, _ in shown])
        problems.append("shape mismatch " + "; ".join(
            f"{k} {g} vs expected {e}" for k, (_, g, e) in zip(keys, shown, strict=True)))
    return "; ".join(problems)


def mismatch_summary(mismatch: StateMismatch) -> str:
    """``"2 missing (e.g. a); 1 unexpected (e.g. b); 1 shape mismatches (e.g. k: (1,) vs (2,))"``:
    counts with the first key of each kind."""
    parts = []
    if mismatch.missing:
        parts.append(f"{len(mismatch.missing)} missing (e.g. {mismatch.missing[0]})")
    if mismatch.unexpected:
        parts.append(f"{len(mismatch.unexpected)} unexpected (e.g. {mismatch.unexpected[0]})")
    if mismatch.shapes:
        k, g, e = mismatch.shapes[0]
        parts.append(f"{len(mismatch.shapes)} shape mismatches (e.g. {k}: {g} vs {e})")
    return "; ".join(parts)


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], *, what: str,
                rename: Callable[[list[str]], list[str]] | None = None) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, refusing first, with one
    :class:`~musplit.errors.CheckpointError` ``"{what}: {mismatch_report}"``, a state dict
    that does not fit."""
    mismatch = compare_state(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(f"{what}: {mismatch_report(mismatch, rename=rename)}")
    model.load_state_dict(state_dict, strict=True)
