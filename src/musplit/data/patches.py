"""Training and evaluation patches with lateral context: the datasets that feed training.

:class:`TrainPatches` draws uniformly random primary patches and :class:`GridPatches` walks the
non-overlapping evaluation grid (docs/data.md, "Sampling"); both return ``(input, target)``
pairs:

* ``input``  ``(S, P, P)``: the normalised mix of the clipped targets at the ``S`` LC scales
  (docs/data.md, "Input formation"), built by :class:`~musplit.data.context.ContextStack`
  (padding in raw intensity units, i.e. ``pad="zeros"`` pads with intensity 0 = background,
  then normalisation);
* ``target`` ``(T, P, P)``: the normalised clipped targets of the primary patch.

Both implement ``__getitems__`` so a :class:`torch.utils.data.DataLoader` fetches a whole batch
in one vectorised gather; use :func:`musplit.data.dataset.make_loader` (or
``collate_fn=collate_batch``), because the batch is already collated.

Memory: the dataset keeps the chosen frames' clipped targets ``(n, T, H, W)`` and a
:class:`ContextStack` of their mix (about ``S`` frames per frame), all float32; with
``alpha_range`` or ``alpha_ranges`` one stack per target channel instead (its scale 0 gives
the targets).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from musplit.data.context import ContextStack, as_corners, d4_terms
from musplit.data.frames import frame_shapes, n_channels
from musplit.data.mixing import check_ranges, draw_weights, pair_weights
from musplit.data.normalize import NormStats
from musplit.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["GridPatches", "TrainPatches"]


def _check_size(height: int, width: int, patch: int) -> None:
    # Imported here: musplit.data.io imports zarr and tifffile (about 0.5 s), which training
    # from arrays in memory never needs.
    from musplit.data.io import check_image_size

    check_image_size(height, width, patch)


class _Mixed:
    """Lazy ``(n, H, W)`` view: frame ``i`` is the input mix of the clipped targets
    (docs/data.md, "Input formation")."""

    def __init__(self, targets: np.ndarray, stats: NormStats):
        self._t, self._stats = targets, stats  # targets (n, T, H, W), clipped
        self.shape = (targets.shape[0],) + targets.shape[2:]

    def __getitem__(self, i: int) -> np.ndarray:
        return self._stats.mix(self._t[i], axis=0)


def _as_region(r) -> tuple[int, int, int, int, int]:
    """``(frame, y0, y1, x0, x1)`` from a :class:`~musplit.data.splits.Region` or a tuple."""
    if hasattr(r, "frame"):
        return (int(r.frame), int(r.y[0]), int(r.y[1]), int(r.x[0]), int(r.x[1]))
    f, y0, y1, x0, x1 = (int(v) for v in r)
    return f, y0, y1, x0, x1


class _Group:
    """Frames of one size: their clipped targets ``(n, T, H, W)`` and context stacks."""

    def __init__(self, clipped: np.ndarray, stats: NormStats, per_patch: bool, kw: dict):
        self.height, self.width = int(clipped.shape[2]), int(clipped.shape[3])
        self.n_channels = int(clipped.shape[1])
        if not per_patch:
            self.stacks = [ContextStack(_Mixed(clipped, stats), **kw)]
            self.targets: np.ndarray | None = clipped
        else:
            # Per-patch alpha needs each channel's LC separately (the pyramid is linear, so the
            # mix of the channel stacks is the stack of the mix). Their scale 0 are the targets.
            self.stacks = [ContextStack(clipped[:, k], **kw) for k in range(self.n_channels)]
            self.targets = None

    @property
    def nbytes(self) -> int:
        t = 0 if self.targets is None else self.targets.nbytes
        return t + sum(s.nbytes for s in self.stacks)


class _PatchSource(Dataset):
    """Shared machinery: clipped targets, LC stacks, and the batched (input, target) builder.

    Frames may differ in size: they are grouped by size, one set of context stacks per group,
    and a batch is gathered group by group.
    """

    def __init__(
        self,
        targets,
        stats: NormStats,
        indices: Sequence[int] | None,
        *,
        patch: int,
        scales: int,
        pad: str,
        alignment: str,
        alpha_range: tuple[float, float] | None,
        cache_frames: int | None,
        alpha_ranges: Sequence[tuple[float, float]] | None = None,
    ):
        shapes_all = frame_shapes(targets)
        n_all, n_ch = len(shapes_all), n_channels(targets)
        if n_ch != stats.n_channels:
            raise InputError(
                f"targets have {n_ch} channels but the statistics describe {stats.n_channels}"
            )
        idx = list(range(n_all)) if indices is None else [int(i) for i in indices]
        if not idx:
            raise InputError("no frames selected for the dataset")
        bad = [i for i in idx if not 0 <= i < n_all]
        if bad:
            raise InputError(f"frame {bad[0]} does not exist (the data has {n_all} frames)")
        if not isinstance(patch, (int, np.integer)) or patch < 2 or patch % 2:
            raise InputError(f"patch must be an even integer >= 2, got {patch!r}")
        for i in idx:
            _check_size(*shapes_all[i], patch)
        if alpha_range is not None and alpha_ranges is not None:
            raise InputError("give alpha_range (two channels) or alpha_ranges, not both")
        if alpha_range is not None:
            lo, hi = (float(a) for a in alpha_range)
            if n_ch != 2:
                raise InputError(f"alpha_range needs exactly 2 target channels, got {n_ch}")
            if stats.input_is_sum:
                raise InputError("alpha_range cannot be combined with a summed input")
            if not 0.0 <= lo <= hi <= 1.0:
                raise InputError(f"alpha_range must satisfy 0 <= lo <= hi <= 1, got {alpha_range}")
            alpha_range = (lo, hi)
        if alpha_ranges is not None:
            if stats.input_is_sum:
                raise InputError("alpha_ranges cannot be combined with a summed input")
            alpha_ranges = check_ranges(alpha_ranges, n_ch)

        self.stats, self.patch, self.scales = stats, int(patch), int(scales)
        self.pad, self.alignment, self.alpha_range = pad, alignment, alpha_range
        self.alpha_ranges = alpha_ranges
        self.frame_indices = idx
        self.n_channels = n_ch
        shapes = [shapes_all[i] for i in idx]
        self._frame_h = np.array([s[0] for s in shapes], dtype=np.int64)
        self._frame_w = np.array([s[1] for s in shapes], dtype=np.int64)
        sizes = list(dict.fromkeys(shapes))  # distinct sizes, in order of first appearance
        one = len(sizes) == 1
        # One size: the familiar attributes; several: per frame, see frame_shape().
        self.height, self.width = sizes[0] if one else (None, None)
        self._group_of = np.array([sizes.index(s) for s in shapes], dtype=np.int64)
        self._local_of = np.zeros(len(idx), dtype=np.int64)
        kw = dict(patch=self.patch, scales=self.scales, pad=pad, alignment=alignment,
                  cache_frames=cache_frames)
        per_patch = alpha_range is not None or alpha_ranges is not None
        self._groups: list[_Group] = []
        for g, (h, w) in enumerate(sizes):
            members = np.flatnonzero(self._group_of == g)
            self._local_of[members] = np.arange(len(members))
            # Clipped targets, channel first (n, T, H, W): contiguous rows for the gather.
            clipped = np.empty((len(members), n_ch, h, w), dtype=np.float32)
            for j, pos in enumerate(members):
                i = idx[pos]
                frame = np.asarray(targets[i], dtype=np.float32)
                if not np.isfinite(frame).all():
                    raise InputError(f"target frame {i} contains NaN or Inf pixels")
                clipped[j] = np.moveaxis(stats.clip(frame, axis=-1), -1, 0)
            self._groups.append(_Group(clipped, stats, per_patch, kw))
        log.info(
            "%s: %d frames (%s), %d channels, P=%d S=%d pad=%s alignment=%s: %.2f GB",
            type(self).__name__, len(idx), ", ".join(f"{h}x{w}" for h, w in sizes), n_ch,
            self.patch, self.scales, pad, alignment, self.nbytes / 1e9,
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the precomputed context stacks and the targets."""
        return sum(g.nbytes for g in self._groups)

    @property
    def n_frames(self) -> int:
        return len(self.frame_indices)

    def frame_shape(self, position: int) -> tuple[int, int]:
        """``(H, W)`` of the dataset's frame at ``position`` (0..n_frames-1)."""
        return int(self._frame_h[position]), int(self._frame_w[position])

    def sample(
        self,
        frame: np.ndarray,
        corners: np.ndarray,
        transform: np.ndarray | None = None,
        alpha: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Build the (input, target) pairs of given patches (deterministic; no randomness).

        Parameters
        ----------
        frame : array-like of int, shape (K,)
            Position of each patch's frame in this dataset's frame list (0..n_frames-1).
        corners : array-like of int, shape (K, 2)
            Top-left corners of the primary patches.
        transform : array-like of int, shape (K,), optional
            Dihedral transform per patch (see :func:`apply_d4`), applied to all scales and the
            targets alike.
        alpha : array-like of float, shape (K,) or (K, T), optional
            Per-patch mixing weights, only with ``alpha_range`` or ``alpha_ranges``: shape
            ``(K, T)``, the weight of every channel (used as given); shape ``(K,)``, two
            channels only, the weight of channel 0 (channel 1 gets ``1 - alpha``). Default:
            the statistics' alpha.

        Returns
        -------
        inputs : ndarray, float32, shape (K, S, P, P)
            Normalised input mix (docs/data.md, "Normalisation", "Input formation").
        targets : ndarray, float32, shape (K, T, P, P)
            Normalised targets.
        """
        frame = np.asarray(frame, dtype=np.int64).reshape(-1)
        corners = as_corners(corners)
        t = None if transform is None else np.asarray(transform, dtype=np.int64).reshape(-1)
        a = None if alpha is None else np.asarray(alpha, dtype=np.float32)
        if a is not None:
            if a.ndim <= 1:
                if self.n_channels != 2:
                    raise InputError(f"one alpha per patch is channel 0's weight of two "
                                     f"channels; give (K, {self.n_channels}) weights")
                a = pair_weights(a)
            if a.shape != (len(frame), self.n_channels):
                raise InputError(f"alpha has shape {a.shape}, expected ({len(frame)}, "
                                 f"{self.n_channels}): one weight per patch and channel")
        if len(self._groups) == 1:
            return self._sample_group(self._groups[0], frame, corners, t, a)
        k, p = len(frame), self.patch
        x = np.empty((k, self.scales, p, p), dtype=np.float32)
        y = np.empty((k, self.n_channels, p, p), dtype=np.float32)
        groups = self._group_of[frame]
        for g in np.unique(groups):
            m = groups == g
            x[m], y[m] = self._sample_group(
                self._groups[g], self._local_of[frame[m]], corners[m],
                None if t is None else t[m], None if a is None else a[m])
        return x, y

    def _sample_group(self, group: _Group, frame, corners, t, alpha):
        st = self.stats
        if group.targets is not None:
            x = group.stacks[0].crops(frame, corners, transform=t)
            y = self._target_crops(group, frame, corners, t)
        else:
            chans = [s.crops(frame, corners, transform=t) for s in group.stacks]
            y = np.stack([c[:, 0] for c in chans], axis=1)
            if alpha is None:
                alpha = np.broadcast_to(np.asarray(st.alpha, dtype=np.float32),
                                        (len(frame), self.n_channels))
            x = chans[0] * alpha[:, 0, None, None, None]
            for c in range(1, self.n_channels):
                x += chans[c] * alpha[:, c, None, None, None]
        # Normalise after the padding, which happened in raw intensity units
        # (docs/data.md, "Input formation", "Padding modes").
        x -= np.float32(st.input_mean)
        x /= np.float32(st.input_std)
        y -= np.asarray(st.target_mean, dtype=np.float32)[None, :, None, None]
        y /= np.asarray(st.target_std, dtype=np.float32)[None, :, None, None]
        return x, y

    def _target_crops(self, group: _Group, frame, corners, t) -> np.ndarray:
        """Primary-patch crops of the clipped targets (inside the frame), shape (K, T, P, P)."""
        p, height, width = self.patch, group.height, group.width
        if corners.size and (
            corners.min() < 0
            or corners[:, 0].max() > height - p
            or corners[:, 1].max() > width - p
        ):
            raise InputError("target crops must lie inside the frame")
        j = np.arange(p, dtype=np.int64)
        rows = ((corners[:, 0, None] + j) * width)[:, None]  # (K, 1, P)
        cols = (corners[:, 1, None] + j)[:, None]
        if t is not None:
            rows, cols = d4_terms(rows, cols, t)
        hw = height * width
        chan = np.arange(self.n_channels, dtype=np.int64)[None, :, None, None] * hw
        base = (frame * (self.n_channels * hw))[:, None, None, None] + chan
        return np.take(group.targets, base + rows[..., :, None] + cols[..., None, :])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


class TrainPatches(_PatchSource):
    """Random training patches with lateral context (docs/data.md, "Sampling", "Augmentation";
    docs/method.md, "Training recipe").

    One epoch has ``n * floor(H/P) * floor(W/P)`` samples; sample ``j`` reads frame
    ``j mod n`` at an independent uniformly random corner ``h0 in [0, H-P]``,
    ``w0 in [0, W-P]`` (the last offset included, unlike the reference).

    With frames of different sizes, or regions excluded, frame ``f`` contributes
    ``floor(H_f/P) * floor(W_f/P)`` samples (scaled by the fraction of its corners left), and
    corners are uniform over the allowed ones: a patch never overlaps an excluded region (its
    lateral context may reach into one, as at prediction time).

    Parameters
    ----------
    targets : array-like, shape (N, H, W, T), or list of (H_i, W_i, T) arrays
        Target channels (clipped or not: ``stats.clip`` is applied, which is idempotent). Read
        frame by frame, so memory maps and lazy arrays work.
    stats : NormStats
        Training statistics (clip value, input/target normalisation, alpha).
    indices : sequence of int, optional
        Frames to draw from (e.g. ``split.train``); default all.
    patch, scales : int
        ``P`` and ``S``.
    pad : {"reflect", "zeros"}
        LC padding (docs/data.md, "Padding modes": reflect for real data, zeros for synthetic data).
    alignment : {"exact", "floor"}
        LC centring (docs/data.md, "LC alignment").
    augment : {None, "d4"}
        ``"d4"``: a uniformly random flip/rot90 per patch, applied to all S scales and the
        targets alike (docs/data.md, "Augmentation").
    alpha_range : (float, float), optional
        Draw the input weight of channel 0 per patch uniformly from this range, channel 1
        getting one minus it (docs/data.md, "Input formation"); two target channels only.
    alpha_ranges : sequence of (float, float), optional
        One ``(lo, hi)`` per target channel: per patch each weight is drawn uniformly from its
        range, then the weights are normalised to sum to 1 (:mod:`musplit.data.mixing`).
    seed : int
        Seed of the patch draws. The stream of a process is keyed by ``(seed, epoch)``, in a
        DataLoader worker also by the worker's seed (which torch derives per epoch from the
        loader's generator), and in a data-parallel run also by the process's rank; see
        :meth:`set_epoch`, :meth:`set_rank` and :func:`make_loader`.
    cache_frames : int, optional
        Passed to :class:`ContextStack` (lazy, bounded precomputation).
    exclude : sequence of Region or (frame, y0, y1, x0, x1), optional
        Held-out rectangles (frame numbers as in ``targets``) that no patch may overlap.
    """

    def __init__(
        self,
        targets,
        stats: NormStats,
        indices: Sequence[int] | None = None,
        *,
        patch: int = 64,
        scales: int = 5,
        pad: str = "reflect",
        alignment: str = "exact",
        augment: str | None = None,
        alpha_range: tuple[float, float] | None = None,
        seed: int = 0,
        cache_frames: int | None = None,
        exclude: Sequence | None = None,
        alpha_ranges: Sequence[tuple[float, float]] | None = None,
    ):
        if augment not in (None, "none", "d4"):
            raise InputError(f"augment must be None or 'd4', got {augment!r}")
        super().__init__(
            targets, stats, indices, patch=patch, scales=scales, pad=pad, alignment=alignment,
            alpha_range=alpha_range, cache_frames=cache_frames, alpha_ranges=alpha_ranges,
        )
        self.augment = None if augment == "none" else augment
        self.seed = int(seed)
        # Shared memory, so that set_epoch in the main process reaches persistent workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple | None = None
        self.rank, self.world_size = 0, 1
        self._setup_corners([_as_region(r) for r in (exclude or ())])

    def _setup_corners(self, exclude: list[tuple[int, int, int, int, int]]) -> None:
        """Allowed corners per frame, and which frame each sample index reads."""
        p = self.patch
        pos_of = {f: k for k, f in enumerate(self.frame_indices)}
        self._allowed: dict[int, np.ndarray] = {}
        blocked: dict[int, np.ndarray] = {}
        for f, y0, y1, x0, x1 in exclude:
            if f not in pos_of:
                continue  # a region of a frame that does not train: nothing to avoid
            k = pos_of[f]
            h, w = self.frame_shape(k)
            m = blocked.setdefault(k, np.ones((h - p + 1, w - p + 1), dtype=bool))
            # A corner (r, c) overlaps [y0, y1) x [x0, x1) iff y0 - P < r < y1, x0 - P < c < x1.
            m[max(0, y0 - p + 1): max(0, y1), max(0, x0 - p + 1): max(0, x1)] = False
        for k, m in blocked.items():
            flat = np.flatnonzero(m)
            if not flat.size:
                f = self.frame_indices[k]
                raise InputError(
                    f"frame {f} has no room for a {p}x{p} training patch outside its held-out "
                    "regions"
                )
            self._allowed[k] = flat.astype(np.int32 if m.size < 2**31 else np.int64)
        self._simple = self.height is not None and not self._allowed
        if self._simple:
            self._sample_frame = None
            return
        counts = []
        for k in range(self.n_frames):
            h, w = self.frame_shape(k)
            cells = (h // p) * (w // p)
            if k in self._allowed:
                cells = max(1, round(cells * self._allowed[k].size / ((h - p + 1) * (w - p + 1))))
            counts.append(cells)
        self._sample_frame = np.repeat(np.arange(self.n_frames), counts)
        self._n_choice = np.array(
            [self._allowed[k].size if k in self._allowed
             else (self._frame_h[k] - p + 1) * (self._frame_w[k] - p + 1)
             for k in range(self.n_frames)], dtype=np.int64)

    def __len__(self) -> int:
        if self._simple:
            return self.n_frames * (self.height // self.patch) * (self.width // self.patch)
        return len(self._sample_frame)

    def allowed_corners(self, position: int) -> np.ndarray:
        """Boolean ``(H-P+1, W-P+1)`` map of the corners a patch of frame ``position`` may take."""
        h, w = self.frame_shape(position)
        p = self.patch
        m = np.zeros((h - p + 1) * (w - p + 1), dtype=bool)
        if position in self._allowed:
            m[self._allowed[position]] = True
        else:
            m[:] = True
        return m.reshape(h - p + 1, w - p + 1)

    def set_epoch(self, epoch: int) -> None:
        """Restart the patch stream for ``epoch`` (optional: without it streams just continue)."""
        self._epoch[0] = int(epoch)

    def set_rank(self, rank: int, world_size: int) -> None:
        """Draw the patches of process ``rank`` of a data-parallel run of ``world_size``
        processes: its own stream, keyed by ``(seed, epoch, rank)``, distinct from the other
        processes' (which share the seed, and the loader seeds of their workers) and the same
        each time the run is repeated. ``world_size`` 1 is the one-process stream."""
        rank, world_size = int(rank), int(world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} of {world_size} processes: need 0 <= rank < "
                             "world_size")
        self.rank, self.world_size = rank, world_size
        self._rng_key = None  # the next draw starts the new stream

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        epoch = int(self._epoch[0])
        key = (os.getpid(), epoch, None if info is None else (info.id, info.seed), self.rank,
               self.world_size)
        if key != self._rng_key:
            entropy = [self.seed, epoch]
            if info is not None:
                # info.seed = the loader's per-epoch base seed + worker id: distinct streams
                # per worker and per epoch, reproducible from the loader's generator.
                entropy += [info.id, info.seed % 2**63]
            # A data-parallel process adds its rank as the spawn key (kept apart from the
            # entropy words, so no rank's stream is another key's); one process adds nothing.
            spawn = (self.rank, self.world_size) if self.world_size > 1 else ()
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=spawn))
            self._rng_key = key
        return self._rng

    def draw(self, indices: Sequence[int]) -> dict[str, np.ndarray | None]:
        """Draw the random parts of samples ``indices`` (advances the stream).

        Returns
        -------
        dict
            ``frame`` (K,) dataset frame positions (``index mod n``), ``corners`` (K, 2),
            ``transform`` (K,) or None, ``alpha`` or None: the arguments of :meth:`sample`.
            ``alpha`` is channel 0's weight ``(K,)`` with ``alpha_range``, and the normalised
            weights of every channel ``(K, T)`` with ``alpha_ranges`` (drawn after the
            corners and transforms, so a run without ranges draws the same patches).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)})")
        rng = self._generator()
        k, p = len(idx), self.patch
        if self._simple:
            frame = idx % self.n_frames
            corners = np.stack(
                [rng.integers(0, self.height - p + 1, k), rng.integers(0, self.width - p + 1, k)],
                axis=1,
            )
        else:
            frame = self._sample_frame[idx]
            flat = rng.integers(0, self._n_choice[frame]) if k else np.zeros(0, np.int64)
            for pos in np.unique(frame):
                if int(pos) in self._allowed:
                    m = frame == pos
                    flat[m] = self._allowed[int(pos)][flat[m]]
            r, c = np.divmod(flat, self._frame_w[frame] - p + 1)
            corners = np.stack([r, c], axis=1).astype(np.int64)
        transform = rng.integers(0, 8, k) if self.augment == "d4" else None
        alpha = None
        if self.alpha_range is not None:
            alpha = rng.uniform(self.alpha_range[0], self.alpha_range[1], k).astype(np.float32)
        elif self.alpha_ranges is not None:
            alpha = draw_weights(rng, k, self.alpha_ranges)
        return {"frame": frame, "corners": corners, "transform": transform, "alpha": alpha}

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once: ``(B, S, P, P)`` inputs and ``(B, T, P, P)`` targets."""
        x, y = self.sample(**self.draw(indices))
        return torch.from_numpy(x), torch.from_numpy(y)


class GridPatches(_PatchSource):
    """The non-overlapping evaluation grid (docs/data.md, "Sampling"): validation and grid metrics.

    ``floor(H/P) x floor(W/P)`` cells per frame, anchored top-left (the remainder is unused);
    index ``j`` is frame ``j mod n`` and row-major cell ``floor(j / n)``. LC crops are centred
    on the cells.

    With ``regions`` (a spatial split), each region is tiled the same way, anchored at its
    top-left corner, and the lateral context comes from the whole frame around it, as at
    prediction time.

    Parameters
    ----------
    targets, stats, indices, patch, scales, pad, alignment, cache_frames
        As for :class:`TrainPatches` (e.g. ``indices=split.val``). With ``regions``,
        ``indices`` lists whole frames to add to the regions (none when None).
    regions : sequence of Region or (frame, y0, y1, x0, x1), optional
        Rectangles of frames to tile (e.g. ``split.val_regions``).
    """

    def __init__(
        self,
        targets,
        stats: NormStats,
        indices: Sequence[int] | None = None,
        *,
        patch: int = 64,
        scales: int = 5,
        pad: str = "reflect",
        alignment: str = "exact",
        cache_frames: int | None = None,
        regions: Sequence | None = None,
    ):
        rects = [_as_region(r) for r in (regions or ())]
        whole = [] if (regions and indices is None) else indices
        frames = None
        if rects:
            frames = sorted(set(whole or []) | {r[0] for r in rects})
        elif whole is not None:
            frames = list(whole)
        super().__init__(
            targets, stats, frames, patch=patch, scales=scales, pad=pad, alignment=alignment,
            alpha_range=None, cache_frames=cache_frames,
        )
        p = self.patch
        if self.height is not None and not rects:
            self.grid_shape = (self.height // p, self.width // p)
            self._cells = None
            return
        self.grid_shape = None
        pos_of = {f: k for k, f in enumerate(self.frame_indices)}
        if not rects:
            whole = self.frame_indices
        boxes = [(pos_of[f], 0, self._frame_h[pos_of[f]], 0, self._frame_w[pos_of[f]])
                 for f in (whole or [])]
        for f, y0, y1, x0, x1 in rects:
            h, w = self.frame_shape(pos_of[f])
            if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
                raise InputError(f"region rows {y0}-{y1}, columns {x0}-{x1} lies outside frame "
                                 f"{f} ({h}x{w})")
            if y1 - y0 < p or x1 - x0 < p:
                raise InputError(f"region rows {y0}-{y1}, columns {x0}-{x1} of frame {f} is "
                                 f"smaller than the patch size {p}")
            boxes.append((pos_of[f], y0, y1, x0, x1))
        frame, corners = [], []
        for k, y0, y1, x0, x1 in boxes:
            r, c = np.meshgrid(np.arange(y0, y1 - p + 1, p), np.arange(x0, x1 - p + 1, p),
                               indexing="ij")
            frame.append(np.full(r.size, k, dtype=np.int64))
            corners.append(np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64))
        self._cells = (np.concatenate(frame), np.concatenate(corners))

    def __len__(self) -> int:
        if self._cells is not None:
            return len(self._cells[0])
        return self.n_frames * self.grid_shape[0] * self.grid_shape[1]

    def locate(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frame positions (K,) and corners (K, 2) of grid samples ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)})")
        if self._cells is not None:
            return self._cells[0][idx], self._cells[1][idx]
        cell = idx // self.n_frames
        r, c = np.divmod(cell, self.grid_shape[1])
        return idx % self.n_frames, np.stack([r, c], axis=1) * self.patch

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once: ``(B, S, P, P)`` inputs and ``(B, T, P, P)`` targets."""
        x, y = self.sample(*self.locate(indices))
        return torch.from_numpy(x), torch.from_numpy(y)
