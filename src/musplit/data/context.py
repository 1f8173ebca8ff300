"""Lateral context (LC): exactly centred multi-scale crops (docs/data.md, "LC pyramid",
"Lateral context crops", "LC alignment", "Padding modes").

A lateral-context stack for a primary patch of size ``P`` with top-left corner ``c`` is
``S`` crops of ``P x P`` pixels. Scale 0 is the primary patch itself. Scale ``s`` is the frame
downsampled ``2**s`` times by the anti-aliased halving step, cropped so that its centre
coincides with the primary patch's centre ``c + P/2``, i.e. it is the ``2**s``-downsampling of
the full-resolution window ``[c + P/2 - P*2**(s-1), c + P/2 + P*2**(s-1))``. Pixels outside the
frame come from the padding mode, applied once at full resolution (docs/data.md,
"Lateral context crops").

How it is computed (the "a trous" construction)
------------------------------------------------
One halving step is a 6-tap separable filter ``h`` (the 5-tap Gaussian, sigma 0.5, convolved
with the 2-tap box of the 2x2 average) followed by taking every second pixel. Filtering and
decimating ``s`` times is therefore the same as filtering the *undecimated* full-resolution frame
with ``h`` dilated by 1, 2, ..., ``2**(s-1)`` (call the result ``F_s``) and reading it at stride
``2**s``. So, per frame and scale, :class:`ContextStack` keeps ``F_s`` once, and every crop of
every corner is a strided gather ``F_s[start + 2**s * j]`` with
``start = c + P/2 - P*2**(s-1)``: no per-patch resampling and no per-patch Python loop.

Borders are exact, not approximated:

* ``pad="zeros"``: ``F_s`` of the zero-extended frame is 0 further than its filter support from
  the frame, so the stored array covers the support plus one ring of zeros and indices are
  clamped onto that ring.
* ``pad="reflect"``: the NumPy-reflected frame is periodic (period ``2(n-1)``) and mirror
  symmetric about pixels ``0`` and ``n-1``. ``h`` is symmetric about ``1/2``, so ``F_s`` is
  symmetric about the half-integer points ``-(2**s-1)/2`` and ``n-1-(2**s-1)/2``: it is the
  half-sample ("symmetric") extension of its ``n-1`` samples between them. The stored array is
  these ``n-1`` samples (no more memory than the frame) and indices are folded onto them.
  (Folding ``F_s`` about the frame edges instead would be wrong: the mirror does not commute
  with the 2x2 average, whose centre lies between pixels.)

``alignment="floor"`` reproduces the reference rule instead: the crop of scale ``s`` is rows
``[floor(c'/2**s) - P/2, floor(c'/2**s) + P/2)`` of the whole-frame pyramid level ``s``
(``c' = c + P/2``), padded per level (docs/data.md, "LC alignment"); only for parity with
reference checkpoints.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from musplit.errors import InputError

log = logging.getLogger(__name__)

PadMode = Literal["reflect", "zeros"]
Alignment = Literal["exact", "floor"]
PAD_MODES = ("reflect", "zeros")
ALIGNMENTS = ("exact", "floor")


def _halving_taps() -> np.ndarray:
    """The 6 taps of one halving step, for offsets -2..3 (docs/data.md, "LC pyramid").

    The Gaussian has sigma 0.5 truncated at radius 2 (``skimage``'s anti-aliasing sigma
    ``(2-1)/2`` with ``truncate=4``); the 2x2 average adds the box ``[1/2, 1/2]``. The result is
    symmetric about offset 1/2, the midpoint of the 2x2 block.
    """
    g = np.exp(-np.arange(-2, 3, dtype=np.float64) ** 2 / (2 * 0.5**2))
    g /= g.sum()
    return 0.5 * (np.concatenate([g, [0.0]]) + np.concatenate([[0.0], g]))


_TAPS = _halving_taps()  # float64 (6,), offsets -2..3; _TAPS[k] == _TAPS[5 - k]
_LEFT, _RIGHT = 2, 3  # the filter reaches 2 pixels before and 3 after (undilated)


def _filter_axis(y: np.ndarray, dilation: int, axis: int) -> np.ndarray:
    """``out[i] = sum_t h[t] y[i + 2 + dilation*t]`` along ``axis`` ("valid" correlation).

    The output is ``5*dilation`` shorter than the input: entry ``i`` of the output belongs to
    position ``i + 2*dilation`` of the input. float32 in, float32 out.
    """
    m = y.shape[axis] - 5 * dilation
    if m <= 0:
        raise ValueError("internal: array too short for the filter")

    def tap(k: int) -> np.ndarray:
        sl = [slice(None)] * y.ndim
        sl[axis] = slice(k * dilation, k * dilation + m)
        return y[tuple(sl)]

    # Symmetric taps: 3 multiplications instead of 6.
    out = tap(0) + tap(5)
    out *= np.float32(_TAPS[0])
    for k in (1, 2):
        pair = tap(k) + tap(5 - k)
        pair *= np.float32(_TAPS[k])
        out += pair
    return out


def halve(image: np.ndarray) -> np.ndarray:
    """One anti-aliased halving step (docs/data.md, "LC pyramid") on the last two axes.

    Gaussian blur (sigma 0.5, radius 2, mirror boundary) then 2x2 block averaging; equal to
    ``skimage.transform.resize(image, (H//2, W//2))`` with its defaults for even sizes.
    Odd sizes first drop their last row/column (musplit's documented rule; the reference
    floor-halves with an effective factor slightly above 2 instead).

    Parameters
    ----------
    image : ndarray, shape (..., H, W)

    Returns
    -------
    ndarray, float32, shape (..., H//2, W//2)
    """
    x = np.asarray(image, dtype=np.float32)
    h, w = x.shape[-2:]
    if h < 2 or w < 2:
        raise InputError(f"cannot halve an image of size {h}x{w}: both sides must be >= 2")
    x = x[..., : h - h % 2, : w - w % 2]
    widths = [(0, 0)] * (x.ndim - 2) + [(_LEFT, _RIGHT), (_LEFT, _RIGHT)]
    # NumPy "reflect" is scipy.ndimage "mirror": the boundary skimage's resize uses.
    x = np.pad(x, widths, mode="reflect")
    x = _filter_axis(x, 1, x.ndim - 2)[..., ::2, :]
    return np.ascontiguousarray(_filter_axis(x, 1, x.ndim - 1)[..., ::2])


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """The whole-frame LC pyramid: ``levels`` images, each the halving of the previous one.

    Parameters
    ----------
    image : ndarray, shape (..., H, W)
        One frame or a stack of frames (the halving acts on the last two axes).
    levels : int
        Number of levels including level 0 (the image itself, as float32).

    Returns
    -------
    list of ndarray, float32
        Level ``s`` has shape ``(..., H >> s, W >> s)``: odd sizes drop their last row/column
        before each halving (docs/data.md, "LC pyramid").
    """
    if levels < 1:
        raise InputError(f"a pyramid needs at least 1 level, got {levels}")
    out = [np.asarray(image, dtype=np.float32)]
    for _ in range(levels - 1):
        out.append(halve(out[-1]))
    return out


# -- index maps: any integer coordinate -> a row (or column) of the stored array ---------------
@dataclass(frozen=True)
class _AxisMap:
    """Where the samples of one axis of one stored level come from.

    ``kind`` is "clamp" (stored positions ``[start, start + length)`` with a ring of zeros at
    both ends; anything outside is clamped onto the ring), "whole" (NumPy reflect of ``length``
    samples at ``start``) or "half" (half-sample symmetric extension of ``length`` samples at
    ``start``).
    """

    kind: str
    start: int
    length: int

    def __call__(self, i: np.ndarray) -> np.ndarray:
        u = i - self.start
        n = self.length
        if self.kind == "clamp":
            return np.clip(u, 0, n - 1)
        if n == 1:
            return np.zeros_like(u)
        if self.kind == "whole":
            u = np.mod(u, 2 * (n - 1))
            return np.where(u >= n, 2 * (n - 1) - u, u)
        u = np.mod(u, 2 * n)  # "half"
        return np.where(u >= n, 2 * n - 1 - u, u)


def _exact_axis_map(n: int, s: int, pad: str) -> _AxisMap:
    """Stored range of ``F_s`` along an axis of ``n`` frame pixels (see the module docstring)."""
    if pad == "zeros":
        reach = 2**s - 1  # F_s[i] reads frame pixels i - 2*reach .. i + 3*reach
        return _AxisMap("clamp", -_RIGHT * reach - 1, n + 5 * reach + 2)
    if s == 0 or n == 1:
        return _AxisMap("whole", 0, n)
    return _AxisMap("half", 1 - 2 ** (s - 1), n - 1)


def _floor_axis_map(n_s: int, pad: str) -> _AxisMap:
    """Pyramid level of ``n_s`` pixels, padded on its own (the reference's floor rule)."""
    if pad == "zeros":
        return _AxisMap("clamp", -1, n_s + 2)
    return _AxisMap("whole", 0, n_s)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_common(patch, scales, pad, alignment) -> tuple[int, int]:
    # P must be even: the centre c + P/2 and the window half-width P*2**(s-1) are integers.
    if not _is_int(patch) or patch < 2 or patch % 2:
        raise InputError(f"patch must be an even integer >= 2, got {patch!r}")
    if not _is_int(scales) or scales < 1:
        raise InputError(f"scales must be an integer >= 1, got {scales!r}")
    if pad not in PAD_MODES:
        raise InputError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    if alignment not in ALIGNMENTS:
        raise InputError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    return int(patch), int(scales)


def as_corners(corners) -> np.ndarray:
    """Primary-patch corners as an int64 ``(K, 2)`` array (one ``(2,)`` corner is ``K = 1``);
    non-integer corners are refused."""
    c = np.asarray(corners)
    if c.ndim == 1 and c.shape[0] == 2:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != 2:
        raise InputError(f"corners must have shape (K, 2), got {c.shape}")
    if c.dtype.kind not in "iu":
        if c.size and not (np.isfinite(c).all() and np.all(c == np.round(c))):
            raise InputError("corners must be integers (top-left pixel of the primary patch)")
    return c.astype(np.int64)


class ContextStack:
    """Precomputed lateral context of a stack of frames: any crop of any corner is a gather.

    Built once per dataset (or once per frame for prediction); :meth:`crops` then returns the
    ``S`` scales of ``K`` primary patches in one vectorised gather. Exact for every integer
    corner, also far outside the frame (docs/data.md, "LC alignment", "Padding modes").

    Memory per frame of ``H x W`` pixels: about ``S*H*W`` float32 for ``pad="reflect"`` and
    ``sum_s (H + 5*(2**s-1) + 2) * (W + 5*(2**s-1) + 2)`` for ``pad="zeros"`` (exact
    alignment); about ``4/3*H*W`` for ``alignment="floor"``.

    Parameters
    ----------
    frames : array-like, shape (N, H, W)
        Frames in intensity units (clip before, normalise after: the padding is applied to the
        values given here). Anything indexable by frame with a ``shape`` works (memory maps, zarr
        arrays); frames are read one at a time.
    patch : int
        Even patch size ``P``.
    scales : int
        Number of scales ``S`` (scale 0 is the primary patch).
    pad : {"reflect", "zeros"}
        Values outside the frame: NumPy reflect (repeated mirroring for any distance) or 0.
    alignment : {"exact", "floor"}
        Exact centring (default; docs/data.md, "LC alignment"), or the reference's floor rule.
    cache_frames : int, optional
        ``None`` (default) precomputes every frame now. An integer keeps at most that many
        frames' levels, computed on first use and evicted least-recently-used: for data larger
        than memory. Efficient only when consecutive requests reuse frames.

    Attributes
    ----------
    nbytes : int
        Bytes held by the precomputed levels.
    """

    def __init__(
        self,
        frames,
        patch: int = 64,
        scales: int = 5,
        pad: PadMode = "reflect",
        alignment: Alignment = "exact",
        *,
        cache_frames: int | None = None,
    ):
        self.patch, self.scales = _check_common(patch, scales, pad, alignment)
        self.pad, self.alignment = pad, alignment
        shape = tuple(getattr(frames, "shape", ()))
        if len(shape) != 3:
            raise InputError(f"frames must have shape (N, H, W), got {shape}")
        self.n_frames, self.height, self.width = (int(v) for v in shape)
        if self.n_frames < 1 or self.height < 1 or self.width < 1:
            raise InputError(f"frames must be non-empty, got shape {shape}")
        if alignment == "floor" and min(self.height, self.width) >> (self.scales - 1) < 1:
            raise InputError(
                f"a {self.height}x{self.width} frame has no pyramid level {self.scales - 1} "
                f"(floor alignment needs both sides >= {2 ** (self.scales - 1)})"
            )
        self._frames = frames
        self._maps: list[tuple[_AxisMap, _AxisMap]] = []
        for s in range(self.scales):
            if alignment == "exact":
                mr = _exact_axis_map(self.height, s, pad)
                mc = _exact_axis_map(self.width, s, pad)
            else:
                mr = _floor_axis_map(self.height >> s, pad)
                mc = _floor_axis_map(self.width >> s, pad)
            self._maps.append((mr, mc))
        # Polyphase layout: scale s is stored as its 4**s decimated phase images (k = 2**s
        # rows x columns of phases), so a crop at stride k is one contiguous P x P block of one
        # phase image instead of P*P scattered cache lines (measured: gathers 1.4-1.6x faster
        # than strided reads, 256^2 and 2720^2 frames). Each phase has ceil(L/k) rows and
        # columns; the few padding entries are never read.
        self._phases = []
        for s, (mr, mc) in enumerate(self._maps):
            k = 2**s if alignment == "exact" else 1
            self._phases.append((k, -(-mr.length // k), -(-mc.length // k)))
        sizes = [k * k * qr * qc for k, qr, qc in self._phases]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.frame_size = int(self._offsets[-1])  # float32 values per frame, all scales
        # Full-resolution range [A, B) per axis that the exact route's filter chain reads.
        self._pad_ranges = [(0, self.height), (0, self.width)]
        if alignment == "exact":
            self._pad_ranges = [
                (
                    min(m[axis].start - _LEFT * (2**s - 1) for s, m in enumerate(self._maps)),
                    max(
                        m[axis].start + m[axis].length + _RIGHT * (2**s - 1)
                        for s, m in enumerate(self._maps)
                    ),
                )
                for axis in (0, 1)
            ]

        if cache_frames is None:
            self._slots = self.n_frames
            self._lru: OrderedDict[int, int] | None = None
        else:
            if int(cache_frames) < 1:
                raise InputError(f"cache_frames must be >= 1, got {cache_frames}")
            self._slots = min(int(cache_frames), self.n_frames)
            self._lru = OrderedDict()
        self._buffer = np.empty(self._slots * self.frame_size, dtype=np.float32)
        if self._lru is None:
            self._fill(np.arange(self.n_frames), np.arange(self.n_frames))
            self._frames = None  # everything is in the buffer; do not keep the source alive

    # -- precomputation -------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    def _read(self, i: int) -> np.ndarray:
        f = np.asarray(self._frames[int(i)], dtype=np.float32)
        if f.shape != (self.height, self.width):
            raise InputError(f"frame {i} has shape {f.shape}, expected {(self.height, self.width)}")
        if not np.isfinite(f).all():
            raise InputError(f"frame {i} contains NaN or Inf pixels")
        return f

    def _fill(self, frame_ids: np.ndarray, slots: np.ndarray) -> None:
        """Compute the levels of ``frame_ids`` into buffer ``slots``, a few frames at a time."""
        # Bound the temporaries (the padded stack and its filtered copies) to ~50 MB.
        (ar, br), (ac, bc) = self._pad_ranges
        chunk = max(1, int(4e6 // ((br - ar) * (bc - ac))))
        for a in range(0, len(frame_ids), chunk):
            ids, dst = frame_ids[a : a + chunk], slots[a : a + chunk]
            x = np.stack([self._read(i) for i in ids])
            levels = self._levels(x)
            for s, lev in enumerate(levels):
                k, qr, qc = self._phases[s]
                lo, hi = self._offsets[s], self._offsets[s + 1]
                view = self._buffer.reshape(self._slots, self.frame_size)[:, lo:hi]
                view = view.reshape(self._slots, k, k, qr, qc)
                m, lr, lc = lev.shape
                lev = np.pad(lev, ((0, 0), (0, qr * k - lr), (0, qc * k - lc)))
                # (m, qr*k, qc*k) -> (m, k, k, qr, qc): element (u, v) goes to phase
                # (u mod k, v mod k), position (u div k, v div k).
                view[dst] = lev.reshape(m, qr, k, qc, k).transpose(0, 2, 4, 1, 3)

    def _levels(self, x: np.ndarray) -> list[np.ndarray]:
        """Stored arrays of every scale for a stack ``x`` (m, H, W), in ``_maps`` geometry."""
        if self.alignment == "floor":
            levels = pyramid(x, self.scales)
            if self.pad == "zeros":  # one ring of zeros onto which off-frame indices clamp
                levels = [np.pad(v, ((0, 0), (1, 1), (1, 1))) for v in levels]
            return levels
        # Exact: extend the frame once (the pad mode) over a range [A, B) per axis that covers
        # every scale's stored range plus its filter support, then run the dilated filter chain.
        (ar, br), (ac, bc) = self._pad_ranges
        widths = ((0, 0), (-ar, br - self.height), (-ac, bc - self.width))
        y = np.pad(x, widths, mode="reflect" if self.pad == "reflect" else "constant")
        out = []
        for s in range(self.scales):
            if s > 0:
                d = 2 ** (s - 1)
                y = _filter_axis(_filter_axis(y, d, 1), d, 2)
                ar, ac = ar + _LEFT * d, ac + _LEFT * d  # y[0] is now position ar
            mr, mc = self._maps[s]
            out.append(y[:, mr.start - ar : mr.start - ar + mr.length,
                         mc.start - ac : mc.start - ac + mc.length])
        return out

    def _slots_for(self, frame_idx: np.ndarray) -> np.ndarray:
        """Buffer slot of each requested frame, computing missing frames (LRU mode)."""
        if self._lru is None:
            return frame_idx
        uniq = np.unique(frame_idx)
        if len(uniq) > self._slots:
            raise InputError(f"{len(uniq)} frames requested at once, cache holds {self._slots}")
        missing = [int(f) for f in uniq if int(f) not in self._lru]
        for f in uniq:
            if int(f) in self._lru:
                self._lru.move_to_end(int(f))
        free = sorted(set(range(self._slots)) - set(self._lru.values()))
        new_slots = []
        for f in missing:
            if free:
                slot = free.pop(0)
            else:
                _, slot = self._lru.popitem(last=False)  # oldest not requested now
            self._lru[f] = slot
            new_slots.append(slot)
        if missing:
            self._fill(np.asarray(missing), np.asarray(new_slots))
        lut = dict(self._lru)
        return np.fromiter((lut[int(f)] for f in frame_idx), dtype=np.int64, count=len(frame_idx))

    # -- crops ----------------------------------------------------------------------------
    def indices(
        self, frame_idx: np.ndarray, corners: np.ndarray, transform: np.ndarray | None = None
    ) -> np.ndarray:
        """Flat buffer indices of the crops, shape (K, S, P, P) (the gather of :meth:`crops`).

        ``transform`` (K,) ints in 0..7 optionally applies a dihedral transform to each crop
        (see :func:`apply_d4`); it is a permutation of the indices, so
        augmentation costs nothing extra.
        """
        p, half = self.patch, self.patch // 2
        k = len(corners)
        slots = self._slots_for(frame_idx)
        j = np.arange(p, dtype=np.int64)
        rows = np.empty((k, self.scales, p), dtype=np.int64)
        cols = np.empty((k, self.scales, p), dtype=np.int64)
        centre = corners + half  # (K, 2): the primary patch centre, pixel-edge coordinates
        for s, (mr, mc) in enumerate(self._maps):  # a loop over scales, vectorised over patches
            if self.alignment == "exact":
                start = centre - p * 2 ** (s - 1) if s else corners
                step = 2**s
            else:  # reference: c_s = floor(c / 2**s) on level s, crop [c_s - P/2, c_s + P/2)
                start = np.floor_divide(centre, 2**s) - half
                step = 1
            u, v = mr(start[:, :1] + step * j), mc(start[:, 1:] + step * j)
            k, qr, qc = self._phases[s]
            if k == 1:
                rows[:, s] = u * qc + self._offsets[s]
                cols[:, s] = v
            else:
                rows[:, s] = (u % k) * (k * qr * qc) + (u // k) * qc + self._offsets[s]
                cols[:, s] = (v % k) * (qr * qc) + v // k
        if transform is not None:
            rows, cols = d4_terms(rows, cols, np.asarray(transform))
        base = (slots * self.frame_size)[:, None, None, None]
        return base + rows[..., :, None] + cols[..., None, :]

    def crops(
        self, frame_idx, corners, *, transform: np.ndarray | None = None
    ) -> np.ndarray:
        """Lateral-context stacks of K primary patches.

        Parameters
        ----------
        frame_idx : array-like of int, shape (K,)
            Frame of each patch.
        corners : array-like of int, shape (K, 2)
            Top-left (row, column) of each primary patch; any integers, also outside the frame.
        transform : array-like of int, shape (K,), optional
            Dihedral transform per patch (0 = identity), applied to all scales alike.

        Returns
        -------
        ndarray, float32, shape (K, S, P, P)
            Scale 0 is the primary crop; scale ``s`` is centred exactly on ``corner + P/2``
            (or by the floor rule with ``alignment="floor"``).
        """
        corners = as_corners(corners)
        frame_idx = np.asarray(frame_idx).astype(np.int64).reshape(-1)
        if len(frame_idx) != len(corners):
            raise InputError(f"{len(frame_idx)} frame indices for {len(corners)} corners")
        if len(frame_idx) and (frame_idx.min() < 0 or frame_idx.max() >= self.n_frames):
            raise InputError(f"frame index out of range [0, {self.n_frames})")
        shape = (len(corners), self.scales, self.patch, self.patch)
        if len(corners) == 0:
            return np.empty(shape, dtype=np.float32)
        if self._lru is not None and len(np.unique(frame_idx)) > self._slots:
            # More frames than the cache holds: serve the request frame group by frame group.
            out = np.empty(shape, dtype=np.float32)
            order = np.argsort(frame_idx, kind="stable")
            groups = np.split(order, np.flatnonzero(np.diff(frame_idx[order])) + 1)
            for a in range(0, len(groups), self._slots):
                sel = np.concatenate(groups[a : a + self._slots])
                t = None if transform is None else np.asarray(transform)[sel]
                out[sel] = self.crops(frame_idx[sel], corners[sel], transform=t)
            return out
        return np.take(self._buffer, self.indices(frame_idx, corners, transform))


def apply_d4(x, t: int, *, inverse: bool = False):
    """Dihedral transform number ``t`` (0..7) of the last two axes (docs/data.md,
    "Augmentation"; ``augment="d4"``).

    Bit 2 transposes, then bit 0 flips the rows (vertical flip), then bit 1 flips the columns;
    ``t = 0`` is the identity. The same convention as the index route of
    :meth:`ContextStack.crops` (``transform=``), which is what training uses; this array
    version is the readable reference.

    Parameters
    ----------
    x : ndarray or torch.Tensor, shape (..., P, P)
    t : int
    inverse : bool
        Apply the inverse transform (undo ``apply_d4(x, t)``).

    Returns
    -------
    ndarray or torch.Tensor, same shape (square patches)
    """
    t = int(t)
    if not 0 <= t < 8:
        raise InputError(f"a dihedral transform is a number in 0..7, got {t}")
    is_np = isinstance(x, np.ndarray)

    def transpose(a):
        return np.swapaxes(a, -1, -2) if is_np else a.transpose(-1, -2)

    def flip(a, axis):
        return np.flip(a, axis) if is_np else a.flip(axis)

    if not inverse and t & 4:
        x = transpose(x)
    if t & 1:
        x = flip(x, -2)
    if t & 2:
        x = flip(x, -1)
    if inverse and t & 4:
        x = transpose(x)
    return x


def d4_terms(rows: np.ndarray, cols: np.ndarray, t: np.ndarray):
    """Row/column index terms (K, S, P) after dihedral transform ``t`` (K,).

    Bit 2 of ``t`` transposes, then bit 0 flips rows, bit 1 flips columns (the order of
    :func:`apply_d4`): with ``crop[i, j] = base + A[i] + B[j]`` a
    transpose swaps ``A`` and ``B`` and a flip reverses one of them.
    """
    t = t.reshape(-1, 1, 1)
    swap = (t & 4) > 0
    a = np.where(swap, cols, rows)
    b = np.where(swap, rows, cols)
    a = np.where((t & 1) > 0, a[..., ::-1], a)
    b = np.where((t & 2) > 0, b[..., ::-1], b)
    return a, b


def lateral_context(
    image: np.ndarray,
    corners,
    patch: int = 64,
    scales: int = 5,
    pad: PadMode = "reflect",
    *,
    alignment: Alignment = "exact",
) -> np.ndarray:
    """Lateral-context stacks of one 2-D image for K primary-patch corners.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The (clipped, un-normalised) image; padding happens in these units.
    corners : array-like of int, shape (K, 2)
        Top-left (row, column) of each primary patch; any integers, also far outside the frame.
    patch : int
        Even patch size ``P``.
    scales : int
        Number of scales ``S``.
    pad : {"reflect", "zeros"}
        Off-frame values: NumPy reflect (repeated mirroring) or constant 0, applied once at full
        resolution (docs/data.md, "Padding modes").
    alignment : {"exact", "floor"}
        Exact centring (default) or the reference's floor rule (docs/data.md, "LC alignment").

    Returns
    -------
    ndarray, float32, shape (K, S, P, P)
        Scale 0 is the primary crop; scale ``s`` is the ``2**s``-downsampling (the halving step
        of docs/data.md, "LC pyramid", applied ``s`` times) of the full-resolution window
        ``[c + P/2 - P*2**(s-1), c + P/2 + P*2**(s-1))``, centred exactly on ``c + P/2``.

    Notes
    -----
    This precomputes the whole image once (:class:`ContextStack`); for many calls on the same
    frames, build a :class:`ContextStack` and call :meth:`ContextStack.crops`.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"image must be 2-D (H, W), got shape {img.shape}")
    if img.dtype.kind not in "fiub":
        raise InputError(f"image must be numeric, got dtype {img.dtype}")
    corners = as_corners(corners)
    stack = ContextStack(img[None], patch, scales, pad, alignment)
    return stack.crops(np.zeros(len(corners), dtype=np.int64), corners)


# The old private names (musplit.data.dataset imported them before they were public).
_as_corners = as_corners
_d4_terms = d4_terms
