"""``musplit noise-model fit|show``: fit a pixel noise model of one channel, describe a file
(docs/noise_models.md, "Command line")."""

from __future__ import annotations

import math
from pathlib import Path

import click

from musplit.errors import InputError

# Lazy-import policy (musplit.cli): modules that load torch, pydantic configs, tifffile/zarr or
# scipy are imported inside the commands, so that ``musplit --help`` starts fast.

#: Spelled out here (musplit.noise loads torch); the tests check they match.
BOOTSTRAP_NAMES = ("gaussian", "mean")
DEFAULTS = {"iterations": 400, "batch_size": 20_000, "max_pairs": 1_000_000}


@click.group("noise-model")
def noise_model() -> None:
    """Pixel noise models p(observation | signal), one file per channel."""


def _check_out(path: Path, suffix: str, flag: str, overwrite: bool, inputs) -> Path:
    from musplit.files import check_output

    if path.suffix.lower() != suffix:
        raise InputError(f"{flag} {path}: must end in {suffix}")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory")
    return check_output(path, overwrite, inputs, "tiff")


def _read_channel(path: Path, axes: str | None, channel: int, what: str):
    """``(N, H, W)`` float32 of one channel and its name; a single-channel file gives its only
    channel whatever ``channel`` is."""
    from musplit.data.io import open_image  # tifffile, zarr

    src = open_image(path, axes=axes)
    try:
        c = 0 if src.n_channels == 1 else channel
        if c >= src.n_channels:
            raise InputError(f"{what} {path} has {src.n_channels} channels; --channel {channel} "
                             "is out of range")
        data = src.read(channels=[c])[..., 0]
        name = src.channel_names[c] if src.channel_names else f"ch{channel}"
    finally:
        src.close()
    return data, name


@noise_model.command("fit")
@click.option("--noisy", "noisy_path", type=click.Path(path_type=Path), required=True,
              help="Raw noisy frames (calibration series or the training data).")
@click.option("--clean", "clean_path", type=click.Path(path_type=Path), default=None,
              help="Clean estimate of the same field of view: one frame (the average of a "
                   "static series) or one frame per group of noisy frames; noisy frame i pairs "
                   "with clean frame i // (N_noisy / N_clean) (default: none, then --bootstrap "
                   "is needed).")
@click.option("--bootstrap", type=click.Choice(BOOTSTRAP_NAMES), default=None,
              help="Without --clean: estimate the signal from --noisy itself, by a Gaussian "
                   "filter of every frame or the mean of a static series (default: off).")
@click.option("--bootstrap-sigma", type=click.FloatRange(min=0, min_open=True), default=2.0,
              help="Gaussian filter width in pixels for --bootstrap gaussian.")
@click.option("--channel", type=click.IntRange(min=0), default=0,
              help="Channel of --noisy (and of --clean when it has several).")
@click.option("--axes", default=None, help="Axes of --noisy (default: metadata).")
@click.option("--clean-axes", default=None, help="Axes of --clean (default: metadata).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Noise-model file to write (.npz), e.g. nm_ch0.npz.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Also write a figure of the model against the data, a .png (default: none).")
@click.option("--n-gaussian", type=click.IntRange(min=1), default=3,
              help="Gaussian components K.")
@click.option("--n-coeff", type=click.IntRange(min=1), default=2,
              help="Polynomial coefficients D (2: parameters linear in the signal).")
@click.option("--min-variance", type=click.FloatRange(min=0), default=None,
              help="Variance floor in squared intensity units (default: the square of 0.1 "
                   "percent of the signal range).")
@click.option("--lower-clip", type=click.FloatRange(0, 100), default=0.0,
              help="Leave out pixels whose signal is below this percentile.")
@click.option("--upper-clip", type=click.FloatRange(0, 100), default=100.0,
              help="Leave out pixels whose signal is above this percentile.")
@click.option("--iterations", type=click.IntRange(min=1), default=DEFAULTS["iterations"],
              help="Adam steps, one minibatch each.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS["batch_size"],
              help="Pixel pairs per step.")
@click.option("--max-pairs", type=click.IntRange(min=2), default=DEFAULTS["max_pairs"],
              help="Draw at most about this many pixel pairs from the data.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=0)
@click.option("--threads", type=click.IntRange(min=1), default=1,
              help="CPU threads of the fit (small minibatches gain little from more).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def fit_cmd(noisy_path, clean_path, bootstrap, bootstrap_sigma, channel, axes, clean_axes,
            out_path, plot_path, n_gaussian, n_coeff, min_variance, lower_clip, upper_clip,
            iterations, batch_size, max_pairs, lr, seed, threads, progress, overwrite):
    """Fit the noise model of one channel from noisy frames and a clean estimate."""
    if (clean_path is None) == (bootstrap is None):
        raise InputError("give either --clean FILE or --bootstrap METHOD (not both)")
    inputs = [p for p in (noisy_path, clean_path) if p is not None]
    out = _check_out(out_path, ".npz", "--out", overwrite, inputs)
    plot = None if plot_path is None else _check_out(plot_path, ".png", "--plot", overwrite,
                                                     inputs)
    noisy, name = _read_channel(noisy_path, axes, channel, "--noisy")

    from musplit.noise import bootstrap_signal, fit_noise_model, save_noise_model  # torch

    if clean_path is None:
        clean = bootstrap_signal(noisy, bootstrap, bootstrap_sigma)
    else:
        clean, _ = _read_channel(clean_path, clean_axes, channel, "--clean")
    model = fit_noise_model(noisy, clean, n_gaussian=n_gaussian, n_coeff=n_coeff,
                            min_variance=min_variance, lower_clip=lower_clip,
                            upper_clip=upper_clip, iterations=iterations,
                            batch_size=batch_size, max_pairs=max_pairs, lr=lr, seed=seed,
                            channel_name=name, progress=progress, threads=threads)
    save_noise_model(model, out, overwrite=overwrite)
    click.echo(f"wrote {out}: channel '{name}', K={model.n_gaussian}, D={model.n_coeff}, signal "
               f"[{model.min_signal:.6g}, {model.max_signal:.6g}], variance floor "
               f"{model.min_variance:.6g}")
    click.echo(f"  {model.fit_report.summary()}")
    if plot is not None:
        from musplit.noise import plot_noise_model  # matplotlib

        plot_noise_model(model, noisy, clean, plot)
        click.echo(f"wrote {plot}")


@noise_model.command("show")
@click.argument("path", type=click.Path(path_type=Path))
def show_cmd(path: Path) -> None:
    """Print the parameters and fitted range of a noise-model file."""
    import torch

    from musplit.noise import load_noise_model

    m = load_noise_model(path)
    fmt = (f"musplit noise model, format {m.file_format_version}" if m.file_format_version
           else "noise model (reference file: no musplit fields)")
    click.echo(f"{path}: {fmt}")
    click.echo(f"  channel: {m.channel_name or 'not recorded'}")
    click.echo(f"  components K = {m.n_gaussian}, polynomial coefficients D = {m.n_coeff}")
    click.echo(f"  fitted signal range: [{m.min_signal:.6g}, {m.max_signal:.6g}]")
    if m.observation_range is not None:
        lo, hi = m.observation_range
        click.echo(f"  observations at fit: [{lo:.6g}, {hi:.6g}]")
    click.echo(f"  variance floor (min_sigma): {m.min_variance:.6g} (std "
               f"{math.sqrt(m.min_variance):.6g})")
    grid = torch.linspace(m.min_signal, m.max_signal, 5, dtype=torch.float64)
    _, var = m.moments(grid)
    click.echo("  noise std at signal " + ", ".join(
        f"{s:.4g}: {v:.4g}" for s, v in zip(grid.tolist(), var.sqrt().tolist(), strict=True)))
    w = m.weight.detach().double().numpy()
    k = m.n_gaussian
    for label, rows in (("mean", w[:k]), ("log-variance", w[k:2 * k]),
                        ("weight logit", w[2 * k:])):
        for i, row in enumerate(rows):
            click.echo(f"  {label:>12} k={i}: " + " ".join(f"{v:+.6g}" for v in row))


__all__ = ["noise_model"]
