"""``musplit train`` flags -> config overrides, and the run config they give.

:func:`train_overrides` is a pure function from the (already parsed) flag values to the nested
overrides dict that :func:`musplit.config.preset` and :meth:`musplit.config.Config.updated`
take; :func:`train_config` builds the run config from them. The command line
(``musplit.cli.train``) only parses and calls these. What each flag means is in
docs/design.md ("Command line").

A new run's settings come from, lowest first: the preset (``--preset``, default
:data:`DEFAULT_PRESET`), the YAML file (``--config``; only the settings it gives), then the
flags. Resuming (``--resume``) starts from the run's ``config.yaml`` instead and may change only
the settings :data:`musplit.config.resume.RESUMABLE` lists.

Two rules change more than the field a flag names:

- **Changing the model kind** (:func:`switch_kind`): ``--model`` moving between the LadderVAE
  and a baseline, or between baselines, resets the settings that depend on the kind to the new
  kind's defaults unless they are given too.
- **Deep-LC on a small CPU preset** (:func:`deep_lc_latents`): the presets in
  :data:`DEEP_LC_WIDENED_PRESETS` list four latent widths (four hierarchy levels), while
  Deep-LC uses eight levels (twice the Lean-LC hierarchy, docs/method.md, "Lateral
  Contextualisation"). With ``--lc deep`` and ``--preset`` naming one of them, the latent list
  becomes eight levels of the preset's width. The rule applies only when ``--preset`` is
  given by name, as it always has.
"""

from __future__ import annotations

from pathlib import Path

from musplit.config.base import deep_merge, read_yaml_mapping
from musplit.config.model import LADDER_KINDS, ModelConfig
from musplit.config.presets import RUN_PRESETS as PRESETS
from musplit.config.presets import preset
from musplit.config.resume import resumed_config
from musplit.config.run import Config
from musplit.errors import InputError

#: The preset used when neither ``--config`` nor ``--preset`` is given.
DEFAULT_PRESET = "cpu-small"

#: Presets whose four-level latent list is widened to eight levels for ``--lc deep``.
DEEP_LC_WIDENED_PRESETS = ("cpu-small", "cpu-real")

#: Deep-LC's number of hierarchy levels (docs/method.md, "Lateral Contextualisation").
DEEP_LC_LEVELS = 8

#: ``--critters`` names -> SinosoidalCritters connector length (pixels).
CRITTERS_CONNECTORS = {"n0": 0, "n25": 25}

#: Model settings that depend on the kind: reset when ``--model`` changes the kind.
KIND_DEPENDENT_MODEL_KEYS = ("lc", "filters", "z_dims", "depth", "scales", "dropout")


def deep_lc_latents(lc: str | None, preset_name: str | None) -> list[int] | None:
    """The ``z_dims`` the Deep-LC rule sets (see the module docstring), or None where it does
    not apply: ``lc`` is not ``"deep"`` or ``preset_name`` is not one of
    :data:`DEEP_LC_WIDENED_PRESETS`."""
    if lc != "deep" or preset_name not in DEEP_LC_WIDENED_PRESETS:
        return None
    width = PRESETS[preset_name]["model"]["z_dims"][0]
    return [width] * DEEP_LC_LEVELS


def critters_data(critters: str) -> dict:
    """The ``data.synthetic`` settings of ``--critters n0|n25`` (built-in SinosoidalCritters)."""
    return {"connector": CRITTERS_CONNECTORS.get(critters, 25)}


def train_overrides(*, data_path: str | None = None, split: str | None = None,
                    channel_files: str | None = None, critters: str | None = None,
                    axes: str | None = None, channels: list[int] | None = None,
                    patch: int | None = None, kind: str | None = None, lc: str | None = None,
                    filters: int | None = None, depth: int | None = None,
                    preset_name: str | None = None, max_steps: int | None = None,
                    max_epochs: int | None = None, batch_size: int | None = None,
                    val_every: int | None = None, precision: str | None = None,
                    seed: int | None = None, init_from: str | None = None,
                    loss: str | None = None, noise_models: str | None = None,
                    alpha_ranges: list[list[float]] | None = None,
                    accelerator: str | None = None, devices: int | str | None = None,
                    strategy: str | None = None, num_nodes: int | None = None) -> dict:
    """The overrides ``{"data": {...}, "model": {...}, "train": {...}}`` of ``musplit train``'s
    flags (None / empty: not given). ``channels`` is already parsed into a list of ints (None:
    not given; the command passes None for an empty ``--channels ""``); ``noise_models`` is
    the comma-separated ``--noise-models`` list; ``alpha_ranges`` the parsed ``--alpha-ranges``
    (one ``[lo, hi]`` per channel).

    Pure: reads nothing but :data:`musplit.config.PRESETS` (for the Deep-LC rule).
    """
    over: dict = {"data": {}, "model": {}, "train": {}}
    if data_path:
        parts = [p.strip() for p in data_path.split(",") if p.strip()]
        over["data"]["path"] = parts[0] if len(parts) == 1 else parts
    if split:
        over["data"]["split"] = split
    if channel_files:
        over["data"]["channel_paths"] = [p.strip() for p in channel_files.split(",")]
    if critters:
        over["data"]["synthetic"] = critters_data(critters)
        over["data"]["pad"] = "zeros"
    if axes:
        over["data"]["axes"] = axes
    if channels is not None:
        over["data"]["channels"] = channels
    if patch:
        over["data"]["patch"] = patch
        over["model"]["patch"] = patch
    for key, val in (("kind", kind), ("lc", lc), ("filters", filters), ("depth", depth)):
        if val is not None:
            over["model"][key] = val
    z_dims = deep_lc_latents(lc, preset_name)
    if z_dims is not None:
        over["model"]["z_dims"] = z_dims
    for key, val in (("max_steps", max_steps), ("max_epochs", max_epochs),
                     ("batch_size", batch_size), ("val_every_steps", val_every),
                     ("precision", precision), ("seed", seed), ("init_from", init_from),
                     ("loss", loss), ("accelerator", accelerator), ("devices", devices),
                     ("strategy", strategy), ("num_nodes", num_nodes)):
        if val is not None:
            over["train"][key] = val
    if noise_models:
        over["train"]["noise_models"] = [p.strip() for p in noise_models.split(",")]
    if alpha_ranges is not None:
        over["data"]["alpha_ranges"] = [list(r) for r in alpha_ranges]
    return over


def switch_kind(over: dict, base_kind: str) -> None:
    """``--model`` moving between the LadderVAE and a baseline (or between baselines): the
    settings that depend on the kind go back to the new kind's defaults, unless given.

    Changes ``over`` in place.
    """
    kind = over["model"].get("kind")
    if kind is None or kind == base_kind or (kind in LADDER_KINDS and base_kind in LADDER_KINDS):
        return
    for key in KIND_DEPENDENT_MODEL_KEYS:
        over["model"].setdefault(key, None)
    over["data"].setdefault("scales", None)


#: Config settings -> the ``musplit train`` flag that sets them (named in messages).
FLAG_OF_SETTING = {
    "data.path": "--data", "data.channel_paths": "--channel-files", "data.split": "--split",
    "data.axes": "--axes", "data.channels": "--channels", "data.synthetic": "--critters",
    "data.synthetic.connector": "--critters", "data.pad": "--critters",
    "data.patch": "--patch", "model.patch": "--patch", "model.kind": "--model",
    "model.lc": "--lc", "model.filters": "--filters", "model.depth": "--depth",
    "model.z_dims": "--lc", "train.max_steps": "--max-steps", "train.max_epochs": "--max-epochs",
    "train.batch_size": "--batch-size", "train.val_every_steps": "--val-every",
    "train.precision": "--precision", "train.seed": "--seed", "train.init_from": "--init-from",
    "train.loss": "--loss", "train.noise_models": "--noise-models",
    "data.alpha_ranges": "--alpha-ranges", "train.accelerator": "--accelerator",
    "train.devices": "--devices", "train.strategy": "--strategy",
    "train.num_nodes": "--num-nodes",
}


def _given(over: dict) -> dict:
    """The sections of ``over`` that give something."""
    return {k: v for k, v in over.items() if v}


def _base(preset_name: str | None) -> tuple[str, dict]:
    """The preset a run starts from (default :data:`DEFAULT_PRESET`) and its overrides."""
    name = preset_name or DEFAULT_PRESET
    if name not in PRESETS:
        preset(name)  # the one "unknown preset" message
    return name, deep_merge({}, PRESETS[name])


def _kind_of(settings: dict) -> str:
    return settings.get("model", {}).get("kind", ModelConfig.model_fields["kind"].default)


def _fresh_config(over: dict, config_path: Path | None, preset_name: str | None) -> Config:
    """The config of a new run: the preset, then the YAML ``config_path`` over it, then
    ``over`` (the flags) over both."""
    name, merged = _base(preset_name)
    if config_path is not None:
        yaml_over = read_yaml_mapping(config_path)
        model, data = yaml_over.get("model"), yaml_over.get("data", {})
        if isinstance(model, dict) and isinstance(data, dict):
            # The YAML choosing another kind than the preset's works as --model does.
            yaml_over = {**yaml_over, "model": dict(model), "data": dict(data)}
            switch_kind(yaml_over, _kind_of(merged))
        merged = deep_merge(merged, yaml_over)
    switch_kind(over, _kind_of(merged))
    merged = deep_merge(merged, _given(over))
    source = str(config_path) if config_path is not None else f"preset {name}"
    return Config.validated(merged, source=source)


def train_config(over: dict, *, config_path: Path | None = None,
                 preset_name: str | None = None, resume: bool = False,
                 out_dir: Path | None = None) -> Config:
    """The run config of ``musplit train``.

    A new run starts from the preset ``preset_name`` (default :data:`DEFAULT_PRESET`); the
    YAML ``config_path`` overrides it, and ``over`` (from :func:`train_overrides`) overrides
    both. Resuming the run in ``out_dir`` starts from its ``config.yaml``: what the command
    asks for (the flags; the whole config when ``--config`` or ``--preset`` is given) may
    change only the settings :data:`musplit.config.resume.RESUMABLE` lists (e.g. a larger
    ``--max-steps`` trains longer); any other change is refused by name.

    Raises :class:`musplit.errors.InputError` when the result names no training data, and
    :class:`musplit.errors.ConfigError` when a resume asks to change a fixed setting.
    """
    stored = out_dir / "config.yaml" if resume and out_dir is not None else None
    if stored is not None and stored.is_file():
        if config_path is not None or preset_name is not None:
            requested = _fresh_config(over, config_path, preset_name).model_dump(mode="json")
        else:
            requested = _given(over)
        cfg = resumed_config(Config.from_yaml(stored), requested, where=str(out_dir),
                             flag_names=FLAG_OF_SETTING)
    else:
        cfg = _fresh_config(over, config_path, preset_name)
    if cfg.data.path is None and cfg.data.channel_paths is None and cfg.data.synthetic is None:
        raise InputError("no training data: give --data FILE, --channel-files A,B, "
                         "--critters n0|n25 or a --config that names the data")
    return cfg


__all__ = [
    "CRITTERS_CONNECTORS",
    "DEEP_LC_LEVELS",
    "DEEP_LC_WIDENED_PRESETS",
    "DEFAULT_PRESET",
    "FLAG_OF_SETTING",
    "critters_data",
    "deep_lc_latents",
    "switch_kind",
    "train_config",
    "train_overrides",
]
