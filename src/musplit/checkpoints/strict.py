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

    shown = mismatch.shapes[:limit]
    shapes = "; ".join(f"{k} {g} vs expected {e}"
                       for k, (_, g, e) in zip(names([k for k, _, _ in shown]), shown,
                                               strict=True))
    return _join([
        (mismatch.missing, lambda: f"missing {', '.join(names(mismatch.missing))}"),
        (mismatch.unexpected, lambda: f"unexpected {', '.join(names(mismatch.unexpected))}"),
        (mismatch.shapes, lambda: f"shape mismatch {shapes}"),
    ])


def mismatch_summary(mismatch: StateMismatch) -> str:
    """``"2 missing (e.g. a); 1 unexpected (e.g. b); 1 shape mismatches (e.g. k: (1,) vs (2,))"``:
    counts with the first key of each kind."""
    m = mismatch
    return _join([
        (m.missing, lambda: f"{len(m.missing)} missing (e.g. {m.missing[0]})"),
        (m.unexpected, lambda: f"{len(m.unexpected)} unexpected (e.g. {m.unexpected[0]})"),
        (m.shapes, lambda: "{} shape mismatches (e.g. {}: {} vs {})".format(
            len(m.shapes), *m.shapes[0])),
    ])


def _join(kinds: list[tuple[list, Callable[[], str]]]) -> str:
    """The words of each non-empty kind, joined by ``"; "``."""
    return "; ".join(words() for found, words in kinds if found)


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor], *, what: str,
                rename: Callable[[list[str]], list[str]] | None = None) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, refusing first, with one
    :class:`~musplit.errors.CheckpointError` ``"{what}: {mismatch_report}"``, a state dict
    that does not fit."""
    mismatch = compare_state(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(f"{what}: {mismatch_report(mismatch, rename=rename)}")
    model.load_state_dict(state_dict, strict=True)
