"""Tiled prediction: tiles, lateral context, MMSE over samples, stitching (spec/usplit.md 8).

A frame is predicted with patches of size ``P_eval``; only the central region of each patch (the
**tile**, ``G x G``) is kept, and tiles form a non-overlapping grid of stride ``G`` (spec 8.1):

==============  ===============  ==========  ==================================================
``padding``     ``P_eval``       tile ``G``  per-side margin ``p``
==============  ===============  ==========  ==================================================
``"inner"``     training ``P``   ``grid``    ``(P - G)/2`` (the paper's Inner Padding)
``"outer"``     ``P + 2p``       ``P``       ``(P - grid)/2``: the margin inner padding would
                                             have at the same ``grid`` (paper Fig. 4)
``"none"``      ``P``            ``P``       0
==============  ===============  ==========  ==================================================

By default (spec 8.3) ``ceil(H/G) x ceil(W/G)`` tiles are predicted, so **every pixel is
predicted exactly once**, frames smaller than a patch included; off-frame context comes from the
training padding mode, on the fly. ``paper_geometry=True`` reproduces the reference instead
(spec 8.2): ``floor(H/G) x floor(W/G)`` tiles, the remainder left 0.

Each patch's input is built exactly as in training: the image is clipped at the training clip
value, its lateral-context (LC) stack is cut around the patch centre with the configured padding
mode and alignment (:class:`~musplit.data.context.ContextStack`, padding in intensity units),
then normalised with the training input statistics (spec 5.3-5.7).

MMSE (spec 8.5): for ``samples = K`` the bottom-up pass runs once per patch and the top-down pass
``K`` times; per pixel a running mean and sum of squared deviations (Welford/Chan) are kept, so
memory does not grow with ``K``. The std is the sample std with ``ddof = 0``. The aleatoric std
is ``sqrt(mean_K exp(l))`` (the model's predicted variance averaged over samples). All are
returned in input intensity units (mean ``mu*s_k + m_k``, stds ``std*s_k``, spec 1.2), or in
normalised target units with ``normalized=True`` (what the metrics of spec 9 use).

Everything is batched: LC crops of ``batch_size`` patches are one gather, the network runs on the
batch under :func:`torch.inference_mode`, and each batch's tiles are placed into the output
canvas by one fancy-indexed assignment before the next batch is built, so the patches of a frame
are never all in memory (spec 8.3 item 4). :func:`predict_to_zarr` streams frames larger than
memory block by block into OME-Zarr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from musplit.config import Config
from musplit.data.context import ContextStack
from musplit.data.dataset import tile_corners
from musplit.data.normalize import BRIGHTNESS_QUANTILES, NormStats
from musplit.errors import ConfigError, InputError, MusplitError

log = logging.getLogger(__name__)

__all__ = [
    "BLENDS",
    "PADDINGS",
    "Prediction",
    "Tiling",
    "default_grid",
    "make_tiling",
    "predict_image",
    "predict_to_zarr",
]

PADDINGS = ("inner", "outer", "none")
BLENDS = ("none", "linear", "cosine")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """A split image with its uncertainty and the settings that made it (ecosystem API-3).

    Attributes
    ----------
    mean : ndarray, float32, shape (N, H, W, C)
        MMSE estimate per target channel, in input intensity units (or normalised units when
        ``meta["units"] == "normalised"``).
    std : ndarray, float32, shape (N, H, W, C), or None
        Per-pixel sample standard deviation over the ``samples`` posterior samples (``ddof=0``),
        same units as ``mean``; None when ``samples == 1``.
    aleatoric_std : ndarray, float32, shape (N, H, W, C), or None
        ``s_k * sqrt(mean_K exp(l_k))``: the std of the model's Gaussian likelihood averaged over
        samples (spec 8.5), same units. The total predictive variance is
        ``std**2 + aleatoric_std**2`` (:attr:`total_std`).
    samples : ndarray, float32, shape (K_keep, N, H, W, C), or None
        The first ``keep_samples`` individual samples' means, when asked for.
    channel_names : list of str
        One name per channel, in target order.
    axes : str
        Axes of ``mean``, ``std`` and ``aleatoric_std``: ``"SYXC"``.
    meta : dict
        Tiling (``padding``, ``grid``, ``eval_patch``, ``margin``, ``blend``,
        ``paper_geometry``), ``samples``, ``seed``, ``sample_mode``, ``units``, ``std_ddof``,
        the normalisation statistics (``stats``), ``patch``, ``scales``, ``pad``,
        ``lc_alignment``, ``input_scale``, ``clip``, ``musplit_version``, timing.
    pixel_size : (float, float) or None
        ``(y, x)`` pixel size in micrometres, the input's (None when it records none): saved
        in the OME-TIFF / OME-Zarr metadata and restored by :meth:`load`.
    """

    mean: np.ndarray
    std: np.ndarray | None = None
    aleatoric_std: np.ndarray | None = None
    samples: np.ndarray | None = None
    channel_names: list[str] = field(default_factory=list)
    axes: str = "SYXC"
    meta: dict = field(default_factory=dict)
    pixel_size: tuple[float, float] | None = None

    def __repr__(self) -> str:
        parts = [f"mean={tuple(self.mean.shape)}"]
        for name in ("std", "aleatoric_std", "samples"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={tuple(v.shape)}")
        keys = ("padding", "grid", "samples", "units")
        settings = ", ".join(f"{k}={self.meta[k]!r}" for k in keys if k in self.meta)
        return f"Prediction({', '.join(parts)}, channels={self.channel_names}, {settings})"

    @property
    def total_std(self) -> np.ndarray | None:
        """``sqrt(std**2 + aleatoric_std**2)`` (spec 8.5), or whichever of the two exists."""
        if self.aleatoric_std is None:
            return self.std
        if self.std is None:
            return self.aleatoric_std
        return np.sqrt(np.square(self.std) + np.square(self.aleatoric_std))

    # -- files -----------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        protect: Iterable[str | os.PathLike] = (),
        *,
        std: bool = True,
        aleatoric: bool = False,
    ) -> Path:
        """Write the prediction as OME-TIFF (``.tif``/``.tiff``) or OME-Zarr (``.zarr``).

        The mean goes to ``path``; the std (when there is one and ``std=True``) to a sibling
        ``<stem>_std<suffix>``, the aleatoric std (``aleatoric=True``) to
        ``<stem>_aleatoric_std<suffix>``. Each file carries axes, channel names, the pixel size
        (:attr:`pixel_size`) and :attr:`meta` (OME ``Description`` JSON in a TIFF,
        ``attrs["musplit"]`` in a Zarr), so :meth:`load` restores everything. Every output is
        checked before anything is written, and each is written atomically.

        Parameters
        ----------
        path : path-like
            ``.tif``, ``.tiff`` (``.ome.tif`` recommended) or ``.zarr``.
        overwrite : bool
            Replace existing outputs (refused otherwise, with :class:`InputError`).
        protect : iterable of path-like
            Inputs that must never be written to.
        std, aleatoric : bool
            Which uncertainty files to write.

        Returns
        -------
        Path
            The mean's path.
        """
        from musplit.data.io import _check_output, write_tiff, write_zarr

        kind = _file_kind(path)
        arrays = {"": self.mean}
        if std and self.std is not None:
            arrays["_std"] = self.std
        if aleatoric and self.aleatoric_std is not None:
            arrays["_aleatoric_std"] = self.aleatoric_std
        targets = {tag: _sibling(path, tag) for tag in arrays}
        # Refuse before writing anything: no half-saved prediction (mean written, std refused).
        refuse_existing(targets.values(), overwrite)
        for out in targets.values():
            _check_output(out, True, protect, kind)
        names = list(self.channel_names) or None
        for tag, arr in arrays.items():
            meta = {**_jsonable(self.meta), "quantity": tag.lstrip("_") or "mean",
                    "channel_names": names}
            if kind == "tiff":
                write_tiff(targets[tag], arr, self.axes, names, overwrite,
                           metadata={"Description": json.dumps(meta)}, protect=protect,
                           pixel_size=self.pixel_size)
            else:
                write_zarr(targets[tag], arr, self.axes, names, overwrite, protect=protect,
                           pixel_size=self.pixel_size)
                _set_zarr_meta(targets[tag], meta)
        return targets[""]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Prediction:
        """Read a prediction written by :meth:`save` (mean, and std/aleatoric std if present).

        Parameters
        ----------
        path : path-like
            The mean's file (``.tif``/``.tiff``/``.zarr``).

        Returns
        -------
        Prediction
        """
        from musplit.data.io import open_image

        kind = _file_kind(path)
        src = open_image(path)
        mean = src.read()
        meta = _read_meta(Path(path), kind)
        names = src.channel_names or meta.get("channel_names") or []
        extra = {}
        for tag in ("_std", "_aleatoric_std"):
            p = _sibling(path, tag)
            extra[tag] = open_image(p).read() if p.exists() else None
        meta.pop("quantity", None)
        meta.pop("channel_names", None)
        return cls(mean, extra["_std"], extra["_aleatoric_std"], None, list(names), "SYXC", meta,
                   src.pixel_size)


def _file_kind(path) -> str:
    name = str(path).lower().rstrip("/\\")
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".zarr"):
        return "zarr"
    raise InputError(f"{path}: a prediction is saved as .tif/.tiff or .zarr")


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """:class:`InputError` for the first of ``paths`` that exists, unless ``overwrite``."""
    if overwrite:
        return
    for p in map(Path, paths):
        if p.exists() or p.is_symlink():
            raise InputError(f"{p} already exists; choose another output path or overwrite it "
                             "(overwrite=True, --overwrite)")


def _sibling(path, tag: str) -> Path:
    """``pred.ome.tif`` -> ``pred_std.ome.tif``; ``pred.zarr`` -> ``pred_std.zarr``."""
    p = Path(path)
    name = p.name.rstrip("/\\")
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
        if low.endswith(suffix):
            return p.with_name(name[: -len(suffix)] + tag + name[-len(suffix):])
    raise InputError(f"{path}: a prediction is saved as .tif/.tiff or .zarr")


def _jsonable(obj):
    """Plain JSON types (numpy scalars and tuples converted)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item")
                                 else list(o) if isinstance(o, (tuple, set)) else str(o)))


def _set_zarr_meta(path: Path, meta: dict) -> None:
    import zarr

    # The writer moved the finished store into place already; adding one attribute afterwards
    # cannot leave the image itself half-written.
    node = zarr.open(str(path), mode="r+")
    node.attrs["musplit"] = meta


def _read_meta(path: Path, kind: str) -> dict:
    if kind == "zarr":
        import zarr

        return dict(zarr.open(str(path), mode="r").attrs.get("musplit", {}))
    import tifffile

    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata
    if not xml:
        return {}
    for el in ET.fromstring(xml).iter():
        if el.tag.endswith("Description") and el.text:
            try:
                return json.loads(el.text)
            except json.JSONDecodeError:
                return {}
    return {}


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def default_grid(config: Config) -> int:
    """Tile size ``G`` used when neither the call nor ``config.predict.grid`` chooses one.

    * Deep-LC: ``G = P`` (no padding). Its context makes padding nearly useless
      (+0.02 dB, spec 11.4 Table S.1; spec 11.5 item 4), and the paper tiles it that way.
    * Every other variant: ``G = P/2`` (32 at ``P = 64``, the margin the reference notebooks
      use). Inner padding costs ``(P/G)**2`` patches per tile: 4x at ``G = P/2`` against 16x
      at the paper's grid-searched ``G = 16``, for most of the gain (Vanilla +0.33 dB,
      Lean-LC +0.18 dB between no padding and 24-px padding, Table S.1). For paper numbers
      pass ``grid=16`` (the ``paper-*`` presets set it).

    ``G`` is rounded down so that ``P - G`` is even (the margin must be whole pixels).

    Parameters
    ----------
    config : Config

    Returns
    -------
    int
    """
    p = int(config.data.patch)
    if config.model.lc == "deep":
        return p
    g = p // 2
    if (p - g) % 2:
        g -= 1
    return g if g >= 2 else p


@dataclass(frozen=True)
class Tiling:
    """Tile geometry of one prediction (spec 8.1).

    Attributes
    ----------
    padding : str
        ``"inner"``, ``"outer"`` or ``"none"``.
    patch : int
        ``P_eval``, the side of the patches the network sees.
    grid : int
        ``G``, the side of a tile (the stride of the tile grid).
    margin : int
        ``p = (P_eval - G)/2``.
    halo : int
        ``b``: with blending, each patch keeps ``G + 2b`` (spec 8.4); 0 without.
    blend : str
        ``"none"``, ``"linear"`` or ``"cosine"``.
    cover : bool
        ``ceil`` tile counts (every pixel, spec 8.3) or ``floor`` (the reference, spec 8.2).
    """

    padding: str
    patch: int
    grid: int
    margin: int
    halo: int = 0
    blend: str = "none"
    cover: bool = True

    @property
    def keep(self) -> int:
        """Side of the region kept from each patch: ``G + 2b``."""
        return self.grid + 2 * self.halo

    @property
    def offset(self) -> int:
        """Row/column of the kept region inside the patch: ``p - b``."""
        return self.margin - self.halo

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """Tiles per frame ``(rows, cols)``."""
        rnd = math.ceil if self.cover else math.floor
        return rnd(height / self.grid), rnd(width / self.grid)

    def corners(self, height: int, width: int) -> np.ndarray:
        """Top-left patch corners ``(n_tiles, 2)``, row-major (spec 8.2 step 2)."""
        return tile_corners(height, width, self.patch, self.grid, cover=self.cover)

    def weights(self) -> np.ndarray:
        """Separable 1-D blending weights over the kept region, float32 ``(G + 2b,)``.

        A ramp of width ``2b`` at each end (the overlap of neighbouring kept regions), so that
        neighbours' weights sum to 1 in the overlap; positive everywhere (spec 8.4).
        """
        k, b = self.keep, self.halo
        if b == 0 or self.blend == "none":
            return np.ones(k, dtype=np.float32)
        t = (np.arange(k, dtype=np.float64) + 0.5) / (2 * b)
        ramp = np.minimum(np.minimum(t, t[::-1]), 1.0)
        if self.blend == "cosine":
            ramp = 0.5 - 0.5 * np.cos(np.pi * ramp)
        return ramp.astype(np.float32)

    def as_meta(self) -> dict:
        return {"padding": self.padding, "grid": self.grid, "eval_patch": self.patch,
                "margin": self.margin, "blend": self.blend, "blend_width": self.halo,
                "paper_geometry": not self.cover}


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def make_tiling(
    config: Config,
    padding: str = "inner",
    grid: int | None = None,
    *,
    blend: str | None = None,
    blend_width: int | None = None,
    paper_geometry: bool = False,
) -> Tiling:
    """Resolve the tile geometry of a prediction (spec 8.1-8.4).

    Parameters
    ----------
    config : Config
        Training configuration (``data.patch`` is the training ``P``).
    padding : {"inner", "outer", "none"}
    grid : int, optional
        ``G`` for inner padding; for outer padding the margin is ``(P - grid)/2``. Default
        ``config.predict.grid``, else :func:`default_grid`. Ignored (with a warning) for
        ``padding="none"``, which tiles with ``G = P``.
    blend : {"none", "linear", "cosine"}, optional
        Default ``config.predict.blend``.
    blend_width : int, optional
        ``b <= p``, default ``p // 2`` (spec 8.4).
    paper_geometry : bool
        The reference's floor tile counts (remainder left 0, spec 8.2); no blending.

    Returns
    -------
    Tiling

    Raises
    ------
    InputError
        For a grid that does not fit the patch, an unknown mode, or a bad blend width.
    """
    p_train = int(config.data.patch)
    if padding not in PADDINGS:
        raise InputError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if grid is not None and (not _is_int(grid) or grid < 1):
        raise InputError(f"grid must be a positive integer, got {grid!r}")
    blend = config.predict.blend if blend is None else blend
    if blend not in BLENDS:
        raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
    if padding == "none":
        if grid is not None and grid != p_train:
            # Not an error: callers pass config.predict.grid along with any padding.
            log.warning("padding='none' tiles with G = P = %d; grid=%d is ignored", p_train, grid)
        g = p_train
    else:
        g = grid if grid is not None else config.predict.grid
        g = default_grid(config) if g is None else int(g)
    if g > p_train or (p_train - g) % 2:
        raise InputError(
            f"grid {g} does not fit the training patch {p_train}: it must be <= {p_train} with "
            f"an even difference (the margin (P - G)/2 must be a whole number of pixels)"
        )
    margin = (p_train - g) // 2
    if padding == "outer":  # patches P + 2p, tiles P (spec 8.1)
        patch, tile = p_train + 2 * margin, p_train
    else:
        patch, tile = p_train, g
    halo = 0
    if blend != "none":
        if paper_geometry:
            raise InputError("paper_geometry reproduces the reference, which does not blend")
        halo = margin // 2 if blend_width is None else blend_width
        if not _is_int(halo) or not 0 <= halo <= margin:
            raise InputError(f"blend_width must be an integer in [0, {margin}] (the margin), "
                             f"got {blend_width!r}")
        if halo == 0:
            log.info("blend=%r with no margin to blend over: tiles are not blended", blend)
    return Tiling(padding, int(patch), int(tile), int(margin), int(halo),
                  blend if halo else "none", cover=not paper_geometry)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def input_clip(stats: NormStats) -> float:
    """Upper clip for a superimposed input (spec 1.1, 5.3).

    A per-channel clip gives its maximum; a summed input (``input_is_sum``) is bounded by the
    sum of the channels' clips, as the mix of clipped training targets is.
    """
    c = stats.clip_max
    vals = [float(v) for v in c] if isinstance(c, (list, tuple)) else [float(c)] * stats.n_channels
    return float(sum(vals)) if stats.input_is_sum else float(max(vals))


class _Prepared:
    """Lazy ``(N, H, W)`` view of the input: frame ``i`` scaled and clipped, float32.

    :class:`ContextStack` reads frames through this one at a time, so the input is never copied
    as a whole (spec 1.1: ``input_scale``; spec 5.3: clip before the pyramid).
    """

    def __init__(self, frames, clip: float, scale: float):
        self._frames, self._clip, self._scale = frames, np.float32(clip), np.float32(scale)
        self.shape = tuple(int(v) for v in frames.shape)

    def __getitem__(self, i: int) -> np.ndarray:
        f = self._frames[int(i)]
        f = np.array(f, dtype=np.float32)  # a copy: the caller's array is never modified
        if not np.isfinite(f).all():
            raise InputError(f"input frame {i} contains {int(np.sum(~np.isfinite(f)))} NaN or "
                             "Inf pixels; clean the image first")
        if self._scale != 1:
            f *= self._scale
        np.minimum(f, self._clip, out=f)
        return f


def _as_frames(image) -> Any:
    """``(N, H, W)`` array-like from ``(H, W)`` or ``(N, H, W)``; checks dtype and values."""
    shape = tuple(getattr(image, "shape", ()))
    if not shape and not isinstance(image, (list, tuple)):
        raise InputError(f"image must be an array of shape (H, W) or (N, H, W), got "
                         f"{type(image).__name__}")
    if not shape or isinstance(image, (list, tuple)):
        image = np.asarray(image)
        shape = image.shape
    if len(shape) not in (2, 3):
        raise InputError(
            f"image must have shape (H, W) or (N, H, W) (one superimposed channel), got "
            f"{shape}; select the channel first"
        )
    if any(s < 1 for s in shape):
        raise InputError(f"image is empty: shape {shape}")
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if dtype.kind not in "fiu":
        raise InputError(f"image must be real-valued numbers, got dtype {dtype}")
    if len(shape) == 2:
        image = image[None] if isinstance(image, np.ndarray) else _AddAxis(image)
    if isinstance(image, np.ndarray):  # in memory: check all values now, frame by frame
        for i in range(image.shape[0]):
            bad = image.dtype.kind == "f" and not np.isfinite(image[i]).all()
            if bad:
                n = int(np.sum(~np.isfinite(image[i])))
                raise InputError(f"input frame {i} contains {n} NaN or Inf pixels; clean the "
                                 "image first")
    return image


class _AddAxis:
    """``(H, W)`` array-like seen as ``(1, H, W)`` (zarr arrays, memory maps)."""

    def __init__(self, a):
        self._a, self.shape, self.dtype = a, (1, *a.shape), getattr(a, "dtype", None)

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if int(idx[0]) != 0:
            raise IndexError(idx[0])
        return self._a[idx[1:]] if len(idx) > 1 else self._a[...]


# ---------------------------------------------------------------------------------------------
# The engine: batches of patches -> MMSE tiles
# ---------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _first(out) -> torch.Tensor:
    """The likelihood parameters: the output itself or its first element (DESIGN contract)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    params = getattr(out, "params", None)
    if isinstance(params, torch.Tensor):
        return params
    raise ConfigError(f"the model returned {type(out).__name__}; expected a tensor "
                      "(B, 2C, H, W) or a tuple whose first element is one")


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg
                                            or "can't allocate memory" in msg)


@dataclass
class _TileBatch:
    """One batch of tiles, channels last, float32 numpy: ``(K, g, g, C)`` each."""

    mean: np.ndarray
    std: np.ndarray | None
    aleatoric: np.ndarray | None
    samples: np.ndarray | None  # (K, g, g, keep*C), sample-major channels


class _Engine:
    """Runs batches of LC stacks through a model and returns MMSE tiles (spec 8.5)."""

    def __init__(self, model: nn.Module, stats: NormStats, tiling: Tiling, *, samples: int,
                 seed: int, sample_mode: str | None, sample_batch: int | None,
                 batch_size: int, keep_samples: int, aleatoric: bool, normalized: bool,
                 amp: str | None, channels_last: bool = False, consistent: bool = False,
                 out_scale: float = 1.0):
        self.model, self.stats, self.tiling = model, stats, tiling
        self.out_scale = float(out_scale)  # intensity outputs times this (brightness="match")
        self.consistent = bool(consistent)
        self.n_channels = stats.n_channels
        self.samples, self.keep_samples = samples, keep_samples
        self.batch_size, self.sample_batch = batch_size, sample_batch
        self.sample_mode, self.aleatoric, self.normalized = sample_mode, aleatoric, normalized
        self.channels_last = channels_last
        self.device = _device_of(model)
        # Noise for the latents: one generator on the model's device, seeded once, consumed
        # batch after batch (spec ecosystem PRED-4: same seed, same hardware -> same output).
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.has_encoder = callable(getattr(model, "encode", None)) and \
            callable(getattr(model, "decode", None))
        self.has_sample_many = callable(getattr(model, "sample_many", None))
        mode = sample_mode or getattr(model, "sample_mode", "sample")
        # A LadderVAE in eval mode is deterministic when it is an HAE or samples z = mu_q; any
        # module may declare `stochastic = False` (U-Nets). Then one pass is every sample.
        self.deterministic = getattr(model, "stochastic", True) is False or (
            hasattr(model, "stochastic") and mode == "mean")
        if sample_mode not in (None, "sample", "mean"):
            raise InputError(f"sample_mode must be 'sample', 'mean' or None, got {sample_mode!r}")
        self.amp = None
        if amp == "fp32":
            amp = None
        if amp is not None:
            if amp not in AMP_DTYPES:
                raise InputError(f"amp must be one of {tuple(AMP_DTYPES)} or None, got {amp!r}")
            self.amp = AMP_DTYPES[amp]
            if not fast_precision(amp, self.device):
                need = ("a GPU of the Ampere generation or later" if self.device.type == "cuda"
                        else "AVX512-BF16 or AMX" if amp == "bf16" else "AMX-FP16")
                log.warning("%s is emulated on this %s (it needs %s): expect it to be slower "
                            "than fp32", amp, self.device.type.upper(), need)
        m = np.float32(stats.input_mean)
        s = np.float32(stats.input_std)
        self._in_mean, self._in_std = m, s

    # -- model calls ---------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _draws(self, x: torch.Tensor, n: int) -> Iterable[torch.Tensor]:
        """Yield ``(k, B, 2C, H, W)`` float32 chunks of posterior samples, ``n`` in total.

        The encoder runs once for all ``n`` (spec 8.5 "Efficiency"): the encoder state is
        repeated ``k`` times along the batch axis and decoded; ``k`` is at most
        ``sample_batch`` (default: as many as keep the decoder batch within ``batch_size``).
        """
        b = x.shape[0]
        k_max = self.sample_batch or max(1, self.batch_size // max(b, 1))
        k_max = min(k_max, n)
        if self.has_encoder:
            with self._autocast():
                state = self.model.encode(x)
            kwargs = {"noise": self.generator, "compute_kl": False}
            if self.sample_mode is not None:
                kwargs["sample_mode"] = self.sample_mode
            done = 0
            while done < n:
                k = min(k_max, n - done)
                with self._autocast():
                    out = self.model.decode(state if k == 1 else state.repeat(k), **kwargs)
                p = _first(out).float()
                yield p.reshape(k, b, *p.shape[1:])
                done += k
        elif self.has_sample_many:
            done = 0
            while done < n:
                k = min(k_max, n - done)
                with self._autocast():
                    p = self.model.sample_many(x, k, noise=self.generator, batch=k)
                yield p.float()
                done += k
        else:
            for _ in range(n):
                with self._autocast():
                    p = _first(self.model(x))
                yield p.float()[None]

    def _consistent(self, mu: torch.Tensor, ell: torch.Tensor, x0: torch.Tensor):
        """Condition each sample's Gaussian on the observed mix (``predict.consistent``).

        In intensity units the input is ``sum_c w_c t_c`` (``w`` = alpha, or 1 for a summed
        input), so in normalised units ``sum_c b_c y_c = r0`` with ``b_c = w_c s_c`` and
        ``r0 = s_in x + m_in - sum_c w_c m_c``. For independent Gaussians ``y_c ~ N(mu_c, v_c)``
        the conditional mean is ``mu_c + b_c v_c (r0 - sum_k b_k mu_k) / sum_k b_k^2 v_k`` and
        the conditional variance ``v_c - (b_c v_c)^2 / sum_k b_k^2 v_k``: the residual goes to
        the channels the model is least sure of, and the channels add up to the input.
        """
        st = self.stats
        w = np.ones(self.n_channels) if st.input_is_sum else np.asarray(st.alpha, dtype=float)
        b = torch.tensor(w * np.asarray(st.target_std), dtype=mu.dtype, device=mu.device)
        m = float(np.dot(w, st.target_mean))
        b = b.view(1, 1, -1, 1, 1)
        v = torch.exp(ell)
        r0 = x0.to(mu.dtype) * float(self._in_std) + (float(self._in_mean) - m)  # (B, g, g)
        resid = r0[None] - (b * mu).sum(2)  # (k, B, g, g)
        denom = (b * b * v).sum(2).clamp_min(1e-12)
        gain = b * v / denom[:, :, None]
        mu = mu + gain * resid[:, :, None]
        v = (v - gain * b * v).clamp_min(1e-12 * v)
        return mu, torch.log(v)

    def tiles(self, x_np: np.ndarray) -> _TileBatch:
        """MMSE tiles of one batch of normalised LC stacks ``(B, S, P, P)``."""
        c, t = self.n_channels, self.tiling
        lo, hi = t.offset, t.offset + t.keep
        x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n_total = 1 if self.deterministic else self.samples
        n = 0
        mean = m2 = alea = None
        kept: list[torch.Tensor] = []
        try:
            for p in self._draws(x, n_total):
                if p.shape[2] != 2 * c or p.shape[-2:] != x.shape[-2:]:
                    raise ConfigError(
                        f"the model returned {tuple(p.shape[1:])} per sample for input "
                        f"{tuple(x.shape)}; expected ({x.shape[0]}, {2 * c}, {x.shape[-2]}, "
                        f"{x.shape[-1]}) (means and log-variances of {c} channels)"
                    )
                p = p[..., lo:hi, lo:hi]  # only the kept region enters the statistics
                mu, ell = p[:, :, :c], p[:, :, c:]
                if self.consistent:
                    mu, ell = self._consistent(mu, ell, x[:, 0, lo:hi, lo:hi])
                k = mu.shape[0]
                # Chan's parallel update of (count, mean, M2): exact Welford when k == 1.
                bm = mu.mean(0) if k > 1 else mu[0]
                bm2 = (mu - bm).square_().sum(0) if k > 1 else None
                if mean is None:
                    mean, m2 = bm, bm2
                else:
                    delta = bm - mean
                    tot = n + k
                    mean = mean + delta * (k / tot)
                    inc = delta.square_().mul_(n * k / tot)
                    m2 = inc if m2 is None else m2 + inc
                    if bm2 is not None:
                        m2 = m2 + bm2
                if self.aleatoric:
                    e = torch.exp(ell).sum(0) if k > 1 else torch.exp(ell[0])
                    alea = e if alea is None else alea + e
                if n < self.keep_samples:
                    kept.append(mu[: self.keep_samples - n])
                n += k
        except MusplitError:
            raise
        except Exception as e:
            if _is_oom(e):
                raise MusplitError(
                    f"out of memory on {self.device} predicting {x.shape[0]} patches of "
                    f"{x.shape[-1]}x{x.shape[-1]}: use a smaller batch_size (e.g. "
                    f"{max(1, x.shape[0] // 2)}), a larger grid, or sample_batch=1"
                ) from None
            raise

        def hwc(v: torch.Tensor) -> np.ndarray:  # (B, C, g, g) -> (B, g, g, C) numpy
            return v.permute(0, 2, 3, 1).contiguous().cpu().numpy()

        std = None
        if self.samples > 1:
            std = torch.zeros_like(mean) if m2 is None else m2.div_(n).sqrt_()
        out = _TileBatch(hwc(mean), None if std is None else hwc(std),
                         None if alea is None else hwc(alea.div_(n).sqrt_()), None)
        if kept:
            ks = torch.cat(kept, 0)  # (k, B, C, g, g)
            if self.deterministic:  # one pass stands for every kept sample
                ks = ks.expand(self.keep_samples, *ks.shape[1:])
            ks = ks.permute(1, 3, 4, 0, 2).reshape(ks.shape[1], *ks.shape[-2:], -1)
            out.samples = ks.contiguous().cpu().numpy()
        if not self.normalized:  # back to intensity units, per batch: no full-size temporary
            st = self.stats
            out.mean = st.denormalize_target(out.mean, axis=-1)
            if out.std is not None:
                out.std = st.denormalize_std(out.std, axis=-1)
            if out.aleatoric is not None:
                out.aleatoric = st.denormalize_std(out.aleatoric, axis=-1)
            if out.samples is not None:
                s = out.samples.reshape(*out.samples.shape[:3], -1, c)
                out.samples = st.denormalize_target(s, axis=-1).reshape(out.samples.shape)
            if self.out_scale != 1:
                f = np.float32(self.out_scale)
                for name in ("mean", "std", "aleatoric", "samples"):
                    v = getattr(out, name)
                    if v is not None:
                        v *= f
        return out

    def run(self, stack: ContextStack, frame_idx: np.ndarray, corners: np.ndarray,
            sink: Callable[[np.ndarray, np.ndarray, _TileBatch], None], bar=None) -> None:
        """Predict the patches ``corners`` of ``frame_idx`` (stack coordinates), batch by
        batch; ``sink(frames, corners, tiles)`` places each batch before the next is built."""
        for a in range(0, len(corners), self.batch_size):
            f, c = frame_idx[a : a + self.batch_size], corners[a : a + self.batch_size]
            x = stack.crops(f, c)  # (B, S, P, P) in intensity units, padded as in training
            # Normalise after the padding, which happened in intensity units (spec 5.4, 5.7).
            x -= self._in_mean
            x /= self._in_std
            sink(f, c, self.tiles(x))
            if bar is not None:
                bar.update(1)


# ---------------------------------------------------------------------------------------------
# Stitching
# ---------------------------------------------------------------------------------------------
class _Canvas:
    """Output arrays ``(N, H, W, X)`` and the vectorised placement of tiles into them.

    ``origin`` is the canvas position in frame coordinates (nonzero for the blocks of
    :func:`predict_to_zarr`). Without blending each batch is one fancy-indexed assignment per
    array; with blending, weighted values and weights are accumulated with ``index_add_`` and
    divided at the end (spec 8.4).
    """

    def __init__(self, n: int, height: int, width: int, widths: dict[str, int], tiling: Tiling,
                 origin: tuple[int, int] = (0, 0)):
        self.shape = (n, height, width)
        self.tiling, self.origin = tiling, origin
        # np.zeros: the paper geometry's unpredicted remainder stays 0 (spec 8.2 step 4).
        self.arrays = {k: np.zeros((n, height, width, w), dtype=np.float32)
                       for k, w in widths.items()}
        self.blend = tiling.blend != "none"
        if self.blend:
            self.weight = np.zeros((n, height, width), dtype=np.float32)
            w1 = tiling.weights()
            self._w2 = np.outer(w1, w1).astype(np.float32)  # (keep, keep), separable ramp

    def place(self, frames: np.ndarray, corners: np.ndarray, tiles: _TileBatch) -> None:
        t = self.tiling
        n, h, w = self.shape
        j = np.arange(t.keep, dtype=np.int64)
        rows = corners[:, 0, None] + (t.offset - self.origin[0]) + j  # (K, keep) canvas rows
        cols = corners[:, 1, None] + (t.offset - self.origin[1]) + j
        ok_r, ok_c = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        flat = (frames[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
        mask = None
        if not (ok_r.all() and ok_c.all()):  # border tiles: drop what lies off the canvas
            mask = ok_r[:, :, None] & ok_c[:, None, :]
            flat = flat[mask]
        else:
            flat = flat.reshape(-1)
        values = {"mean": tiles.mean, "std": tiles.std, "aleatoric_std": tiles.aleatoric,
                  "samples": tiles.samples}
        if self.blend:
            wt = np.broadcast_to(self._w2, (len(frames), t.keep, t.keep))
            wt = wt[mask] if mask is not None else wt.reshape(-1)
            idx = torch.from_numpy(flat)
            torch.from_numpy(self.weight.reshape(-1)).index_add_(0, idx, torch.from_numpy(
                np.ascontiguousarray(wt)))
        for name, arr in self.arrays.items():
            v = values[name]
            v = v[mask] if mask is not None else v.reshape(-1, v.shape[-1])
            dst = arr.reshape(-1, arr.shape[-1])
            if self.blend:
                torch.from_numpy(dst).index_add_(0, idx, torch.from_numpy(v * wt[:, None]))
            else:
                dst[flat] = v

    def finish(self) -> dict[str, np.ndarray]:
        if self.blend:
            wsum = self.weight[..., None]
            for arr in self.arrays.values():
                np.divide(arr, wsum, out=arr, where=wsum > 0)
        return self.arrays


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
#: An image whose brightness (99.9th percentile) differs from the training mixes' by more than
#: this factor is refused (``predict.brightness = "check"``) or rescaled (``"match"``).
BRIGHTNESS_TOLERANCE = 2.0
BRIGHTNESS_MODES = ("check", "match", "off")


def _sample_pixels(read, n: int, h: int, w: int, budget: int = 4_000_000,
                   window: int = 128) -> np.ndarray:
    """Pixels for the brightness check: up to 8 frames evenly spaced, about ``budget`` pixels
    in all. A frame within its share is read whole; a larger one as a grid of ``window``-px
    windows spread evenly over it, so memory is set by the budget, not by the frame (the
    streaming path stays bounded). Sparse content (a few bright foci) is where a small sample
    misleads, so the sample is as large as the budget allows."""
    picks = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
    share = budget // len(picks)
    if h * w <= share:
        boxes = [(slice(0, h), slice(0, w))]
    else:
        wy, wx = min(h, window), min(w, window)
        g = max(2, int(math.sqrt(share / (wy * wx))))
        ys = np.unique(np.linspace(0, h - wy, g).round().astype(int))
        xs = np.unique(np.linspace(0, w - wx, g).round().astype(int))
        boxes = [(slice(y, y + wy), slice(x, x + wx)) for y in ys for x in xs]
    out = [np.asarray(read(int(i), ys, xs), dtype=np.float32).ravel()
           for i in picks for ys, xs in boxes]
    return np.concatenate(out)


def brightness_factor(pixels, stats: NormStats, mode: str = "check") -> float:
    """The factor that brings an image to the brightness of the training mixes.

    ``pixels`` is an array of the image's pixels, or a function that returns one (called only
    when there is something to compare with, so ``"off"`` and old checkpoints read nothing).

    The brightness is read at the 99th and 99.9th percentiles (after ``input_scale``) and
    compared with those recorded in ``stats.extra`` at training time. A wrong global scale
    (the sum given to a model trained on the mean, another detector gain, 8-bit against
    16-bit) moves both by the same factor; different content (a region with more or fewer
    sparse foci) moves mostly the top one. So the image counts as at another brightness only
    when every recorded quantile is off by more than :data:`BRIGHTNESS_TOLERANCE` in the same
    direction; the factor is their geometric mean. Then ``mode="check"`` raises
    :class:`InputError` with the reason and the fixes, ``mode="match"`` returns the factor (and
    logs it), ``mode="off"`` returns 1.0; otherwise 1.0 is returned. Quantiles at or below 0
    (an empty background) are not compared; checkpoints written before musplit recorded the
    training brightness are not checked.
    """
    if mode not in BRIGHTNESS_MODES:
        raise InputError(f"brightness must be one of {BRIGHTNESS_MODES}, got {mode!r}")
    extra = stats.extra or {}
    refs = [(q, extra.get(key)) for q, key in zip(BRIGHTNESS_QUANTILES,
                                                  ("input_q99", "input_q999"), strict=True)]
    refs = [(q, float(r)) for q, r in refs if r is not None and r > 0]
    if mode == "off" or not refs:
        return 1.0
    pixels = np.asarray(pixels() if callable(pixels) else pixels)
    if pixels.size == 0:
        return 1.0
    found = np.quantile(pixels, [q for q, _ in refs])
    pairs = [(q, float(v), r) for (q, r), v in zip(refs, found, strict=True) if v > 0]
    if not pairs:
        return 1.0  # an empty (all-zero) image: nothing to compare
    ratios = [v / r for _, v, r in pairs]
    brighter = all(x > BRIGHTNESS_TOLERANCE for x in ratios)
    dimmer = all(x < 1 / BRIGHTNESS_TOLERANCE for x in ratios)
    if not (brighter or dimmer):
        return 1.0
    r = float(np.exp(np.mean(np.log(ratios))))
    how = f"{r:.2f}x brighter" if r > 1 else f"{1 / r:.2f}x dimmer"
    seen = ", ".join(f"{100 * q:g}th percentile {v:.4g} vs {ref:.4g}" for q, v, ref in pairs)
    if mode == "match":
        log.warning("the image is %s than the mixes the model was trained on (%s): rescaled by "
                    "%.4g to the training brightness; the channels are returned in the image's "
                    "units", how, seen, 1 / r)
        return 1.0 / r
    hint = ""
    c = stats.n_channels
    if not stats.input_is_sum and abs(r - c) / c < 0.25:
        hint = (f"; the model was trained on the mean of its {c} channels, and a superimposed "
                f"acquisition records their sum (train with data.input_is_sum, or pass "
                f"--input-scale {1 / c:g})")
    raise InputError(
        f"the image is {how} than the mixes the model was trained on ({seen}){hint}; a split "
        "at another brightness is not reliable. Pass --brightness match (brightness='match') "
        "to rescale it to the training brightness, --input-scale to give the factor yourself, "
        "or --brightness off if the difference is real content")


def _check_common(config, stats, samples, batch_size, seed, keep_samples, input_scale,
                  sample_batch):
    if not isinstance(config, Config):
        raise ConfigError(f"config must be a musplit Config, got {type(config).__name__}")
    if not isinstance(stats, NormStats):
        raise ConfigError("prediction needs the training normalisation statistics (NormStats); "
                          "the checkpoint carries none")
    if stats.n_channels != config.model.out_channels:
        raise ConfigError(f"the statistics describe {stats.n_channels} channels, the model "
                          f"predicts {config.model.out_channels}")
    for name, v, lo in (("samples", samples, 1), ("batch_size", batch_size, 1),
                        ("keep_samples", keep_samples, 0)):
        if not _is_int(v) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    if sample_batch is not None and (not _is_int(sample_batch) or sample_batch < 1):
        raise InputError(f"sample_batch must be a positive integer or None, got {sample_batch!r}")
    if keep_samples > samples:
        raise InputError(f"keep_samples ({keep_samples}) cannot exceed samples ({samples})")
    if not _is_int(seed):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if not (isinstance(input_scale, (int, float, np.floating)) and math.isfinite(input_scale)
            and input_scale > 0):
        raise InputError(f"input_scale must be a positive number, got {input_scale!r}")


def _channel_names(config: Config, stats: NormStats, names) -> list[str]:
    c = stats.n_channels
    if names is None:
        names = config.data.channel_names or [f"channel_{k}" for k in range(c)]
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    if len(names) != c:
        raise InputError(f"{len(names)} channel names given for {c} channels: {names}")
    return names


def _probe(model: nn.Module, tiling: Tiling, scales: int, device: torch.device) -> None:
    """Outer padding runs the network at a size it was not trained at (spec 2.11): check once,
    on one zero patch, that it can, and say so clearly if not."""
    x = torch.zeros(1, scales, tiling.patch, tiling.patch, device=device)
    try:
        p = _first(model(x))
    except (InputError, ValueError, RuntimeError) as e:
        if _is_oom(e):
            raise
        raise InputError(
            f"this model cannot take {tiling.patch}x{tiling.patch} patches (outer padding with "
            f"margin {tiling.margin}): {str(e).splitlines()[0]}; use padding='inner' or 'none'"
        ) from None
    if p.shape[-2:] != x.shape[-2:]:
        raise InputError(f"the model maps {tiling.patch}x{tiling.patch} patches to "
                         f"{tuple(p.shape[-2:])}; outer padding needs the same size back")


@contextlib.contextmanager
def _eval_mode(model: nn.Module, device: torch.device, seed: int):
    """Eval mode and inference mode for the call; the caller's training flag and global RNG
    state (seeded here for models that draw from it) are restored afterwards."""
    was_training = model.training
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(int(seed))
            model.eval()
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _memory_format(model: nn.Module, channels_last: bool):
    """Run the model in channels-last layout (about 1.7x faster convolutions on CPU here, and
    what cuDNN prefers), converting back afterwards if it was not channels-last before."""
    conv = next((p for p in model.parameters() if p.ndim == 4), None)
    if not channels_last or conv is None or \
            conv.is_contiguous(memory_format=torch.channels_last):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", desc=desc)


def fast_precision(amp: str | None, device: torch.device | str = "cpu") -> bool:
    """Whether autocast to ``amp`` runs on hardware made for it on ``device``.

    Always True for fp32 (``None``). On a CPU, bf16 needs AVX512-BF16 or AMX and fp16 needs
    AMX-FP16; elsewhere PyTorch emulates them, usually slower than fp32. On CUDA, fp16 is
    always native and bf16 from Ampere on; other devices are assumed to have what they offer.
    """
    device = torch.device(device)
    if amp in (None, "fp32"):
        return True
    if device.type == "cuda":
        return amp == "fp16" or bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return True
    cpu = torch.cpu

    def has(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if callable(fn) else False
        except Exception:  # a probe that fails means: not known to be there
            return False

    if amp == "bf16":
        return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")
    return has("_is_amx_fp16_supported")


def _settings(config, stats, tiling, *, samples, seed, sample_mode, normalized, input_scale,
              model, amp: str | None = None) -> dict:
    from musplit import __version__

    mode = sample_mode or getattr(model, "sample_mode", None)
    return {
        **tiling.as_meta(),
        "precision": "fp32" if amp in (None, "fp32") else amp,
        "samples": int(samples),
        "seed": int(seed),
        "sample_mode": mode,
        "std_ddof": 0,
        "units": "normalised" if normalized else "intensity",
        "patch": int(config.data.patch),
        "scales": int(config.data.scales),
        "pad": config.data.pad,
        "lc_alignment": config.data.lc_alignment,
        "input_scale": float(input_scale),
        "consistent": bool(config.predict.consistent),
        "clip": input_clip(stats),
        "stats": stats.to_dict(),
        "model": {"kind": config.model.kind, "lc": config.model.lc},
        "musplit_version": __version__,
    }


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
    progress: bool = False,
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
) -> Prediction:
    """Split a superimposed image into its channels by tiled prediction (spec 8).

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
        ``(x1 + x2)/2`` (spec 1.1; the sum for a model trained with ``input_is_sum``). For a
        real single-channel acquisition pass ``input_scale`` if its scale differs. Arrays read
        lazily per frame (zarr, memory maps) work.
    padding : {"inner", "outer", "none"}
        Tiling scheme (module docstring, spec 8.1).
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
        Return normalised target units (for metrics, spec 9) instead of intensity units.
    progress : bool
        A tqdm bar over batches.
    paper_geometry : bool
        The reference tiling, ``floor(H/G) x floor(W/G)`` tiles, remainder 0 (spec 8.2).
    blend : {"none", "linear", "cosine"}, optional
        Blend overlapping tile borders (spec 8.4); default ``config.predict.blend``. With
        blending the std is the weighted blend of per-tile stds (an approximation).
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
        Multiplies the image before clipping (spec 1.1).
    brightness : {"check", "match", "off"}, optional
        Compare the image's brightness with the training mixes' (:func:`brightness_factor`);
        default ``config.predict.brightness``. With ``"match"`` the image is rescaled to the
        training brightness and the channels are scaled back, so they stay in the image's
        units; the factor is recorded in ``meta["brightness_factor"]``.
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
    aleatoric = aleatoric and getattr(model, "predicts_variance", True) is not False
    tiling = make_tiling(config, padding, grid, blend=blend, blend_width=blend_width,
                         paper_geometry=paper_geometry)
    names = _channel_names(config, stats, channel_names)
    frames = _as_frames(image)
    n, h, w = (int(v) for v in frames.shape)
    factor = brightness_factor(
        lambda: _sample_pixels(lambda i, ys, xs: frames[i, ys, xs], n, h, w) * input_scale,
        stats, brightness or config.predict.brightness)
    input_scale = input_scale * factor
    c = stats.n_channels
    rows, cols = tiling.shape(h, w)
    per_frame = rows * cols
    if per_frame == 0:
        log.warning("paper geometry: a %dx%d frame holds no %d-px tile; the output is all 0",
                    h, w, tiling.grid)
    # Tiles frame-major, row-major inside a frame (spec 8.2 step 1 orders frames minor; the
    # order does not change the result and frame-major keeps few frames' context in memory).
    corners1 = tiling.corners(h, w)
    total = n * per_frame
    frame_idx = np.repeat(np.arange(n, dtype=np.int64), per_frame)
    corners = np.tile(corners1, (n, 1)) if total else np.zeros((0, 2), dtype=np.int64)
    # Context of at most the frames one batch touches, computed on first use (LRU).
    cache = min(n, -(-max(batch_size - 1, 0) // max(per_frame, 1)) + 1)
    stack = ContextStack(_Prepared(frames, input_clip(stats), input_scale),
                         tiling.patch, config.data.scales, config.data.pad,
                         config.data.lc_alignment, cache_frames=cache)
    widths = {"mean": c}
    if samples > 1:
        widths["std"] = c
    if aleatoric:
        widths["aleatoric_std"] = c
    if keep_samples:
        widths["samples"] = keep_samples * c
    canvas = _Canvas(n, h, w, widths, tiling)
    engine = _Engine(model, stats, tiling, samples=samples, seed=seed, sample_mode=sample_mode,
                     sample_batch=sample_batch, batch_size=batch_size,
                     keep_samples=keep_samples, aleatoric=aleatoric, normalized=normalized,
                     amp=amp, channels_last=channels_last, consistent=config.predict.consistent,
                     out_scale=1.0 / factor)
    n_batches = -(-total // batch_size)
    log.info("predicting %d frame(s) of %dx%d: %d tiles of %d px (patch %d, %s padding), "
             "%d sample(s), %d batch(es) on %s", n, h, w, total, tiling.grid, tiling.patch,
             tiling.padding, samples, n_batches, engine.device)
    t0 = time.perf_counter()
    bar = _progress(n_batches, progress, "predict")
    try:
        with _eval_mode(model, engine.device, seed), _memory_format(model, channels_last):
            if tiling.padding == "outer" and total:
                _probe(model, tiling, config.data.scales, engine.device)
            engine.run(stack, frame_idx, corners, canvas.place, bar)
    finally:
        if bar is not None:
            bar.close()
    out = canvas.finish()
    seconds = time.perf_counter() - t0
    log.info("predicted %.2f Mpx in %.1f s (%.3f Mpx/s)", n * h * w / 1e6, seconds,
             n * h * w / 1e6 / max(seconds, 1e-9))
    meta = _settings(config, stats, tiling, samples=samples, seed=seed, sample_mode=sample_mode,
                     normalized=normalized, input_scale=input_scale, model=model,
                     amp=amp)
    meta.update(tiles=int(total), batch_size=int(batch_size), seconds=round(seconds, 3),
                brightness_factor=float(factor))
    samp = None
    if keep_samples:
        s = out["samples"].reshape(n, h, w, keep_samples, c)
        samp = np.moveaxis(s, 3, 0)
    return Prediction(out["mean"], out.get("std"), out.get("aleatoric_std"), samp, names,
                      "SYXC", meta, pixel_size)


def _pixel_size(pixel_size) -> tuple[float, float] | None:
    """A validated ``(y, x)`` pixel size in micrometres, or None."""
    from musplit.data.io import _check_pixel_size

    return _check_pixel_size(pixel_size)


def _block_halo(tiling: Tiling, scales: int) -> int:
    """Rows/columns of input a block needs beyond its tiles for exact context (any alignment).

    The scale-``s`` crop of a patch centred at ``c`` reads the full-resolution window
    ``c +- P*2**(s-1)`` plus the filter support of ``s`` halvings (< 6*2**s px; spec 5.5-5.6).
    With this much real data around the block, crops never touch the block's own border, and at
    a frame border the block border *is* the frame border, so padding acts identically.
    """
    s = scales - 1
    return tiling.patch * (2**s) // 2 + 8 * 2**s + tiling.patch


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
    progress: bool = False,
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
) -> Path:
    """Predict an image larger than memory, block by block, into OME-Zarr (ecosystem PRED-2).

    The input is read one block (plus the context halo its lateral context needs) at a time;
    each block's tiles are predicted and written before the next block is read, so memory is
    bounded by the block size, not the frame size. The result equals :func:`predict_image`
    (bit for bit for deterministic models; for sampled ones the noise is drawn in another
    order). No blending.

    Parameters
    ----------
    model, config, stats, padding, grid, samples, batch_size, seed, channel_names, normalized,
    progress, paper_geometry, sample_mode, sample_batch, input_scale, amp, channels_last,
    brightness
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
    from musplit.data.io import ImageSource, ZarrWriter, open_image

    _check_common(config, stats, samples, batch_size, seed, 0, input_scale, sample_batch)
    aleatoric = aleatoric and getattr(model, "predicts_variance", True) is not False
    if _file_kind(out_path) != "zarr":
        raise InputError(f"{out_path}: predict_to_zarr writes a .zarr store")
    tiling = make_tiling(config, padding, grid, blend="none", paper_geometry=paper_geometry)
    names = _channel_names(config, stats, channel_names)
    if not _is_int(block) or block < 1:
        raise InputError(f"block must be a positive integer (pixels), got {block!r}")
    protect = [protect] if isinstance(protect, (str, os.PathLike)) else list(protect or ())
    if isinstance(source, (str, os.PathLike)):
        protect.append(source)
    src = source if isinstance(source, ImageSource) else None
    if src is None and isinstance(source, (str, os.PathLike)):
        src = open_image(source, axes)
    pixel_size = _pixel_size(pixel_size)
    if src is not None:
        if pixel_size is None:
            pixel_size = src.pixel_size
        if channel is None and src.n_channels != 1:
            raise InputError(f"{src.name} has {src.n_channels} channels; pass channel= to "
                             "choose the superimposed one")
        ch = 0 if channel is None else channel

        def read(i, ys, xs):
            return src.read([i], [ch], (ys, xs))[0, ..., 0]

        n, h, w = src.n_frames, src.height, src.width
    else:
        frames = _as_frames(source)
        n, h, w = (int(v) for v in frames.shape)

        def read(i, ys, xs):
            return np.asarray(frames[i, ys, xs])

    factor = brightness_factor(lambda: _sample_pixels(read, n, h, w) * input_scale, stats,
                               brightness or config.predict.brightness)
    input_scale = input_scale * factor
    c = stats.n_channels
    g = tiling.grid
    # Chunks of about 512 px (what viewers read well), aligned with the tile grid; blocks are
    # whole chunks, so every block write fills whole chunks (no read-modify-write).
    chunk = g * max(1, min(512, block) // g)
    bpx = max(chunk, block // chunk * chunk)
    halo = _block_halo(tiling, config.data.scales)
    align = 2 ** (config.data.scales - 1)  # floor alignment: block origins on the pyramid grid
    rows, cols = tiling.shape(h, w)
    bt = bpx // g  # tiles per block side
    blocks = [(f, r0, c0) for f in range(n) for r0 in range(0, rows, bt)
              for c0 in range(0, cols, bt)]
    engine = _Engine(model, stats, tiling, samples=samples, seed=seed, sample_mode=sample_mode,
                     sample_batch=sample_batch, batch_size=batch_size, keep_samples=0,
                     aleatoric=aleatoric, normalized=normalized, amp=amp,
                     channels_last=channels_last, consistent=config.predict.consistent,
                     out_scale=1.0 / factor)
    tags = {"mean": ""}
    if std and samples > 1:
        tags["std"] = "_std"
    if aleatoric:
        tags["aleatoric_std"] = "_aleatoric_std"
    paths = {k: _sibling(out_path, t) for k, t in tags.items()}
    refuse_existing(paths.values(), overwrite)
    clip = input_clip(stats)
    writers: dict[str, ZarrWriter] = {}
    n_batches = sum(-(-min(bt, rows - r0) * min(bt, cols - c0) // batch_size)
                    for _, r0, c0 in blocks)
    bar = _progress(n_batches, progress, "predict")
    t0 = time.perf_counter()
    try:
        for k, p in paths.items():
            writers[k] = ZarrWriter.create(p, (n, h, w, c), "SYXC", names,
                                           chunks=(1, chunk, chunk, 1), overwrite=overwrite,
                                           protect=protect, pixel_size=pixel_size)
        widths = {"mean": c}
        if samples > 1:
            widths["std"] = c
        if aleatoric:
            widths["aleatoric_std"] = c
        with _eval_mode(model, engine.device, seed), _memory_format(model, channels_last):
            if tiling.padding == "outer" and blocks:
                _probe(model, tiling, config.data.scales, engine.device)
            for f, r0, c0 in blocks:
                r1, c1 = min(rows, r0 + bt), min(cols, c0 + bt)
                # Output region of the block, and the input region it needs (clipped to the
                # frame: there the frame border is the block border, spec 5.7 padding applies).
                oy = slice(r0 * g, min(r1 * g, h))
                ox = slice(c0 * g, min(c1 * g, w))
                ay = max(0, (r0 * g - halo) // align * align)
                ax = max(0, (c0 * g - halo) // align * align)
                iy = slice(ay, min(h, r1 * g + halo))
                ix = slice(ax, min(w, c1 * g + halo))
                region = read(f, iy, ix)[None]
                stack = ContextStack(_Prepared(region, clip, input_scale), tiling.patch,
                                     config.data.scales, config.data.pad,
                                     config.data.lc_alignment)
                rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
                corners = np.stack([rr.ravel() * g - tiling.margin,
                                    cc.ravel() * g - tiling.margin], axis=1).astype(np.int64)
                canvas = _Canvas(1, oy.stop - oy.start, ox.stop - ox.start, widths, tiling,
                                 origin=(oy.start - iy.start, ox.start - ix.start))
                local = corners - np.array([iy.start, ix.start], dtype=np.int64)
                engine.run(stack, np.zeros(len(local), dtype=np.int64), local, canvas.place,
                           bar)
                out = canvas.finish()
                del stack
                for k, wr in writers.items():
                    wr.write((slice(f, f + 1), oy, ox, slice(None)), out[k])
        for wr in writers.values():
            wr.close()
    except BaseException:
        for wr in writers.values():
            wr.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    meta = _settings(config, stats, tiling, samples=samples, seed=seed, sample_mode=sample_mode,
                     normalized=normalized, input_scale=input_scale, model=model,
                     amp=amp)
    meta.update(batch_size=int(batch_size), block=int(bpx), seconds=round(seconds, 3),
                channel_names=names, brightness_factor=float(factor))
    for k, p in paths.items():
        _set_zarr_meta(p, _jsonable({**meta, "quantity": k}))
    log.info("predicted %.2f Mpx into %s in %.1f s", n * h * w / 1e6, paths["mean"], seconds)
    return paths["mean"]
