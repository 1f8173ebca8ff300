"""Stitching: the kept region of every predicted patch placed into the output arrays.

Without blending each batch of tiles is one fancy-indexed assignment per output array, so the
patches of a frame are never all in memory; with blending, weighted values and weights are
accumulated and divided at the end (docs/tiling.md, "Blending").
"""

from __future__ import annotations

import numpy as np
import torch

from musplit.data.tiling import Tiling
from musplit.predict.engine import _TileBatch


class _Canvas:
    """Output arrays ``(N, H, W, X)`` and the vectorised placement of tiles into them.

    ``origin`` is the canvas position in frame coordinates (nonzero for the blocks of
    :func:`predict_to_zarr`). Without blending each batch is one fancy-indexed assignment per
    array; with blending, weighted values and weights are accumulated with ``index_add_`` and
    divided at the end (docs/tiling.md, "Blending").
    """

    def __init__(self, n: int, height: int, width: int, widths: dict[str, int], tiling: Tiling,
                 origin: tuple[int, int] = (0, 0)):
        self.shape = (n, height, width)
        self.tiling, self.origin = tiling, origin
        # np.zeros: the paper geometry's unpredicted remainder stays 0 (docs/tiling.md,
        # "Reference geometry").
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
