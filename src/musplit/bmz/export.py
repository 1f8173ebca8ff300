"""``musplit export-bmz``: a checkpoint as a BioImage Model Zoo (bioimageio 0.5) model package.

The package holds one TorchScript model of a fixed image size (:class:`FixedSizeSplitter`,
docs/bmz.md "Design") whose input is the raw superimposed image and whose output is the split in
intensity units: a Model Zoo consumer gets musplit's inner-padded tiled prediction with lateral
context (docs/tiling.md, docs/data.md) without knowing about either. The output is the
deterministic one, the top-down pass at the posterior means (``sample_mode="mean"``). The
reproducibility tolerance in the rdf is set from the measured difference between the traced
model and :func:`musplit.predict.predict_image` on the test input (docs/bmz.md, "Tolerance").

The rdf is built with ``bioimageio.spec`` (``pip install 'musplit[bmz]'``) and saved with
``save_bioimageio_package``; ``bioimageio.core.test_model`` checks the result.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from musplit.errors import InputError

log = logging.getLogger(__name__)

CITATION = ("Ashesh, A. Krull, M. Di Sante, F. S. Pasqualini, F. Jug. µSplit: image "
            "decomposition for fluorescence microscopy. ICCV 2023 (arXiv:2211.12872)")
CITATION_DOI = "10.48550/arXiv.2211.12872"
#: The tolerance is this many times the measured difference, and at least FLOOR times the
#: output's range (float32 rounding of a different CPU or thread count).
TOLERANCE_FACTOR = 10.0
TOLERANCE_FLOOR = 1e-5


def _refuse(what: str, why: str) -> InputError:
    return InputError(f"cannot export {what} to the BioImage Model Zoo: {why}")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _test_image(splitter, size: int, image) -> np.ndarray:
    """The test input: the centre ``size x size`` crop of ``image``, or a fresh frame of the
    synthetic training data mixed as in training (docs/method.md, "Superposition model")."""
    if image is not None:
        if isinstance(image, (str, os.PathLike)):
            from musplit.data.io import open_image

            src = open_image(image)
            if src.n_channels != 1:
                raise InputError(f"{image}: {src.n_channels} channels; the test image must "
                                 "have one superimposed channel")
            arr = src.read()[..., 0]
        else:
            arr = np.asarray(image)
        arr = arr[0] if arr.ndim == 3 else arr
        if arr.ndim != 2:
            raise InputError(f"the test image must be 2-D (H, W), got shape {arr.shape}")
        h, w = arr.shape
        if h < size or w < size:
            raise InputError(f"the test image is {h}x{w}, smaller than the export size {size}")
        y, x = (h - size) // 2, (w - size) // 2
        return np.ascontiguousarray(arr[y : y + size, x : x + size], dtype=np.float32)
    syn = splitter.config.data.synthetic
    if syn is None:
        raise InputError("the model was trained on files: give a test image (--image) of at "
                         f"least {size}x{size} pixels")
    from musplit.data.synthetic import generate_critters

    t = generate_critters(1, size=size, connector=syn.connector, seed=syn.seed + 1000,
                          pairing=syn.pairing)[0].astype(np.float32)  # (H, W, C)
    st = splitter.stats
    w = np.ones(st.n_channels) if st.input_is_sum else np.asarray(st.alpha, dtype=float)
    return (t @ w.astype(np.float32)).astype(np.float32)


def _data_description(config) -> str:
    """The training data as the checkpoint's config records it."""
    d = config.data
    names = ", ".join(d.channel_names) if d.channel_names else None
    if d.synthetic is not None:
        s = d.synthetic
        text = (f"synthetic 'critters' (musplit generate): {s.frames} frames of "
                f"{s.size}x{s.size} pixels, connector={s.connector}, seed={s.seed}")
    elif d.channel_paths is not None:
        text = "one file per structure: " + ", ".join(str(p) for p in d.channel_paths)
    else:
        paths = d.path if isinstance(d.path, list) else [d.path]
        text = "multichannel file(s): " + ", ".join(str(p) for p in paths)
        if d.channels is not None:
            text += f" (channels {d.channels})"
    if names:
        text += f"; structures: {names}"
    mix = "their sum" if d.input_is_sum else (
        f"sum of alpha_k x_k with alpha = {d.alpha}" if d.alpha else "their average")
    return (f"{text}. Input: {mix}, clipped at the {d.clip_quantile} quantile; patches of "
            f"{d.patch} pixels with {config.model.scales} lateral-context scales "
            f"(pad={d.pad}).")


def _check_exportable(splitter, name: str) -> None:
    """One line saying which variant cannot be exported faithfully, and why."""
    from musplit.models.protocol import is_deterministic

    cfg = splitter.config
    what = f"{name} ({cfg.model.kind}, lc={cfg.model.lc})"
    if splitter.stats is None:
        raise _refuse(what, "the checkpoint has no normalisation statistics")
    if cfg.data.lc_alignment != "exact":
        raise _refuse(what, "floor LC alignment (reference checkpoints) is not traced; only "
                      "exact alignment is")
    if cfg.predict.consistent:
        raise _refuse(what, "predict.consistent conditions every posterior sample on the mix; "
                      "the exported model returns plain posterior means")
    if not is_deterministic(splitter.model, "mean"):
        raise _refuse(what, "its forward pass is random even in 'mean' mode, so no "
                      "deterministic output with a test tolerance exists")


def _cover(image: np.ndarray, out: np.ndarray, names: list[str], path: Path) -> None:
    """Input and split side by side, 2:1 (the Model Zoo's cover shape)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    n = 1 + out.shape[0]
    fig = Figure(figsize=(8, 4), dpi=100)
    axes = fig.subplots(1, n)
    for ax, img, title in zip(axes, [image, *out], ["input", *names], strict=True):
        ax.imshow(img, cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def _readme(name: str, splitter, size: int, tiling, tol: float, measured: float,
            data: str, names: list[str]) -> str:
    from musplit.predict.brightness import input_clip

    cfg = splitter.config
    return f"""# {name}: µSplit image decomposition

Splits one superimposed fluorescence image into {len(names)} images, one per structure
({", ".join(names)}), with a hierarchical VAE with lateral contextualisation
(µSplit, Ashesh et al., ICCV 2023), trained with musplit.

## Input and output

* input `raw`: one image of exactly {size} x {size} pixels `(1, 1, {size}, {size})`, float32,
  in the intensity units of the training data (no normalisation needed: the model clips at
  {input_clip(splitter.stats):g} and normalises inside).
* output `split`: `(1, {len(names)}, {size}, {size})` float32, in the same units.

The model builds the lateral-context stack ({cfg.model.scales} scales, pad={cfg.data.pad}) and
the inner-padded tiles (patch {tiling.patch}, grid {tiling.grid}) inside, runs the network at
the posterior means (the deterministic top-down pass) and stitches the tiles: its output is
musplit's tiled prediction with one pass in "mean" mode (`Splitter.predict(image, samples=1)`
with `model.sample_mode = "mean"`). Larger images: run it tile by tile with
a halo, or use `musplit predict` on the checkpoint.

## Training data

{data}

## Reproducibility

Measured largest absolute difference between this TorchScript model and `musplit predict` on
the test input: {measured:.3g}; the test tolerance is {tol:.3g} (absolute).

## Citation

{CITATION}. doi:{CITATION_DOI}
"""


def export_bmz(checkpoint: str | os.PathLike, out: str | os.PathLike, *, size: int = 256,
               grid: int | None = None, image=None, name: str | None = None,
               overwrite: bool = False, batch_size: int | None = None) -> dict:
    """Write a bioimageio 0.5 model package (a .zip) of ``checkpoint``.

    Parameters
    ----------
    checkpoint : path
        A musplit checkpoint (:meth:`musplit.splitter.Splitter.load`).
    out : path
        The package to write (``.zip``); an existing one only with ``overwrite``.
    size : int
        The fixed input side ``H = W``, a multiple of the tile grid.
    grid : int, optional
        Inner-padding tile size; default as for ``musplit predict``.
    image : path or ndarray, optional
        A test image (its centre crop is the test input); default: a fresh frame of the
        synthetic training data, for a model trained on synthetic data.
    name : str, optional
        The model's name in the rdf (default: the config's name).

    Returns
    -------
    dict
        ``path``, ``tolerance`` (absolute), ``measured`` (max abs difference to
        :func:`musplit.predict.predict_image`), ``size``, ``grid``.

    Raises
    ------
    InputError
        A variant that cannot be exported faithfully (one line: which and why), bad sizes,
        an existing ``out`` without ``overwrite``, bioimageio not installed.
    """
    from musplit.files import check_output, move_into_place, temp_path

    out = check_output(out, overwrite, [checkpoint], "tiff")
    try:
        from bioimageio.spec import save_bioimageio_package  # noqa: F401
    except ImportError:
        raise InputError("the BioImage Model Zoo export needs bioimageio.spec and "
                         "bioimageio.core: pip install 'musplit[bmz]'") from None
    import musplit.predict as _predict
    from musplit.bmz.compat import patch_bioimageio
    from musplit.bmz.wrapper import FixedSizeSplitter
    from musplit.predict.brightness import input_clip
    from musplit.predict.settings import _resolve
    from musplit.splitter import Splitter

    patch_bioimageio()
    splitter = Splitter.load(checkpoint)
    name = name or f"musplit {splitter.config.name or Path(checkpoint).stem}"
    if len(name) < 5:
        raise InputError(f"--name must have at least 5 characters (a Model Zoo rule), got {name!r}")
    _check_exportable(splitter, name)
    cfg, stats = splitter.config, splitter.stats
    tiling, names, _ = _resolve(splitter.model, cfg, stats, padding="inner", grid=grid,
                                blend="none", blend_width=None, paper_geometry=False,
                                aleatoric=False, channel_names=None)
    if not isinstance(size, int) or size < tiling.patch or size % tiling.grid:
        raise InputError(f"--size must be a multiple of the tile grid {tiling.grid} and at "
                         f"least the patch {tiling.patch}, got {size}")
    test_in = _test_image(splitter, size, image)
    clip = input_clip(stats)
    wrapper = FixedSizeSplitter(splitter.model, cfg, stats, tiling, (size, size), clip,
                                batch_size or cfg.predict.batch_size)
    x = torch.from_numpy(test_in)[None, None]
    try:
        # The shape arithmetic of the models is constant at a fixed size: tracing it is
        # the point, so its TracerWarnings say nothing here.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(wrapper, x, check_trace=False)
            test_out = traced(x).numpy()
        torch.jit.save(traced, io.BytesIO())  # what cannot be serialised fails here
    except Exception as e:  # noqa: BLE001 - any tracing failure is the one-line refusal
        raise _refuse(f"{name} ({cfg.model.kind})", "torch.jit.trace failed: "
                      f"{_first_line(e)}") from None
    ref = _predict.predict_image(splitter.model, cfg, stats, test_in, padding="inner",
                                 grid=tiling.grid, samples=1, sample_mode="mean",
                                 brightness="off", aleatoric=False).mean[0]
    ref = np.moveaxis(ref, -1, 0)[None]
    measured = float(np.abs(test_out - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    if not np.isfinite(measured) or measured > 1e-3 * scale:
        raise _refuse(f"{name} ({cfg.model.kind})", f"the traced model differs from musplit "
                      f"predict by {measured:.3g} (output range {scale:.3g})")
    tol = max(TOLERANCE_FACTOR * measured, TOLERANCE_FLOOR * scale)

    tmp = temp_path(out, "partial")
    work = Path(tempfile.mkdtemp(prefix="musplit-bmz-"))
    try:
        rdf = _describe(work, name, splitter, wrapper, traced, test_in, test_out, names, size,
                        tiling, tol, measured)
        from bioimageio.spec import save_bioimageio_package

        save_bioimageio_package(rdf, output_path=tmp)
        move_into_place(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s (tolerance %.3g, measured %.3g)", out, tol, measured)
    return {"path": out, "tolerance": tol, "measured": measured, "size": size,
            "grid": tiling.grid}


def _describe(work: Path, name, splitter, wrapper, traced, test_in, test_out, names, size,
              tiling, tol, measured):
    """The bioimageio 0.5 ModelDescr, its files written into ``work``."""
    import yaml
    from bioimageio.spec.model import v0_5 as v

    from musplit import __version__

    cfg = splitter.config
    w_path = work / "musplit_split.pt"
    traced.save(str(w_path))
    np.save(work / "test_input.npy", test_in[None, None].astype(np.float32))
    np.save(work / "test_output.npy", test_out.astype(np.float32))
    _cover(test_in, test_out[0], names, work / "cover.png")
    data = _data_description(cfg)
    (work / "README.md").write_text(_readme(name, splitter, size, tiling, tol, measured, data,
                                            names))
    (work / "musplit_config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def space(cls, axis):
        return cls(id=v.AxisId(axis), size=size)

    ids = [v.Identifier(f"c{i}_" + "".join(ch if ch.isalnum() else "_" for ch in n))
           if not n.isidentifier() else v.Identifier(n) for i, n in enumerate(names)]
    inp = v.InputTensorDescr(
        id=v.TensorId("raw"),
        description="superimposed image in the training data's intensity units",
        axes=[v.BatchAxis(size=1), v.ChannelAxis(channel_names=[v.Identifier("mix")]),
              space(v.SpaceInputAxis, "y"), space(v.SpaceInputAxis, "x")],
        test_tensor=v.FileDescr(source=work / "test_input.npy"),
        data=v.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))],
    )
    outp = v.OutputTensorDescr(
        id=v.TensorId("split"),
        description="one image per structure, same units as the input",
        axes=[v.BatchAxis(size=1), v.ChannelAxis(channel_names=ids),
              space(v.SpaceOutputAxis, "y"), space(v.SpaceOutputAxis, "x")],
        test_tensor=v.FileDescr(source=work / "test_output.npy"),
        data=v.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=[v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))],
    )
    torch_version = v.Version(torch.__version__.split("+")[0])
    sd_path = work / "musplit_state_dict.pt"
    torch.save(wrapper.state_dict(), sd_path)
    arch = v.ArchitectureFromLibraryDescr(
        callable=v.Identifier("from_musplit_config"), import_from="musplit.bmz.wrapper",
        kwargs={"config": cfg.model_dump(mode="json"), "stats": splitter.stats.to_dict(),
                "size": size, "grid": tiling.grid, "batch_size": wrapper.batch_size})
    weights = v.WeightsDescr(
        torchscript=v.TorchscriptWeightsDescr(source=w_path, pytorch_version=torch_version,
                                              parent="pytorch_state_dict"),
        pytorch_state_dict=v.PytorchStateDictWeightsDescr(
            source=sd_path, architecture=arch, pytorch_version=torch_version))
    tolerance = v.ReproducibilityTolerance(absolute_tolerance=tol, relative_tolerance=0.0,
                                           mismatched_elements_per_million=0)
    return v.ModelDescr(
        name=name,
        description=(f"µSplit ({cfg.model.kind}, lc={cfg.model.lc}): splits a superimposed "
                     f"fluorescence image into {len(names)} structures ({', '.join(names)})"),
        authors=[v.Author(name="musplit contributors")],
        cite=[v.CiteEntry(text=CITATION, doi=v.Doi(CITATION_DOI))],
        license=v.LicenseId("BSD-3-Clause"),
        documentation=v.FileDescr(source=work / "README.md"),
        covers=[v.FileDescr(source=work / "cover.png")],
        tags=["musplit", "image-splitting", "unmixing", "fluorescence", "vae", "2d"],
        inputs=[inp],
        outputs=[outp],
        weights=weights,
        attachments=[v.FileDescr(source=work / "musplit_config.yaml")],
        version=__version__ if _is_semver(__version__) else None,
        config=v.Config(bioimageio=v.BioimageioConfig(reproducibility_tolerance=[tolerance])),
    )


def _is_semver(s: str) -> bool:
    parts = s.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)
