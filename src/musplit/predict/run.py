"""Whole-image prediction: :func:`predict_image` (in memory) and :func:`predict_to_zarr` (block by
block into OME-Zarr), with one implementation behind both.

Both validate their arguments the same way (:mod:`musplit.predict.settings`), measure
the brightness (:func:`_brightness`), build one :class:`~musplit.predict.engine._Engine`
(:func:`_make_engine`) and run :func:`_predict_pieces`: the output is predicted piece by piece
(the whole stack in memory, or one block of a frame with its context halo), each piece's tiles
stitched into a canvas (:class:`~musplit.predict.stitch._Canvas`) that is then handed to a sink
(kept in memory, or written into the Zarr stores) before the next piece is read.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from musplit.config import Config
from musplit.data.context import ContextStack
from musplit.data.io import ImageSource, ZarrWriter, open_image
from musplit.data.normalize import NormStats
from musplit.data.tiling import Tiling, _block_halo, _is_int
from musplit.errors import InputError
from musplit.predict.brightness import (
    RANGE_SAMPLE,
    _sample_pixels,
    brightness_factor,
    check_range,
    input_clip,
)
from musplit.predict.calibrated import std_calibration
from musplit.predict.engine import (
    _as_frames,
    _Engine,
    _eval_mode,
    _memory_format,
    _Prepared,
    _probe,
)
from musplit.predict.result import (
    Prediction,
    _file_kind,
    _jsonable,
    _set_zarr_meta,
    _sibling,
    refuse_existing,
)
from musplit.predict.settings import _check_common, _pixel_size, _resolve, _settings
from musplit.predict.stitch import _Canvas

log = logging.getLogger(__name__)

__all__ = ["predict_image", "predict_to_zarr"]

#: ``read(frame, rows, cols)`` -> the pixels of one frame's region, array-like ``(h, w)``.
Reader = Callable[[int, slice, slice], Any]


# ---------------------------------------------------------------------------------------------
# Pieces of a call
# ---------------------------------------------------------------------------------------------
def _array_reader(frames) -> Reader:
    """:data:`Reader` of an ``(N, H, W)`` array-like."""
    def read(i, ys, xs):
        return np.asarray(frames[i, ys, xs])

    return read


def _brightness(read: Reader, shape: Sequence[int], input_scale: float, stats: NormStats,
                brightness: str | None, config: Config, strict_range: bool = False) -> float:
    """:func:`brightness_factor` of the image ``read`` gives, of shape ``(N, H, W)``, and
    :func:`check_range` of it, on the brightness check's pixel sample when it took one."""
    n, h, w = shape
    if not isinstance(strict_range, bool):
        raise InputError(f"strict_range must be True or False, got {strict_range!r}")
    sample: list[np.ndarray] = []

    def pixels() -> np.ndarray:
        sample.append(_sample_pixels(read, n, h, w))
        return sample[0] * input_scale

    factor = brightness_factor(pixels, stats, brightness or config.predict.brightness)
    if not sample:
        sample.append(_sample_pixels(read, n, h, w, budget=RANGE_SAMPLE))
    check_range(sample[0], stats, scale=input_scale * factor, strict=strict_range)
    return factor


def _make_engine(model: nn.Module, config: Config, stats: NormStats, tiling: Tiling,
                 factor: float, **kwargs) -> _Engine:
    """The engine of a call; ``kwargs`` are :class:`_Engine`'s sampling and precision options.
    Outputs are scaled back by ``1/factor``, so they stay in the image's units."""
    return _Engine(model, stats, tiling, consistent=config.predict.consistent,
                   out_scale=1.0 / factor, **kwargs)


def _widths(c: int, samples: int, aleatoric: bool, keep_samples: int = 0) -> dict[str, int]:
    """Channels of each output array, by name (``mean``, ``std``, ``aleatoric_std``,
    ``samples``)."""
    widths = {"mean": c}
    if samples > 1:
        widths["std"] = c
    if aleatoric:
        widths["aleatoric_std"] = c
    if keep_samples:
        widths["samples"] = keep_samples * c
    return widths


# ---------------------------------------------------------------------------------------------
# The shared loop
# ---------------------------------------------------------------------------------------------
class _CallbackProgress:
    """A progress "bar" that calls ``callback(done, total)`` after every batch (a GUI's bar;
    an exception the callback raises, e.g. on Cancel, stops the prediction)."""

    def __init__(self, total: int, callback: Callable[[int, int], None]):
        self.total, self.done, self.callback = total, 0, callback
        callback(0, total)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.callback(self.done, self.total)

    def close(self) -> None:
        pass


def _progress(total: int, enabled, desc: str):
    if callable(enabled):
        return _CallbackProgress(total, enabled)
    if not enabled:
        return None
    return tqdm(total=total, unit="batch", desc=desc)


@dataclass
class _Piece:
    """A part of the output predicted in one go: the LC stack it reads, its patches (frame in
    the stack and top-left corner, stack coordinates) and the canvas they are stitched into."""

    stack: ContextStack
    frames: np.ndarray  # (K,) int64
    corners: np.ndarray  # (K, 2) int64
    canvas: _Canvas


def _predict_pieces(model: nn.Module, config: Config, engine: _Engine, tiling: Tiling, *,
                    plan: Iterable, build: Callable[[Any], _Piece],
                    sink: Callable[[Any, dict[str, np.ndarray]], None], any_tiles: bool,
                    seed: int, channels_last: bool, n_batches: int, progress,
                    reseed: Callable[[Any], int] | None = None) -> None:
    """Predict the output piece by piece: for each item of ``plan``, ``build(item)`` reads its
    piece, the engine predicts and stitches its tiles, and ``sink(item, arrays)`` takes the
    finished canvas; the piece (its context stack above all) is freed before the next is built.

    The model runs in eval and inference mode, in the requested memory layout, for the whole
    loop; outer padding is probed once first when there is anything to predict. With
    ``reseed``, the engine's noise and torch's global generator are seeded with
    ``reseed(item)`` before each piece (else seeded once with ``seed`` for the whole loop).
    """
    bar = _progress(n_batches, progress, "predict")
    try:
        with _eval_mode(model, engine.device, seed), _memory_format(model, channels_last):
            if tiling.padding == "outer" and any_tiles:
                _probe(model, tiling, config.data.scales, engine.device)
            for item in plan:
                if reseed is not None:
                    piece_seed = reseed(item)
                    engine.generator.manual_seed(piece_seed)
                    torch.manual_seed(piece_seed)  # inside _eval_mode's fork: restored after
                piece = build(item)
                engine.run(piece.stack, piece.frames, piece.corners, piece.canvas.place, bar)
                out = piece.canvas.finish()
                del piece
                sink(item, out)
                del out
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def predict_image(
    model: nn.Module,
    config: Config,
    stats: NormStats,
    image,
    *,
    padding: str = "inner",
    grid: int | None = None,
    samples: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    channel_names: list[str] | None = None,
    normalized: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    paper_geometry: bool = False,
    blend: str | None = None,
    blend_width: int | None = None,
    sample_mode: str | None = None,
    sample_batch: int | None = None,
    keep_samples: int = 0,
    aleatoric: bool = True,
    input_scale: float = 1.0,
    amp: str | None = None,
    channels_last: bool = True,
    pixel_size: tuple[float, float] | None = None,
    brightness: str | None = None,
    strict_range: bool = False,
    calibration: Mapping | None = None,
) -> Prediction:
    """Split a superimposed image into its channels by tiled prediction (docs/tiling.md).

    Parameters
    ----------
    model : torch.nn.Module
        ``model(x)`` with ``x (B, S, P, P)`` returns the likelihood parameters ``(B, 2C, P, P)``
        (or a tuple that starts with them). A model with ``encode``/``decode`` (the LadderVAE)
        runs its encoder once per patch for all samples. Used on its own device, in eval mode
        for the call (its training flag is restored afterwards).
    config : Config
        The training configuration: ``data.patch``, ``data.scales``, ``data.pad``,
        ``data.lc_alignment`` make the inputs exactly as in training; ``predict.grid`` and
        ``predict.blend`` are defaults.
    stats : NormStats
        Training clip value and normalisation statistics.
    image : array-like, shape (H, W) or (N, H, W)
        The superimposed input, in intensity units **on the scale of the channel average**
        ``(x1 + x2)/2`` (docs/method.md, "Superposition model"; the sum for a model trained with
        ``input_is_sum``). For a real single-channel acquisition pass ``input_scale`` if its
        scale differs. Arrays read lazily per frame (zarr, memory maps) work.
    padding : {"inner", "outer", "none"}
        Tiling scheme (:mod:`musplit.data.tiling`; docs/tiling.md, "Inner padding").
    grid : int, optional
        Tile size ``G`` (inner) or, for outer padding, the grid whose margin ``(P - G)/2`` is
        added around the patch. Default ``config.predict.grid``, else :func:`default_grid`.
    samples : int
        Posterior samples ``K`` for the MMSE (1 = parity). ``K > 1`` also gives the std.
    batch_size : int
        Patches per network call (and the most the top-down pass runs on at once).
    seed : int
        Seeds the latent noise: the same seed, batch size and hardware give the same output.
    channel_names : list of str, optional
        Default ``config.data.channel_names``, else ``channel_0, channel_1, ...``.
    normalized : bool
        Return normalised target units (for metrics, docs/evaluation.md) instead of intensity units.
    progress : bool or callable
        A tqdm bar over batches, or ``progress(done, total)`` called after every batch (an
        exception it raises stops the prediction: a GUI's Cancel).
    paper_geometry : bool
        The reference tiling, ``floor(H/G) x floor(W/G)`` tiles, remainder 0 (docs/tiling.md,
        "Reference tiling").
    blend : {"none", "linear", "cosine"}, optional
        Blend overlapping tile borders (docs/tiling.md, "Blending"); default
        ``config.predict.blend``. With blending the std is the weighted blend of per-tile stds
        (an approximation).
    blend_width : int, optional
        ``b``, default half the margin.
    sample_mode : {"sample", "mean"}, optional
        Overrides the LadderVAE's ``sample_mode`` (``"mean"``: ``z = mu_q``, deterministic).
    sample_batch : int, optional
        Top-down passes run together (the encoder state repeated along the batch axis);
        default ``max(1, batch_size // patches)``. ``1`` reproduces ``K`` successive full
        passes drawing from the same generator exactly.
    keep_samples : int
        Keep the first ``k`` individual samples (:attr:`Prediction.samples`).
    aleatoric : bool
        Compute :attr:`Prediction.aleatoric_std` (never for a model with
        ``predicts_variance = False``, such as the MSE baselines: it would be a constant).
    input_scale : float
        Multiplies the image before clipping (docs/method.md, "Superposition model").
    brightness : {"check", "match", "off"}, optional
        Compare the image's brightness with the training mixes' (:func:`brightness_factor`);
        default ``config.predict.brightness``. With ``"match"`` the image is rescaled to the
        training brightness and the channels are scaled back, so they stay in the image's
        units; the factor is recorded in ``meta["brightness_factor"]``.
    strict_range : bool
        Refuse an image outside the model's training range (beyond 3x the training clip in
        normalised units, or as far below the training minimum:
        :func:`~musplit.predict.brightness.check_range`) instead of logging a warning.
    calibration : mapping, optional
        A stored calibration (``Calibration.to_dict()``, a checkpoint's
        ``extra["calibration"]``): the returned std is the calibrated ``max(a_k std + b_k, 0)``
        in the output's units (:mod:`musplit.predict.calibrated`; docs/microsplit.md,
        "Calibration in musplit") and ``meta["std_calibrated"]`` is True. None: the raw
        posterior-sample std (``meta["std_calibrated"]`` False).
    amp : {"bf16", "fp16", "fp32"}, optional
        Autocast the network to bf16 or fp16 (not parity; statistics stay float32). bf16 is
        1.5-1.7x faster for models of the paper's width on a CPU with AVX512-BF16 (no faster
        for narrow ones); emulated, hence slower, on CPUs without it or AMX (a warning says
        so). None or "fp32": full precision.
    channels_last : bool
        Run the network in channels-last memory layout (faster; results equal up to float
        rounding). The model is converted for the call and converted back afterwards.
    pixel_size : (float, float), optional
        ``(y, x)`` pixel size of the input in micrometres, kept in
        :attr:`Prediction.pixel_size` (and so in the saved files).

    Returns
    -------
    Prediction
        ``mean``, ``std`` (None for one sample), ``aleatoric_std``: ``(N, H, W, C)`` float32
        (for integer input too: float32 in the input's intensity units); a 2-D input gives
        ``N = 1``.

    Raises
    ------
    InputError
        Bad image (shape, dtype, NaN/Inf), bad tiling or sampling arguments, a model that
        cannot take the outer-padding size.
    ConfigError
        Statistics or model that do not match the config.
    MusplitError
        Out of memory, with a suggestion.
    """
    _check_common(config, stats, samples, batch_size, seed, keep_samples, input_scale,
                  sample_batch)
    pixel_size = _pixel_size(pixel_size)
    tiling, names, aleatoric = _resolve(
        model, config, stats, padding=padding, grid=grid, blend=blend, blend_width=blend_width,
        paper_geometry=paper_geometry, aleatoric=aleatoric, channel_names=channel_names)
    frames = _as_frames(image)
    n, h, w = (int(v) for v in frames.shape)
    factor = _brightness(_array_reader(frames), (n, h, w), input_scale, stats, brightness,
                         config, strict_range)
    input_scale = input_scale * factor
    cal = std_calibration(calibration, stats, samples, normalized=normalized,
                          out_scale=1.0 / factor)
    c = stats.n_channels
    rows, cols = tiling.shape(h, w)
    per_frame = rows * cols
    if per_frame == 0:
        log.warning("paper geometry: a %dx%d frame holds no %d-px tile; the output is all 0",
                    h, w, tiling.grid)
    # Tiles frame-major, row-major inside a frame (the reference orders frames minor,
    # docs/tiling.md "Reference tiling"; the order does not change the result and
    # frame-major keeps few frames' context in memory).
    corners1 = tiling.corners(h, w)
    total = n * per_frame
    frame_idx = np.repeat(np.arange(n, dtype=np.int64), per_frame)
    corners = np.tile(corners1, (n, 1)) if total else np.zeros((0, 2), dtype=np.int64)
    # Context of at most the frames one batch touches, computed on first use (LRU).
    cache = min(n, -(-max(batch_size - 1, 0) // max(per_frame, 1)) + 1)
    clip = input_clip(stats)
    engine = _make_engine(model, config, stats, tiling, factor, samples=samples, seed=seed,
                          sample_mode=sample_mode, sample_batch=sample_batch,
                          batch_size=batch_size, keep_samples=keep_samples, aleatoric=aleatoric,
                          normalized=normalized, amp=amp, channels_last=channels_last)
    n_batches = -(-total // batch_size)
    log.info("predicting %d frame(s) of %dx%d: %d tiles of %d px (patch %d, %s padding), "
             "%d sample(s), %d batch(es) on %s", n, h, w, total, tiling.grid, tiling.patch,
             tiling.padding, samples, n_batches, engine.device)

    def build(_) -> _Piece:  # the whole stack is one piece
        stack = ContextStack(_Prepared(frames, clip, input_scale), tiling.patch,
                             config.data.scales, config.data.pad, config.data.lc_alignment,
                             cache_frames=cache)
        canvas = _Canvas(n, h, w, _widths(c, samples, aleatoric, keep_samples), tiling)
        return _Piece(stack, frame_idx, corners, canvas)

    result: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    _predict_pieces(model, config, engine, tiling, plan=[None], build=build,
                    sink=lambda _, arrays: result.update(arrays), any_tiles=bool(total),
                    seed=seed, channels_last=channels_last, n_batches=n_batches,
                    progress=progress)
    seconds = time.perf_counter() - t0
    log.info("predicted %.2f Mpx in %.1f s (%.3f Mpx/s)", n * h * w / 1e6, seconds,
             n * h * w / 1e6 / max(seconds, 1e-9))
    meta = _settings(config, stats, tiling, samples=samples, seed=seed, sample_mode=sample_mode,
                     normalized=normalized, input_scale=input_scale, model=model,
                     amp=amp)
    meta.update(tiles=int(total), batch_size=int(batch_size), seconds=round(seconds, 3),
                brightness_factor=float(factor))
    if cal is not None and "std" in result:
        cal.apply(result["std"])
    meta.update(_calibration_meta(cal))
    samp = None
    if keep_samples:
        s = result["samples"].reshape(n, h, w, keep_samples, c)
        samp = np.moveaxis(s, 3, 0)
    return Prediction(result["mean"], result.get("std"), result.get("aleatoric_std"), samp,
                      names, "SYXC", meta, pixel_size)


def _calibration_meta(cal) -> dict:
    """``std_calibrated`` (always) and ``std_calibration`` (when applied) for the metadata."""
    return {"std_calibrated": True, "std_calibration": cal.meta} if cal is not None else {
        "std_calibrated": False}


def _open_source(source, axes, channel, pixel_size
                 ) -> tuple[Reader, tuple[int, int, int], tuple[float, float] | None]:
    """:data:`Reader`, ``(N, H, W)`` and pixel size of a file, ImageSource or array-like."""
    src = source if isinstance(source, ImageSource) else None
    if src is None and isinstance(source, (str, os.PathLike)):
        # a superimposed input: its planes are frames, unless a channel of it is asked for
        src = open_image(source, axes, stack_of="frames" if channel is None else "channels")
    pixel_size = _pixel_size(pixel_size)
    if src is None:
        frames = _as_frames(source)
        return _array_reader(frames), tuple(int(v) for v in frames.shape), pixel_size
    if pixel_size is None:
        pixel_size = src.pixel_size
    if channel is None and src.n_channels != 1:
        raise InputError(f"{src.name} has {src.n_channels} channels ({src.axes_note}); pass "
                         "channel= to choose the superimposed one, or axes= to read it "
                         "otherwise")
    ch = 0 if channel is None else channel

    def read(i, ys, xs):
        return src.read([i], [ch], (ys, xs))[0, ..., 0]

    return read, (src.n_frames, src.height, src.width), pixel_size


def predict_to_zarr(
    model: nn.Module,
    config: Config,
    stats: NormStats,
    source,
    out_path: str | os.PathLike,
    *,
    padding: str = "inner",
    grid: int | None = None,
    samples: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    channel_names: list[str] | None = None,
    normalized: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    paper_geometry: bool = False,
    sample_mode: str | None = None,
    sample_batch: int | None = None,
    std: bool = True,
    aleatoric: bool = False,
    input_scale: float = 1.0,
    amp: str | None = None,
    channels_last: bool = True,
    axes: str | None = None,
    channel: int | str | None = None,
    block: int = 2048,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
    pixel_size: tuple[float, float] | None = None,
    brightness: str | None = None,
    strict_range: bool = False,
    calibration: Mapping | None = None,
) -> Path:
    """Predict an image larger than memory, block by block, into OME-Zarr (docs/tiling.md,
    "Streaming to Zarr").

    The input is read one block (plus the context halo its lateral context needs) at a time;
    each block's tiles are predicted and written before the next block is read, so memory is
    bounded by the block size, not the frame size. The result equals :func:`predict_image`
    bit for bit for deterministic models; sampled ones draw each block's noise from a
    generator seeded by ``(seed, frame, block origin)`` (:func:`block_seed`), so a block's
    output does not depend on which process predicts it or when (what
    :func:`musplit.predict.distributed.predict_many` relies on). No blending.

    Parameters
    ----------
    model, config, stats, padding, grid, samples, batch_size, seed, channel_names, normalized,
    progress, paper_geometry, sample_mode, sample_batch, input_scale, amp, channels_last,
    brightness, strict_range, calibration
        As for :func:`predict_image` (the brightness is measured on up to 8 frames, the
        central 2048² of each).
    source : path-like, ImageSource or array-like
        The superimposed input: a file (TIFF, Zarr, ...) opened lazily with
        :func:`musplit.data.io.open_image`, or an array ``(H, W)``/``(N, H, W)``.
    out_path : path-like
        The mean's OME-Zarr store (``.zarr``); the std goes to ``<stem>_std.zarr`` and the
        aleatoric std to ``<stem>_aleatoric_std.zarr``.
    std, aleatoric : bool
        Which uncertainty stores to write (std only when ``samples > 1``).
    axes : str, optional
        Axes of ``source`` when its metadata lack them.
    channel : int or str, optional
        The channel of a multi-channel source that holds the superimposed image.
    block : int
        Output block side in pixels (rounded to a multiple of the tile and of the chunk size).
        Peak memory grows with ``(block + 2*halo)**2 * scales``; the halo is about
        ``P * 2**(S-2)`` (~700 px at ``P = 64, S = 5``).
    overwrite, protect
        As for :meth:`Prediction.save`; the source itself is always protected.
    pixel_size : (float, float), optional
        ``(y, x)`` pixel size in micrometres written into the stores' OME-Zarr scale; default:
        the source's (:attr:`ImageSource.pixel_size`, when it is a file or a source that
        records one).

    Returns
    -------
    Path
        The mean's store. Its ``attrs["musplit"]`` holds the settings.
    """
    _check_common(config, stats, samples, batch_size, seed, 0, input_scale, sample_batch)
    if _file_kind(out_path) != "zarr":
        raise InputError(f"{out_path}: predict_to_zarr writes a .zarr store")
    protect = [protect] if isinstance(protect, (str, os.PathLike)) else list(protect or ())
    if isinstance(source, (str, os.PathLike)):
        protect.append(source)
    read, shape, pixel_size = _open_source(source, axes, channel, pixel_size)
    plan = _plan_stream(model, config, stats, read, shape, padding=padding, grid=grid,
                        samples=samples, batch_size=batch_size, seed=seed,
                        channel_names=channel_names, normalized=normalized,
                        paper_geometry=paper_geometry, sample_mode=sample_mode,
                        sample_batch=sample_batch, aleatoric=aleatoric,
                        input_scale=input_scale, amp=amp, channels_last=channels_last,
                        block=block, brightness=brightness, strict_range=strict_range,
                        calibration=calibration)
    engine = _stream_engine(model, config, stats, plan)
    paths = {k: _sibling(out_path, "" if k == "mean" else f"_{k}")
             for k in plan.widths if k != "std" or std}
    refuse_existing(paths.values(), overwrite)
    n, h, w = plan.shape
    writers: dict[str, ZarrWriter] = {}

    def write(blk, arrays: dict[str, np.ndarray]) -> None:
        f = blk[0]
        oy, ox, _, _ = plan.region(blk)
        for k, wr in writers.items():
            wr.write((slice(f, f + 1), oy, ox, slice(None)), arrays[k])

    blocks = plan.blocks()
    t0 = time.perf_counter()
    try:
        for k, p in paths.items():
            writers[k] = ZarrWriter.create(p, (n, h, w, plan.n_channels), "SYXC", plan.names,
                                           chunks=plan.chunks, overwrite=overwrite,
                                           protect=protect, pixel_size=pixel_size)
        _predict_blocks(model, config, engine, plan, read, blocks, write, progress)
        for wr in writers.values():
            wr.close()
    except BaseException:
        for wr in writers.values():
            wr.abort()
        raise
    seconds = time.perf_counter() - t0
    meta = plan.meta(config, stats, model, std="std" in paths)
    meta["seconds"] = round(seconds, 3)
    for k, p in paths.items():
        _set_zarr_meta(p, _jsonable({**meta, "quantity": k}))
    log.info("predicted %.2f Mpx into %s in %.1f s", n * h * w / 1e6, paths["mean"], seconds)
    return paths["mean"]


# ---------------------------------------------------------------------------------------------
# Streaming: the plan of a call and one block of it (shared with musplit.predict.distributed)
# ---------------------------------------------------------------------------------------------
#: ``(frame, r0, c0)``: a block by its frame and the tile row and column of its top-left tile.
Block = tuple[int, int, int]


def block_seed(seed: int, frame: int, y: int, x: int) -> int:
    """The seed of the latent noise of the block whose output starts at pixel ``(y, x)`` of
    ``frame``: a function of these numbers only, so a block draws the same noise whichever
    process predicts it and in whatever order (docs/tiling.md, "Streaming to Zarr")."""
    words = [int(seed) % 2**64, int(frame), int(y), int(x)]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 63 bits: any torch generator takes it


@dataclass
class _Stream:
    """Everything a streamed prediction decides once, before its first block: the tiling, the
    block and chunk geometry, the sampling settings, the brightness factor and the std
    calibration. Plain data (it pickles: each Dask task of :mod:`musplit.predict.distributed`
    gets it); the model, the reader and the engine stay outside.

    Blocks are whole chunks (``block`` a multiple of ``chunk``), so no two blocks write the same
    chunk of an output array, and each block reads its ``halo`` of input around it.
    """

    tiling: Tiling
    names: list[str]
    aleatoric: bool
    shape: tuple[int, int, int]  # (N, H, W)
    n_channels: int
    factor: float  # brightness factor, already in input_scale
    input_scale: float
    clip: float
    cal: Any  # StdCalibration or None
    chunk: int
    block: int
    halo: int
    align: int
    samples: int
    batch_size: int
    seed: int
    sample_mode: str | None
    sample_batch: int | None
    normalized: bool
    amp: str | None
    channels_last: bool

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Tile rows and columns of a frame."""
        return self.tiling.shape(self.shape[1], self.shape[2])

    @property
    def chunks(self) -> tuple[int, int, int, int]:
        """Chunk shape of the output arrays, ``(1, chunk, chunk, 1)`` (frames, y, x, channels)."""
        return (1, self.chunk, self.chunk, 1)

    @property
    def widths(self) -> dict[str, int]:
        return _widths(self.n_channels, self.samples, self.aleatoric)

    def blocks(self) -> list[Block]:
        """Every block, frame-major, row-major inside a frame."""
        rows, cols = self.grid_shape
        bt = self.block // self.tiling.grid
        return [(f, r0, c0) for f in range(self.shape[0]) for r0 in range(0, rows, bt)
                for c0 in range(0, cols, bt)]

    def n_batches(self, blk: Block) -> int:
        rows, cols = self.grid_shape
        bt = self.block // self.tiling.grid
        _, r0, c0 = blk
        return -(-min(bt, rows - r0) * min(bt, cols - c0) // self.batch_size)

    def region(self, blk: Block) -> tuple[slice, slice, slice, slice]:
        """Output region of a block, and the input region it needs (clipped to the frame:
        there the frame border is the block border, and the padding of training applies,
        docs/data.md "Padding modes")."""
        _, r0, c0 = blk
        rows, cols = self.grid_shape
        g, bt, halo, align = self.tiling.grid, self.block // self.tiling.grid, self.halo, \
            self.align
        h, w = self.shape[1], self.shape[2]
        r1, c1 = min(rows, r0 + bt), min(cols, c0 + bt)
        oy = slice(r0 * g, min(r1 * g, h))
        ox = slice(c0 * g, min(c1 * g, w))
        ay = max(0, (r0 * g - halo) // align * align)
        ax = max(0, (c0 * g - halo) // align * align)
        return oy, ox, slice(ay, min(h, r1 * g + halo)), slice(ax, min(w, c1 * g + halo))

    def seed_of(self, blk: Block) -> int:
        oy, ox, _, _ = self.region(blk)
        return block_seed(self.seed, blk[0], oy.start, ox.start)

    def piece(self, read: Reader, config: Config, blk: Block) -> _Piece:
        """The block's LC stack (its input region read now), patches and canvas."""
        f, r0, c0 = blk
        rows, cols = self.grid_shape
        g, t = self.tiling.grid, self.tiling
        bt = self.block // g
        r1, c1 = min(rows, r0 + bt), min(cols, c0 + bt)
        oy, ox, iy, ix = self.region(blk)
        stack = ContextStack(_Prepared(read(f, iy, ix)[None], self.clip, self.input_scale),
                             t.patch, config.data.scales, config.data.pad,
                             config.data.lc_alignment)
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        corners = np.stack([rr.ravel() * g - t.margin,
                            cc.ravel() * g - t.margin], axis=1).astype(np.int64)
        canvas = _Canvas(1, oy.stop - oy.start, ox.stop - ox.start, self.widths, t,
                         origin=(oy.start - iy.start, ox.start - ix.start))
        local = corners - np.array([iy.start, ix.start], dtype=np.int64)
        return _Piece(stack, np.zeros(len(local), dtype=np.int64), local, canvas)

    def meta(self, config: Config, stats: NormStats, model: nn.Module, *, std: bool) -> dict:
        """The settings the output stores record (``attrs["musplit"]``)."""
        meta = _settings(config, stats, self.tiling, samples=self.samples, seed=self.seed,
                         sample_mode=self.sample_mode, normalized=self.normalized,
                         input_scale=self.input_scale, model=model, amp=self.amp)
        meta.update(batch_size=int(self.batch_size), block=int(self.block),
                    channel_names=self.names, brightness_factor=float(self.factor),
                    block_seeds="per block (seed, frame, block origin)")
        meta.update(_calibration_meta(self.cal if std else None))
        return meta


def _plan_stream(model: nn.Module, config: Config, stats: NormStats, read: Reader,
                 shape: tuple[int, int, int], *, padding, grid, samples, batch_size, seed,
                 channel_names, normalized, paper_geometry, sample_mode, sample_batch,
                 aleatoric, input_scale, amp, channels_last, block, brightness, strict_range,
                 calibration, measure: bool = True) -> _Stream:
    """Check the arguments of a streamed prediction and decide its :class:`_Stream` (the
    brightness is measured here, on a sample of what ``read`` gives; ``measure=False``, for a
    plan of the geometry only, reads nothing and takes a factor of 1)."""
    _check_common(config, stats, samples, batch_size, seed, 0, input_scale, sample_batch)
    tiling, names, aleatoric = _resolve(
        model, config, stats, padding=padding, grid=grid, blend="none", blend_width=None,
        paper_geometry=paper_geometry, aleatoric=aleatoric, channel_names=channel_names)
    if not _is_int(block) or block < 1:
        raise InputError(f"block must be a positive integer (pixels), got {block!r}")
    factor = (_brightness(read, shape, input_scale, stats, brightness, config, strict_range)
              if measure else 1.0)
    cal = std_calibration(calibration, stats, samples, normalized=normalized,
                          out_scale=1.0 / factor)
    g = tiling.grid
    # Chunks of about 512 px (what viewers read well), aligned with the tile grid; blocks are
    # whole chunks, so every block write fills whole chunks (no read-modify-write).
    chunk = g * max(1, min(512, block) // g)
    return _Stream(
        tiling=tiling, names=names, aleatoric=aleatoric,
        shape=tuple(int(v) for v in shape), n_channels=stats.n_channels, factor=float(factor),
        input_scale=float(input_scale * factor), clip=input_clip(stats), cal=cal,
        chunk=chunk, block=max(chunk, block // chunk * chunk),
        halo=_block_halo(tiling, config.data.scales),
        align=2 ** (config.data.scales - 1),  # floor alignment: origins on the pyramid grid
        samples=int(samples), batch_size=int(batch_size), seed=int(seed),
        sample_mode=sample_mode, sample_batch=sample_batch, normalized=bool(normalized),
        amp=amp, channels_last=bool(channels_last))


def _stream_engine(model: nn.Module, config: Config, stats: NormStats, plan: _Stream
                   ) -> _Engine:
    """The engine of a streamed prediction (the noise is reseeded per block)."""
    return _make_engine(model, config, stats, plan.tiling, plan.factor, samples=plan.samples,
                        seed=plan.seed, sample_mode=plan.sample_mode,
                        sample_batch=plan.sample_batch, batch_size=plan.batch_size,
                        keep_samples=0, aleatoric=plan.aleatoric, normalized=plan.normalized,
                        amp=plan.amp, channels_last=plan.channels_last)


def _predict_blocks(model: nn.Module, config: Config, engine: _Engine, plan: _Stream,
                    read: Reader, blocks: Sequence[Block],
                    sink: Callable[[Block, dict[str, np.ndarray]], None], progress) -> None:
    """Predict ``blocks`` of ``plan`` one after the other, each handed to ``sink`` finished
    (its std calibrated) before the next is read: the one implementation of a block, for one
    process (:func:`predict_to_zarr`) and for a Dask task alike. Each block's noise is seeded
    by :meth:`_Stream.seed_of`, so a block's output does not depend on the others."""
    cal = plan.cal

    def finish(blk, arrays: dict[str, np.ndarray]) -> None:
        if cal is not None and "std" in arrays:
            cal.apply(arrays["std"])
        sink(blk, arrays)

    _predict_pieces(model, config, engine, plan.tiling, plan=blocks,
                    build=lambda blk: plan.piece(read, config, blk), sink=finish,
                    any_tiles=bool(blocks), seed=plan.seed, channels_last=plan.channels_last,
                    n_batches=sum(plan.n_batches(b) for b in blocks), progress=progress,
                    reseed=plan.seed_of)
