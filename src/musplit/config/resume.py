"""Which settings a resumed run may change (docs/design.md, "Resuming a run").

``musplit train --resume`` continues a run from its trainer state. Some settings only say how
far or how often to go on and apply from the resumed step: :data:`RESUMABLE` (train longer with
a larger ``max_steps``, validate at another interval, other prediction defaults). Every other
setting built the model, the data, the optimiser or the state being restored; changing one
would silently not apply or break the restored state, so it is refused by name, with the run's
value and the new one.

:func:`resume_differences` lists what a request changes, :func:`resumed_config` applies the
resumable part and refuses the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from musplit.config.base import deep_merge
from musplit.config.run import Config
from musplit.errors import ConfigError

__all__ = ["RESUMABLE", "resume_differences", "resumed_config"]

#: Settings (dotted paths; a section names all of its fields) a resumed run may change.
RESUMABLE = ("name", "version", "train.max_steps", "train.max_epochs", "train.val_every_steps",
             "train.num_workers", "train.accelerator", "train.devices", "train.strategy",
             "train.num_nodes", "predict")


def _resumable(path: str) -> bool:
    return any(path == r or path.startswith(r + ".") for r in RESUMABLE)


def resume_differences(stored: Mapping[str, Any], requested: Mapping[str, Any],
                       prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, stored value, requested value)`` of every setting that ``requested``
    (a nested dict, all of a config or only some settings) gives another value than
    ``stored`` (a config's JSON dump). Sections are compared field by field."""
    out = []
    for key, new in requested.items():
        path = f"{prefix}{key}"
        old = stored.get(key) if isinstance(stored, Mapping) else None
        if isinstance(new, Mapping) and isinstance(old, Mapping):
            out.extend(resume_differences(old, new, prefix=f"{path}."))
        elif new != old:
            out.append((path, old, new))
    return out


def _show(value: Any) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def resumed_config(stored: Config, requested: Mapping[str, Any], *, where: str,
                   flag_names: Mapping[str, str] | None = None) -> Config:
    """``stored`` with the resumable settings of ``requested`` applied.

    Parameters
    ----------
    stored : Config
        The config of the run being resumed.
    requested : dict
        Nested settings asked for now: a whole config's dump or only some settings.
    where : str
        The run (folder or file), for the message.
    flag_names : dict, optional
        Dotted path -> command-line flag, named in the message next to the setting.

    Raises
    ------
    ConfigError
        One line naming every setting that cannot change, with both values.
    """
    diffs = resume_differences(stored.model_dump(mode="json"), requested)
    refused = [d for d in diffs if not _resumable(d[0])]
    if refused:
        names = flag_names or {}
        parts = []
        for path, old, new in refused:
            flag = f" ({names[path]})" if path in names else ""
            parts.append(f"{path}{flag}: the run has {_show(old)}, this asks for {_show(new)}")
        raise ConfigError(
            f"--resume cannot change the settings a run was built with ({where}): "
            f"{'; '.join(parts)}; start a new run (another --out) to change them. A resumed run "
            "may change max_steps, max_epochs, val_every_steps, num_workers, where it trains "
            "(accelerator, devices, strategy, num_nodes) and the predict settings"
        )
    if not diffs:
        return stored
    changes: dict = {}
    for path, _, new in diffs:
        node = changes
        *heads, last = path.split(".")
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = new
    return Config.validated(deep_merge(stored.model_dump(mode="json"), changes),
                            source=f"resumed run {where}")
