"""The one strict pydantic base of every musplit config, and the YAML / validation helpers.

Every config class (run, model, pre-training, detection) derives from :class:`Strict`:
unknown fields are refused and assignments are validated. The helpers read a YAML mapping,
write one atomically, merge nested override dicts and turn pydantic errors into one readable
:class:`~musplit.errors.ConfigError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from musplit.errors import ConfigError
from musplit.files import atomic_write

__all__ = [
    "Strict",
    "deep_merge",
    "format_validation_error",
    "read_yaml_mapping",
    "validated",
    "write_yaml",
]


class Strict(BaseModel):
    """Base of every config: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The mapping a YAML file holds; a missing file, bad YAML or a non-mapping is a
    :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def write_yaml(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as YAML, keys in their order (temporary name, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def format_validation_error(e: ValidationError, *, root: str = "",
                            strip_value_error: bool = True) -> str:
    """One line per problem, joined with '; ' (field path: message).

    ``root`` names a problem of the whole model (empty: the message alone);
    ``strip_value_error`` drops pydantic's "Value error, " prefix.
    """
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or root
        msg = err["msg"]
        if strip_value_error:
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validated(cls: type[BaseModel], data: dict, source: str = "config") -> BaseModel:
    """Build ``cls`` from ``data``; pydantic errors become one readable :class:`ConfigError`
    (every problem as ``field.path: pydantic message``, ``<root>`` for the whole model)."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        msg = format_validation_error(e, root="<root>", strip_value_error=False)
        raise ConfigError(f"{source}: {msg}") from None


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with the nested ``over`` merged in (dicts merged key by key, the rest
    replaced); neither argument is changed."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
