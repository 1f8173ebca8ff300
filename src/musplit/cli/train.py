"""``musplit train``: parse the flags, build the run config (musplit.config.flags), train."""

from __future__ import annotations

from pathlib import Path

import click

from musplit.cli.options import int_list, range_list
from musplit.cli.outputs import prepare_run_dir
from musplit.kinds import KINDS

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.


@click.command("train")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML config: the settings it gives override the preset's; flags below "
                   "override both (default: none).")
@click.option("--preset", "preset_name", default=None,
              help="The preset the settings start from (default cpu-small; --config and the "
                   "flags override it): cpu-small, cpu-real (cpu-small for real "
                   "acquisitions: input = sum of the channels, no clip, flips and rotations, "
                   "predictions that add up to the input), paper-pavia, paper-hagen, "
                   "paper-critters-n0, paper-critters-n25.")
@click.option("--data", "data_path", default=None,
              help="Multi-channel training data: a file, a folder or glob of files, or "
                   "comma-separated files (one or more frames each, sizes may differ; "
                   "default: none, give --data, --channel-files or --critters).")
@click.option("--channel-files", default=None,
              help="Comma-separated files (or one folder of files), one per channel "
                   "(instead of --data; default: none).")
@click.option("--split", "split", default=None,
              help="default (frames, or held-out regions when there are too few frames), "
                   "spatial (always regions), hagen, or a split.json file.  [default: default]")
@click.option("--axes", default=None, help="Axes of the data, e.g. SYXC (default: metadata).")
@click.option("--channels", default=None,
              help="Channel indices to separate, e.g. 2,3 (default: all).")
@click.option("--critters", type=click.Choice(["n0", "n25"]), default=None,
              help="Train on built-in SinosoidalCritters instead of a file (default: none).")
@click.option("--model", "kind", type=click.Choice(list(KINDS)), default=None,
              help="hvae/hae: the µSplit LadderVAE; unet, ca_unet (Context-Aware U-Net), "
                   "bravenet: the paper's baselines (default: the preset's, hvae).")
@click.option("--lc", type=click.Choice(["none", "lean", "regular", "deep"]), default=None,
              help="Lateral context (unet: none or regular; default: the preset's, lean).")
@click.option("--filters", type=click.IntRange(min=1), default=None,
              help="Trunk width (LadderVAE) or first-level width (baselines; default: the "
                   "preset's, 32).")
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="Baselines: U-Net Down blocks (default 5) or BRAVE-NET levels (default 4).")
@click.option("--patch", type=int, default=None,
              help="Training patch side P in pixels (default: the preset's, 64).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Optimiser steps (default: the preset's, 2000).")
@click.option("--max-epochs", type=click.IntRange(min=1), default=None,
              help="Stop after this many passes over the data (default: none, --max-steps).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Patches per step (default: the preset's, 16).")
@click.option("--val-every", type=click.IntRange(min=1), default=None,
              help="Validate every N steps (default: every epoch).")
@click.option("--precision",
              type=click.Choice(["auto", "fp32", "bf16", "32", "bf16-mixed", "16-mixed"]),
              default=None,
              help="Training arithmetic: auto (the default) trains with bf16 autocast where the "
                   "hardware has bf16 arithmetic (AVX512-BF16/AMX CPUs, Ampere or later GPUs) "
                   "and in fp32 elsewhere; fp32 always works. The run log says which was used.")
@click.option("--seed", type=int, default=None, help="Random seed (default: the preset's, 0).")
@click.option("--loss", type=click.Choice(["usplit", "denoisplit", "denoisplit_usplit"]),
              default=None,
              help="usplit: clean targets (Gaussian split ELBO); denoisplit: noisy targets "
                   "(noise-model likelihood + denoiSplit KL); denoisplit_usplit: noisy targets, "
                   "MicroSplit's 0.9/0.1 mix of both (default: the preset's, usplit).")
@click.option("--noise-models", "noise_models", default=None,
              help="Comma-separated noise-model files (musplit noise-model fit), one per "
                   "channel in channel order; needed by the denoisplit losses (default: none).")
@click.option("--alpha-ranges", "alpha_ranges", default=None,
              help="Train for an unknown mixing ratio: one lo:hi per channel, e.g. "
                   "0.2:0.8,0.2:0.8; each training patch mixes its channels with weights "
                   "drawn uniformly from these ranges, normalised to sum 1, and prediction "
                   "assumes their midpoints (default: none, the fixed weights data.alpha).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Run folder (default runs/<name>).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its resume.ckpt. --max-steps/--max-epochs "
                   "(e.g. larger, to train longer), --val-every and where it trains "
                   "(--accelerator, --devices, --strategy, --num-nodes) may change; a change to "
                   "the model, data, patch, channels, batch size, precision, seed or loss is "
                   "refused.")
@click.option("--overwrite", is_flag=True,
              help="Train into an --out folder that holds files: the previous run's "
                   "checkpoints, config, split and logs there are deleted first.")
@click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu", "cuda", "mps", "tpu"]),
              default=None,
              help="What trains: auto (a GPU when there is one), cpu, gpu (default: the "
                   "config's, auto).")
@click.option("--devices", default=None,
              help="Processes per node, each on its own device with its own --batch-size "
                   "patches: a count such as 4, GPU indices such as 0,1, or auto (every GPU; "
                   "default: the config's, 1).")
@click.option("--strategy", default=None,
              help="Lightning strategy: ddp for data-parallel training on several devices or "
                   "nodes, ddp_spawn, ddp_find_unused_parameters_true (default: the "
                   "config's, auto).")
@click.option("--num-nodes", "num_nodes", type=click.IntRange(min=1), default=None,
              help="Machines of a data-parallel run; on SLURM the job's --nodes, one task per "
                   "device (default: the config's, 1).")
@click.option("--init-from", "init_from", default=None,
              help="Start from the encoder of a pre-training checkpoint (musplit pretrain; "
                   "default: none, random initialisation).")
@click.option("--logger", "logger", type=click.Choice(["csv", "tensorboard"]), default="csv",
              show_default=True,
              help="logs/metrics.csv is always written (and kept whole across resumes); "
                   "tensorboard adds a TensorBoard log in logs/tensorboard (needs "
                   "pip install tensorboard).")
def train(config_path, preset_name, data_path, channel_files, split, axes, channels, critters,
          kind, lc, filters, depth, patch, max_steps, max_epochs, batch_size, val_every,
          precision, seed, out_dir, resume, devices, strategy, init_from=None, logger="csv",
          overwrite=False, loss=None, noise_models=None, alpha_ranges=None, accelerator=None,
          num_nodes=None):
    """Train a model; the run folder gets the config, split, logs and checkpoints.

    \b
    Settings come from, lowest first:
      1. the preset (--preset, default cpu-small),
      2. the YAML file (--config): only the settings it gives,
      3. the flags.
    With --resume they come from the run's config.yaml; the flags may change only how long
    and how often it goes on (--max-steps, --max-epochs, --val-every) and where it trains
    (--accelerator, --devices, --strategy, --num-nodes).
    Progress is shown in steps over the whole run: a bar on a terminal, plain lines when
    stderr is a file.
    \b
    Data-parallel training: --devices 4 --strategy ddp (one process per device, each with
    --batch-size patches); on a SLURM cluster run it under srun with --ntasks-per-node equal
    to --devices and --num-nodes equal to the job's nodes.
    """
    from musplit.config.flags import train_config, train_overrides  # pydantic, torch
    from musplit.training import train as run_training  # lightning
    from musplit.training import writes_run_folder

    over = train_overrides(
        data_path=data_path, split=split, channel_files=channel_files, critters=critters,
        axes=axes, channels=int_list(channels, "--channels") if channels else None,
        patch=patch, kind=kind, lc=lc, filters=filters, depth=depth, preset_name=preset_name,
        max_steps=max_steps, max_epochs=max_epochs, batch_size=batch_size,
        val_every=val_every, precision=precision, seed=seed, init_from=init_from, loss=loss,
        noise_models=noise_models,
        alpha_ranges=range_list(alpha_ranges, "--alpha-ranges"), accelerator=accelerator,
        devices=devices, strategy=strategy, num_nodes=num_nodes)
    cfg = train_config(over, config_path=config_path, preset_name=preset_name, resume=resume,
                       out_dir=out_dir)
    out_dir = Path(out_dir or Path("runs") / cfg.name).expanduser()
    # A data-parallel run starts this command once per process (Lightning's launcher, srun):
    # only the first process checks and clears the run folder, writes it and prints.
    writer = writes_run_folder()
    if writer:
        # The run folder is checked (writable, not a file, not a previous run) before any work.
        out_dir = prepare_run_dir(out_dir, overwrite=overwrite, resume=resume)
    best = run_training(cfg, out_dir, resume=resume, echo=click.echo if writer else None,
                        logger=logger, overwrite=overwrite)
    if writer:
        click.echo(f"best checkpoint: {best}")


__all__ = ["train"]
