"""Flag values the commands share a way of parsing (comma-separated integers)."""

from __future__ import annotations

from musplit.errors import InputError


def int_list(value: str | None, name: str) -> list[int] | None:
    """``"2,3"`` -> ``[2, 3]`` (None stays None); a bad value is an
    :class:`~musplit.errors.InputError` naming the flag ``name``."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise InputError(f"{name} must be comma-separated integers, got '{value}'") from None


__all__ = ["int_list"]
