"""Tile geometry of tiled prediction: padding schemes, tile size, corners, blending weights.

A frame is predicted with patches of size ``P_eval``; only the central region of each patch (the
**tile**, ``G x G``) is kept, and tiles form a non-overlapping grid of stride ``G``
(docs/tiling.md, "Inner padding"):

==============  ===============  ==========  ==================================================
``padding``     ``P_eval``       tile ``G``  per-side margin ``p``
==============  ===============  ==========  ==================================================
``"inner"``     training ``P``   ``grid``    ``(P - G)/2`` (the paper's Inner Padding)
``"outer"``     ``P + 2p``       ``P``       ``(P - grid)/2``: the margin inner padding would
                                             have at the same ``grid`` (paper Fig. 4)
``"none"``      ``P``            ``P``       0
==============  ===============  ==========  ==================================================

:func:`make_tiling` resolves a call's arguments into a :class:`Tiling`; the predictor
(:mod:`musplit.predict`) runs the network on the patches and stitches the kept regions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from musplit.config import Config
from musplit.data.dataset import tile_corners
from musplit.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["BLENDS", "PADDINGS", "Tiling", "default_grid", "make_tiling"]

PADDINGS = ("inner", "outer", "none")
BLENDS = ("none", "linear", "cosine")


def default_grid(config: Config) -> int:
    """Tile size ``G`` used when neither the call nor ``config.predict.grid`` chooses one.

    * Deep-LC: ``G = P`` (no padding). Its context makes padding nearly useless
      (+0.02 dB, Table S.1 in docs/evaluation.md, "Reference results"), and the paper tiles
      it that way.
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
    """Tile geometry of one prediction (docs/tiling.md, "Inner padding").

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
        ``b``: with blending, each patch keeps ``G + 2b`` (docs/tiling.md, "Blending"); 0 without.
    blend : str
        ``"none"``, ``"linear"`` or ``"cosine"``.
    cover : bool
        ``ceil`` tile counts (docs/tiling.md, "Covering the frame") or ``floor`` (the
        reference, docs/tiling.md, "Reference tiling").
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
        """Top-left patch corners ``(n_tiles, 2)``, row-major (docs/tiling.md,
        "Reference tiling")."""
        return tile_corners(height, width, self.patch, self.grid, cover=self.cover)

    def weights(self) -> np.ndarray:
        """Separable 1-D blending weights over the kept region, float32 ``(G + 2b,)``.

        A ramp of width ``2b`` at each end (the overlap of neighbouring kept regions), so that
        neighbours' weights sum to 1 in the overlap; positive everywhere (docs/tiling.md,
        "Blending").
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
    """Resolve the tile geometry of a prediction (docs/tiling.md).

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
        ``b <= p``, default ``p // 2`` (docs/tiling.md, "Blending").
    paper_geometry : bool
        The reference's floor tile counts (remainder left 0, docs/tiling.md, "Reference tiling");
        no blending.

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
    if padding == "outer":  # patches P + 2p, tiles P (docs/tiling.md, "Inner padding")
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


def _block_halo(tiling: Tiling, scales: int) -> int:
    """Rows/columns of input a block needs beyond its tiles for exact context (any alignment).

    The scale-``s`` crop of a patch centred at ``c`` reads the full-resolution window
    ``c +- P*2**(s-1)`` plus the filter support of ``s`` halvings (< 6*2**s px; docs/data.md,
    "Lateral context crops").
    With this much real data around the block, crops never touch the block's own border, and at
    a frame border the block border *is* the frame border, so padding acts identically.
    """
    s = scales - 1
    return tiling.patch * (2**s) // 2 + 8 * 2**s + tiling.patch

