"""Batches for training: the patch datasets, their loader, and the tile geometry of prediction.

The datasets themselves are :mod:`musplit.data.patches` (:class:`TrainPatches`,
:class:`GridPatches`) and the target layouts :mod:`musplit.data.frames`; they are re-exported
here, where they were first defined. :func:`make_loader` builds the DataLoader that fetches
whole batches through the datasets' ``__getitems__``; :func:`tile_corners` gives the tile
geometry of tiled prediction (docs/tiling.md, "Tile geometry").
"""

from __future__ import annotations

import math
import multiprocessing

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from musplit.data.context import apply_d4
from musplit.data.frames import frame_shapes
from musplit.data.patches import GridPatches, TrainPatches
from musplit.errors import InputError

__all__ = [
    "TrainPatches",
    "frame_shapes",
    "GridPatches",
    "apply_d4",
    "collate_batch",
    "make_loader",
    "tile_corners",
]


def tile_corners(height: int, width: int, patch: int, grid: int, *, cover: bool = True):
    """Top-left corners of the prediction patches of tiled prediction (docs/tiling.md,
    "Tile geometry").

    Tiles are the central ``G x G`` of each ``P x P`` patch; the per-side margin is
    ``p = (P - G) / 2`` and tile ``(r, c)`` has its patch at ``(r*G - p, c*G - p)``.

    Parameters
    ----------
    height, width : int
        Frame size.
    patch : int
        Prediction patch size ``P``.
    grid : int
        Tile size ``G`` (``G <= P``, ``P - G`` even).
    cover : bool
        ``True`` (default; docs/tiling.md, "Covering the frame"): ``ceil(H/G) x ceil(W/G)``
        tiles, covering every pixel (frames smaller than a patch included). ``False``: the
        reference's ``floor(H/G) x floor(W/G)`` (docs/tiling.md, "Reference tiling"; the
        "paper" preset).

    Returns
    -------
    ndarray, int64, shape (n_rows * n_cols, 2)
        Corners in row-major tile order; ``n_rows = ceil(H/G)`` (or floor), likewise columns.
    """
    for name, v in (("height", height), ("width", width), ("patch", patch), ("grid", grid)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if grid > patch or (patch - grid) % 2:
        raise InputError(
            f"tile size {grid} must be <= the patch size {patch} with an even difference "
            "(the margin (P - G)/2 must be a non-negative integer)"
        )
    margin = (patch - grid) // 2
    rnd = math.ceil if cover else math.floor
    n_r, n_c = rnd(height / grid), rnd(width / grid)
    r, c = np.meshgrid(np.arange(n_r, dtype=np.int64), np.arange(n_c, dtype=np.int64),
                       indexing="ij")
    return np.stack([r.ravel() * grid - margin, c.ravel() * grid - margin], axis=1)


def collate_batch(batch):
    """Collate function for these datasets: ``__getitems__`` already returns a batch."""
    return batch


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    *,
    shuffle: bool | None = None,
    num_workers: int = 0,
    seed: int | None = None,
    drop_last: bool = False,
    **kwargs,
) -> DataLoader:
    """A DataLoader that fetches whole batches through the dataset's ``__getitems__``.

    Parameters
    ----------
    dataset : TrainPatches or GridPatches
    batch_size : int
        32 in every paper configuration (docs/method.md, "Training recipe").
    shuffle : bool, optional
        Default: True for :class:`TrainPatches`, False otherwise
        (docs/method.md, "Training recipe").
    num_workers : int
        Worker processes. They are forked where the platform allows it, so the precomputed
        stacks are shared copy-on-write instead of pickled into every worker.
    seed : int, optional
        Seeds the loader's generator (shuffling and the workers' per-epoch seeds); default the
        dataset's ``seed`` (or 0).
    drop_last : bool
        The reference keeps the last partial batch (docs/method.md, "Training recipe").
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``pin_memory``, ``persistent_workers``).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields ``(inputs (B, S, P, P), targets (B, T, P, P))`` float32 tensors.
    """
    if shuffle is None:
        shuffle = isinstance(dataset, TrainPatches)
    if seed is None:
        seed = getattr(dataset, "seed", 0)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if num_workers > 0 and "multiprocessing_context" not in kwargs:
        if "fork" in multiprocessing.get_all_start_methods():
            kwargs["multiprocessing_context"] = "fork"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_batch,
        generator=generator,
        drop_last=drop_last,
        **kwargs,
    )
