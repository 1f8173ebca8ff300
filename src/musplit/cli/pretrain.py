"""``musplit pretrain``: label-free pre-training (docs/pretraining.md, "µSplit pre-training").

Writes ``OUT/pretrained.ckpt`` (weights-only loadable; config, data-manifest hash, key map and
loss log inside), ``OUT/pretrain_config.yaml`` and ``OUT/pretrain_log.csv``, each atomically.
``musplit train --init-from OUT/pretrained.ckpt`` then starts µSplit training from it.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import yaml

from musplit.cli.aliases import renamed
from musplit.cli.outputs import write_text
from musplit.errors import InputError

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.

CHECKPOINT = "pretrained.ckpt"


def _load_images(data: str, axes: str | None, channel: int | None, mix: bool) -> np.ndarray:
    """``(N, H, W)`` float32 frames from a TIFF/Zarr/npy file."""
    from musplit.data.io import load_image  # tifffile, zarr

    arr = load_image(data, axes)  # (N, H, W, C)
    c = arr.shape[-1]
    if channel is not None:
        if not 0 <= channel < c:
            raise InputError(f"--channel {channel} does not exist: {data} has {c} channel(s)")
        return arr[..., channel]
    if c == 1:
        return arr[..., 0]
    if mix:
        return arr.mean(axis=-1, dtype=np.float32)  # the µSplit input: the channel average
    raise InputError(f"{data} has {c} channels: choose one with --channel K, or --mix-channels "
                     "to pre-train on their average (the superimposed input)")


def _synthetic_images(synthetic: str, frames: int, seed: int, size: int | None
                      ) -> tuple[np.ndarray, str]:
    """``(N, H, W)`` frames of a synthetic-cells preset and the data source recorded."""
    from musplit.detect.presets import PRESETS  # scipy
    from musplit.detect.simulator import generate

    if synthetic not in PRESETS:
        raise InputError(f"unknown synthetic preset {synthetic!r}; choose one of: "
                         f"{', '.join(sorted(PRESETS))}")
    images, _ = generate(synthetic, frames, seed, size=size)
    return images, f"synthetic:{synthetic}:{frames}:{seed}:{size}"


def _usplit_model(preset_name: str, config_path: Path | None, patch: int | None) -> dict:
    from musplit.config import Config, preset  # pydantic, torch

    cfg = Config.from_yaml(config_path) if config_path else preset(preset_name)
    model = cfg.model.model_dump(mode="json")
    if patch is not None:
        model["patch"] = patch
    return model


def _pretrain_config(config_path: Path | None, *, model_name, objective, colormap, mask_p,
                     scope, batch_size, lr, image_size, steps, epochs, mode, seed, preset_name,
                     usplit_config, patch):
    """The validated PretrainConfig of the flags over ``--config`` (when given): a YAML
    config keeps its own model, objective and mode; the other flags override it."""
    from musplit.config import read_yaml_mapping  # pydantic, torch
    from musplit.pretrain.config import validated  # pydantic
    from musplit.pretrain.objectives import default_mask  # torch
    from musplit.pretrain.pretext_config import PretrainConfig  # torch

    if config_path is not None:
        base = read_yaml_mapping(config_path)
    else:
        base = {}
    cfg = dict(base)
    cfg["model"] = model_name if config_path is None else cfg.get("model", model_name)
    pretext = dict(cfg.get("pretext") or {})
    pretext["objective"] = objective if config_path is None else pretext.get("objective",
                                                                              objective)
    if colormap is not None:
        pretext["colormap"] = {"name": colormap}
    if mask_p is not None:
        mask = dict(pretext.get("mask") or default_mask(pretext["objective"], cfg["model"]))
        if mask.get("kind") != "padded":
            raise InputError(f"--mask-p applies to padded masks; objective "
                             f"{pretext['objective']} on {cfg['model']} uses "
                             f"{mask.get('kind')!r} masks")
        mask["p"] = mask_p
        pretext["mask"] = mask
    cfg["pretext"] = pretext
    for key, val in (("scope", scope), ("batch_size", batch_size), ("lr", lr),
                     ("image_size", image_size), ("steps", steps), ("epochs", epochs)):
        if val is not None:
            cfg[key] = val
    cfg["mode"] = mode if config_path is None else cfg.get("mode", mode)
    cfg["seed"] = seed
    if cfg["model"] == "usplit_encoder" and "usplit" not in cfg:
        cfg["usplit"] = _usplit_model(preset_name, usplit_config, patch)
    elif patch is not None or usplit_config is not None:
        raise InputError("--patch and --usplit-config apply to --model usplit_encoder")
    config = validated(PretrainConfig, cfg, source="pretrain config")
    if config.steps is None and config.epochs is None and objective != "random":
        raise InputError("give --max-steps N or --epochs N")
    return config


@click.command("pretrain")
@renamed("--steps", "--max-steps", type=click.IntRange(min=1))
@renamed("--device", "--devices")
@click.option("--objective", type=click.Choice(["pcolor", "masked_gray", "mae", "edge",
                                                "simclr", "random"]),
              default="pcolor", show_default=True, help="Pretext objective.")
@click.option("--scope", type=click.Choice(["encoder", "network"]), default=None,
              help="What is pre-trained and transferred (default: the model's).")
@click.option("--model", "model_name",
              type=click.Choice(["ccf_vit", "ccf_cnn", "usplit_encoder"]),
              default="usplit_encoder", show_default=True)
@click.option("--data", "data_path", default=None,
              help="Unlabelled frames (TIFF, Zarr, npy; default: none, give --data or "
                   "--synthetic).")
@click.option("--axes", default=None, help="Axes of --data (default: metadata).")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Channel of --data to use (default: the only one).")
@click.option("--mix-channels", is_flag=True, help="Use the average of all channels of --data.")
@click.option("--synthetic", "synthetic", default=None,
              help="Synthetic preset instead of --data (e.g. sim_nuclei; default: none).")
@click.option("--frames", type=click.IntRange(min=1), default=32, show_default=True,
              help="Frames of --synthetic.")
@click.option("--size", type=click.IntRange(min=16), default=None,
              help="Frame side of --synthetic (default: the preset's).")
@click.option("--max-steps", "steps", type=click.IntRange(min=1), default=None,
              help="Optimiser steps (or --epochs; default: the config's).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Passes over the data (instead of --max-steps; default: none).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size (default: the model's, 16 for the ccf models).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="AdamW learning rate at batch 16 (scaled with the batch; default: 1e-4).")
@click.option("--image-size", type=click.IntRange(min=8), default=None,
              help="ccf models: frame side (default 384).")
@click.option("--preset", "preset_name", default="cpu-small", show_default=True,
              help="usplit_encoder: the musplit training preset whose model is pre-trained.")
@click.option("--usplit-config", type=click.Path(path_type=Path), default=None,
              help="usplit_encoder: a musplit training config (YAML) whose model is used "
                   "(default: the --preset's).")
@click.option("--patch", type=click.IntRange(min=4), default=None,
              help="usplit_encoder: patch size (default: the preset's).")
@click.option("--colormap", type=click.Choice(["nipy_spectral", "rainbow", "seismic", "viridis",
                                               "gray"]), default=None,
              help="Pseudo-colour map of pcolor (default: nipy_spectral).")
@click.option("--mask-p", type=click.FloatRange(0, 1), default=None,
              help="Padded-mask probability p (default 0.5; 0.766 covers a third of the frame).")
@click.option("--mode", type=click.Choice(["clean", "reference"]), default="clean",
              show_default=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="A PretrainConfig YAML; the flags above override it (default: none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--devices", "device", default=None,
              help="cpu, cuda, cuda:1, ... (default: CUDA when available).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint in --out.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def pretrain(objective, scope, model_name, data_path, axes, channel, mix_channels, synthetic,
             frames, size, steps, epochs, batch_size, lr, image_size, preset_name, usplit_config,
             patch, colormap, mask_p, mode, config_path, seed, device, out_dir, overwrite,
             no_progress):
    """Label-free pre-training by pseudo-colourising masked cells (PCMC) or a baseline."""
    from musplit.pretrain.train import pretrain as run_pretrain  # torch

    ckpt = out_dir / CHECKPOINT
    if ckpt.exists() and not overwrite:
        raise InputError(f"{ckpt} exists: choose another --out or pass --overwrite")
    if (data_path is None) == (synthetic is None):
        raise InputError("give exactly one of --data PATH and --synthetic PRESET")
    config = _pretrain_config(
        config_path, model_name=model_name, objective=objective, colormap=colormap,
        mask_p=mask_p, scope=scope, batch_size=batch_size, lr=lr, image_size=image_size,
        steps=steps, epochs=epochs, mode=mode, seed=seed, preset_name=preset_name,
        usplit_config=usplit_config, patch=patch)
    if synthetic is not None:
        images, source = _synthetic_images(synthetic, frames, seed, size)
    else:
        images, source = _load_images(data_path, axes, channel, mix_channels), str(data_path)
    result = run_pretrain(config, images, steps=config.steps, seed=seed,
                          progress=not no_progress, device=device)
    result.extra["data_source"] = source
    out_dir.mkdir(parents=True, exist_ok=True)
    path = result.save(ckpt)
    write_text(out_dir / "pretrain_config.yaml",
               yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    write_text(out_dir / "pretrain_log.csv",
               "step,loss\n" + "".join(f"{i},{v:.6g}\n" for i, v in enumerate(result.log)))
    last = f"{result.log[-1]:.4g}" if result.log else "-"
    click.echo(f"pre-trained {config.model} ({config.pretext.objective}, scope {config.scope}) "
               f"for {result.steps} steps, last loss {last}")
    click.echo(f"wrote {path}")


__all__ = ["CHECKPOINT", "pretrain"]
