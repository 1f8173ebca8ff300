"""A whole tiled prediction as one torch module of a fixed image size (docs/bmz.md, "Design").

:class:`FixedSizeSplitter` does what :func:`musplit.predict.predict_image` does for one frame of
``H x W`` pixels with one deterministic pass (the top-down pass at the posterior means,
``sample_mode="mean"``): clip, the lateral-context stack of every inner-padded tile (the exact
a trous construction of :mod:`musplit.data.context`, docs/data.md "LC pyramid"), normalise,
the network, the kept centre of every tile (docs/tiling.md, "Inner padding"), back to intensity
units, stitched. Everything that depends only on the size (pad indices, gather indices of every
crop, where every kept pixel lands) is computed at construction as constant index tensors, so
``torch.jit.trace`` at that size records a graph without Python control flow that a BioImage
Model Zoo consumer runs without knowing about lateral context.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from musplit.data.context import _LEFT, _TAPS, ContextStack
from musplit.data.tiling import Tiling
from musplit.errors import InputError
from musplit.models.protocol import can_encode


def _filter_axis(y: torch.Tensor, dilation: int, axis: int) -> torch.Tensor:
    """Torch twin of :func:`musplit.data.context._filter_axis`, same operations in the same
    order (float32 results equal to the NumPy route's)."""
    m = y.shape[axis] - 5 * dilation

    def tap(k: int) -> torch.Tensor:
        return y.narrow(axis, k * dilation, m)

    out = (tap(0) + tap(5)) * float(np.float32(_TAPS[0]))
    for k in (1, 2):
        out = out + (tap(k) + tap(5 - k)) * float(np.float32(_TAPS[k]))
    return out


class FixedSizeSplitter(nn.Module):
    """Raw superimposed image ``(1, 1, H, W)`` in intensity units -> split ``(1, C, H, W)``.

    Parameters
    ----------
    model : nn.Module
        The trained network (a LadderVAE with ``encode``/``decode``, or a deterministic model).
    config, stats
        Its :class:`~musplit.config.Config` and :class:`~musplit.data.normalize.NormStats`.
    tiling : Tiling
        The inner-padding geometry (:func:`musplit.data.tiling.make_tiling`).
    size : (int, int)
        The fixed ``(H, W)``.
    clip : float
        The input clip (:func:`musplit.predict.brightness.input_clip`).
    batch_size : int
        Tiles per network call (the traced graph holds one call per batch).
    """

    def __init__(self, model: nn.Module, config, stats, tiling: Tiling, size: tuple[int, int],
                 clip: float, batch_size: int = 64):
        super().__init__()
        self.net = model.eval()
        h, w = (int(v) for v in size)
        self.height, self.width = h, w
        self.encodes = can_encode(model)
        self.c = int(stats.n_channels)
        self.batch_size = int(batch_size)
        self.clip = float(np.float32(clip))
        self.in_mean = float(np.float32(stats.input_mean))
        self.in_std = float(np.float32(stats.input_std))
        self.register_buffer("t_mean", torch.tensor(np.asarray(stats.target_mean, np.float32)
                                                    ).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("t_std", torch.tensor(np.asarray(stats.target_std, np.float32)
                                                   ).view(1, -1, 1, 1), persistent=False)
        d = config.data
        if d.lc_alignment != "exact":
            raise InputError("only exact LC alignment can be exported (floor alignment is for "
                             "reference checkpoints)")
        stack = ContextStack(np.zeros((1, h, w), np.float32), tiling.patch, d.scales, d.pad,
                             d.lc_alignment)
        self.scales, self.patch, self.pad = int(d.scales), int(tiling.patch), d.pad
        (ar, br), (ac, bc) = stack._pad_ranges
        self.pad_ranges = ((ar, br), (ac, bc))
        if d.pad == "reflect":
            ridx = np.pad(np.arange(h), (-ar, br - h), mode="reflect")
            cidx = np.pad(np.arange(w), (-ac, bc - w), mode="reflect")
            self.register_buffer("ridx", torch.from_numpy(ridx), persistent=False)
            self.register_buffer("cidx", torch.from_numpy(cidx), persistent=False)
        # Each stored level flattened and concatenated; the gather index of every crop pixel.
        self.maps = [(mr.start, mr.length, mc.start, mc.length) for mr, mc in stack._maps]
        offsets = np.concatenate([[0], np.cumsum([lr * lc for _, lr, _, lc in self.maps])])
        corners = tiling.corners(h, w)
        p, half = self.patch, self.patch // 2
        j = np.arange(p, dtype=np.int64)
        centre = corners + half
        idx = np.empty((len(corners), self.scales, p, p), dtype=np.int64)
        for s, (mr, mc) in enumerate(stack._maps):
            start = centre - p * 2 ** (s - 1) if s else corners
            u = mr(start[:, :1] + 2**s * j) # (K, P) rows of the stored level
            v = mc(start[:, 1:] + 2**s * j)
            idx[:, s] = offsets[s] + u[:, :, None] * mc.length + v[:, None, :]
        self.register_buffer("gather", torch.from_numpy(idx.reshape(-1)), persistent=False)
        self.n_tiles = len(corners)
        # Where the kept centre of every tile lands (tiles that reach past the frame drop it).
        lo, keep = tiling.offset, tiling.keep
        self.lo, self.keep = int(lo), int(keep)
        jk = np.arange(keep, dtype=np.int64)
        rows = corners[:, 0, None] + lo + jk
        cols = corners[:, 1, None] + lo + jk
        ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        flat = rows[:, :, None] * w + cols[:, None, :]
        src = np.arange(ok.size, dtype=np.int64).reshape(ok.shape)
        self.register_buffer("src", torch.from_numpy(src[ok]), persistent=False)
        self.register_buffer("dst", torch.from_numpy(flat[ok]), persistent=False)
        if np.unique(flat[ok]).size != h * w:
            raise InputError(f"the tiles of a {h}x{w} image do not cover it exactly once")

    def _levels(self, f: torch.Tensor) -> torch.Tensor:
        """Every scale's stored array, flattened and concatenated (``ContextStack._levels``)."""
        (ar, br), (ac, bc) = self.pad_ranges
        if self.pad == "reflect":
            y = f.index_select(0, self.ridx).index_select(1, self.cidx)
        else:
            y = nn.functional.pad(f, (-ac, bc - self.width, -ar, br - self.height))
        out = []
        for s, (rs, rl, cs, cl) in enumerate(self.maps):
            if s > 0:
                d = 2 ** (s - 1)
                y = _filter_axis(_filter_axis(y, d, 0), d, 1)
                ar, ac = ar + _LEFT * d, ac + _LEFT * d
            out.append(y[rs - ar : rs - ar + rl, cs - ac : cs - ac + cl].reshape(-1))
        return torch.cat(out)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.encodes:
            out = self.net.decode(self.net.encode(x), sample_mode="mean", compute_kl=False)
        else:
            out = self.net(x)
        return out if isinstance(out, torch.Tensor) else out[0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = image.reshape(self.height, self.width).float().clamp(max=self.clip)
        x = self._levels(f)[self.gather].reshape(self.n_tiles, self.scales, self.patch,
                                                 self.patch)
        x = (x - self.in_mean) / self.in_std
        mus = []
        for a in range(0, self.n_tiles, self.batch_size):
            p = self._net(x[a : a + self.batch_size])
            mus.append(p[:, : self.c, self.lo : self.lo + self.keep, self.lo : self.lo + self.keep])
        mu = torch.cat(mus) * self.t_std + self.t_mean  # (K, C, keep, keep), intensity units
        vals = mu.permute(1, 0, 2, 3).reshape(self.c, -1).index_select(1, self.src)
        out = torch.zeros(self.c, self.height * self.width, dtype=vals.dtype, device=vals.device)
        out = out.index_copy(1, self.dst, vals)
        return out.reshape(1, self.c, self.height, self.width)


def from_musplit_config(config: dict, stats: dict, size: int, grid: int,
                        batch_size: int = 64) -> FixedSizeSplitter:
    """The untrained :class:`FixedSizeSplitter` a package's ``pytorch_state_dict`` weights
    load into: the architecture entry of the rdf (docs/bmz.md, "What the package holds").

    ``config`` is the musplit config as a mapping, ``stats`` the normalisation statistics
    (``NormStats.to_dict()``); ``size`` and ``grid`` are the export's.
    """
    from musplit.config import Config
    from musplit.data.normalize import NormStats
    from musplit.data.tiling import make_tiling
    from musplit.models import build
    from musplit.predict.brightness import input_clip

    cfg = Config.validated(config, source="the package's musplit config")
    st = NormStats.from_dict(stats)
    tiling = make_tiling(cfg, "inner", int(grid), blend="none", blend_width=None,
                         paper_geometry=False)
    return FixedSizeSplitter(build(cfg.model), cfg, st, tiling, (int(size), int(size)),
                             input_clip(st), int(batch_size))
