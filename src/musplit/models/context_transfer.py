"""Directional context transfer of the Context-Aware U-Net (Leng et al. 2018; docs/method.md,
"Baselines").

A skip tensor ``X (B, C, H, W)`` is swept in four directions. The **up** sweep runs down the
rows, ``X_up[i] = ReLU(σ(W[0, i-1]) * X_up[i-1] + X[i])`` for ``i = 1 .. H-1`` (row 0 is copied
unchanged); **down** runs the rows the other way using row ``i+1`` and ``W[1]``; **left** and
**right** do the same over the columns with ``W[2]`` and ``W[3]``. The gate ``W (4, H, W)`` is
learned, starts at 0 (σ = 1/2), and is broadcast over batch and channels; the weight of a step
is the one at the *source* row or column, as in the reference. The module's output is
``ReLU(Conv1x1_{4C -> C}(cat[left, right, up, down]))``.

The reference runs these recurrences as Python loops, one row or column at a time, cloning
rows under a full autograd graph (docs/method.md, "Reference defects avoided" item 18). Here each
sweep is exact and runs without a per-row graph, as a **chunked scan**:

* one step ``h ↦ max(0, a·h + x)`` with ``a >= 0`` is a function of the form
  ``h ↦ max(c, A·h + B)``, and that family is closed under composition:
  ``max(c2, a2·max(c1, a1·h + b1) + b2) = max(max(c2, a2·c1 + b2), a2·a1·h + a2·b1 + b2)``;
* the ``n`` rows are cut into chunks of ``k`` rows; each chunk's composite ``(A, B, C)`` is
  built for **all chunks at once** (``k`` steps on one strided row slice each), the chunks'
  end values are chained (``n/k`` steps on one row), and the recurrence is run again inside
  all chunks at once from their entry values (``k`` steps).

With ``k = ceil(sqrt(n))`` that is about ``3 sqrt(n)`` sequential steps instead of ``n``, at
about three times the work of the plain loop (a log-depth prefix scan would need
``O(n log n)``); with ``k = n`` it is the plain loop, in place. The choice is by the size of
a row (:data:`SEQUENTIAL_ROW_ELEMENTS`): large rows make per-step overhead negligible and the
least work wins; small ones (small batches, deep levels at prediction time) gain from fewer
steps. The backward pass is its own scan (a linear one, the other way), and only the sweep
outputs are kept for it, which the 1x1 convolution needs anyway.

Any size works, at any patch size; at a size other than the gate's, the gate is
centre-cropped or edge-padded (a documented musplit extension, as for the LadderVAE's top
prior, docs/method.md, "LadderVAE").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from musplit.models.blocks import Conv2d, conv2d, fit_prior

__all__ = ["ContextTransfer", "directional_scan"]


def _at(t: Tensor, dim: int, index) -> Tensor:
    """``t[..., index, :]`` (``dim=-2``) or ``t[..., index]`` (``dim=-1``): a view."""
    return t[..., index, :] if dim == -2 else t[..., index]


def _wide(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _step_rows(n: int, k: int, j: int, reverse: bool) -> slice | None:
    """The rows at local step ``j`` of every chunk of ``k`` rows, as one strided slice.

    Chunks follow the scan order: forwards ``[ck, ck + k)``, backwards ``(n - ck - k, n - ck]``
    (so only the chunk scanned last may be partial). The rows come in increasing order, one
    per chunk that has a step ``j``: forwards chunks ``0, 1, ...``; backwards the last chunk
    first. None when no chunk has a step ``j``.
    """
    if j > n - 1:
        return None
    first, stop = ((n - 1 - j) % k, n - j) if reverse else (j, n)
    cnt = len(range(first, stop, k))
    return slice(first, first + k * (cnt - 1) + 1, k)


def _count(s: slice) -> int:
    return len(range(s.start, s.stop, s.step))


def _scan(x: Tensor, a: Tensor, dim: int, reverse: bool, relu: bool, chunk: int | None = None
          ) -> Tensor:
    """Run ``h_first = x_first``, ``h_i = act(a_i * h_prev(i) + x_i)`` along ``dim``.

    Parameters
    ----------
    x : Tensor, shape (..., H, W)
    a : Tensor, broadcastable to ``x`` and indexed like it along ``dim``
        The coefficient of each *target* position (``a`` at the first position is unused).
        Must be non-negative when ``relu`` is True.
    dim : {-2, -1}
        Scan over rows or columns.
    reverse : bool
        Scan from the last row/column to the first.
    relu : bool
        ``act`` is ReLU (the sweeps) or the identity (their backward pass).
    chunk : int, optional
        Rows per chunk ``k``; default :func:`default_chunk`. ``k >= n`` is the plain
        sequential recurrence (least work, ``n`` steps); ``ceil(sqrt(n))`` the fewest steps.

    Returns
    -------
    Tensor like ``x`` (a new tensor).

    Notes
    -----
    Three phases, ``2k + n/k`` sequential steps in all:

    1. the composite ``(A, B, C)`` of each chunk, built row by row for all chunks at once
       (running per-chunk tensors, one row each);
    2. the value at each chunk's end, chained over the chunks;
    3. the recurrence itself, run for all chunks at once from their entry values.
    """
    n = x.shape[dim]
    out = torch.empty_like(x)
    if n == 1:
        return out.copy_(x)
    k = min(chunk or default_chunk(n, x.numel() // n), n)
    nc = -(-n // k)
    first = n - 1 if reverse else 0
    d = 1 if reverse else -1  # offset of the previous position in scan order
    one = slice(first, first + 1)

    def step(rows: slice, prev: Tensor) -> None:
        target = _at(out, dim, rows)
        torch.addcmul(_at(x, dim, rows), _at(a, dim, rows), prev, out=target)
        if relu:
            target.clamp_(min=0)

    entry = None  # the value before each chunk's first row, chunks in slice order
    if nc > 1:
        # 1. chunk composites h_end = max(C, A * h_entry + B) (linear: A * h_entry + B)
        rows = _step_rows(n, k, 0, reverse)
        ra = _at(a, dim, rows).clone()
        rb = _at(x, dim, rows).clone()
        rc = torch.zeros_like(rb) if relu else None
        # the first position is not a step: h = x there (A = 0, B = C = x)
        f = slice(nc - 1, nc) if reverse else slice(0, 1)
        _at(ra, dim, f).zero_()
        if relu:
            _at(rc, dim, f).copy_(_at(x, dim, one))
        for j in range(1, k):
            rows = _step_rows(n, k, j, reverse)
            if rows is None:
                break
            cnt = _count(rows)
            sl = slice(nc - cnt, nc) if reverse else slice(0, cnt)
            aj, xj = _at(a, dim, rows), _at(x, dim, rows)
            _at(ra, dim, sl).mul_(aj)
            _at(rb, dim, sl).mul_(aj).add_(xj)
            if relu:
                _at(rc, dim, sl).mul_(aj).add_(xj).clamp_(min=0)
        # 2. chain the chunks (scan order: forwards slot 0 first, backwards slot nc-1 first)
        ends = rc if relu else rb
        order = range(nc - 1, -1, -1) if reverse else range(nc)
        carry = None
        for c in order:
            e = _at(ends, dim, slice(c, c + 1))
            if carry is not None:
                val = torch.addcmul(_at(rb, dim, slice(c, c + 1)), _at(ra, dim, slice(c, c + 1)),
                                    carry)
                if relu:
                    torch.maximum(e, val, out=e)
                else:
                    e.copy_(val)
            carry = e
        entry = ends
    # 3. the recurrence, all chunks at once
    for j in range(k):
        rows = _step_rows(n, k, j, reverse)
        if rows is None:
            break
        if j > 0:
            cnt = _count(rows)
            step(rows, _at(out, dim, slice(rows.start + d, rows.start + d + k * (cnt - 1) + 1,
                                           k)))
            continue
        # step 0: the first chunk starts at `first` (h = x); the others from the end value of
        # the chunk before them in scan order
        _at(out, dim, one).copy_(_at(x, dim, one))
        if nc > 1:
            if reverse:  # slots 0 .. nc-2 follow the chunks in slots 1 .. nc-1
                r = slice(rows.start, rows.stop - k, k)
                step(r, _at(entry, dim, slice(1, nc)))
            else:  # slots 1 .. nc-1 follow the chunks in slots 0 .. nc-2
                r = slice(rows.start + k, rows.stop, k)
                step(r, _at(entry, dim, slice(0, nc - 1)))
    return out


#: Elements per row (batch x channels x the other side) above which a scan runs as the plain
#: sequential recurrence: each of its ``n`` steps is then big enough that the per-operation
#: overhead does not matter and the least total work wins. Below it, chunks of ``sqrt(n)``
#: rows trade about 3x the work for ``3 sqrt(n)`` instead of ``n`` steps. Measured on CPU
#: (1 thread): at batch 32 the two are even at 64x64x32 channels and sequential is 2-5x faster
#: at the deeper levels; at batch 1 chunking is 1.6-1.8x faster.
SEQUENTIAL_ROW_ELEMENTS = 1 << 15


def default_chunk(n: int, row_elements: int) -> int:
    """Rows per chunk for a scan over ``n`` rows of ``row_elements`` elements each."""
    if n <= 1 or row_elements >= SEQUENTIAL_ROW_ELEMENTS:
        return max(n, 1)
    return math.isqrt(n - 1) + 1


def _shift_to_target(w: Tensor, dim: int, reverse: bool) -> Tensor:
    """Gate weights indexed at the source position -> indexed at the target position."""
    a = torch.zeros_like(w)
    n = w.shape[dim]
    if reverse:  # target i reads source i + 1
        _at(a, dim, slice(0, n - 1)).copy_(_at(w, dim, slice(1, n)))
    else:  # target i reads source i - 1
        _at(a, dim, slice(1, n)).copy_(_at(w, dim, slice(0, n - 1)))
    return a


class _DirectionalScan(torch.autograd.Function):
    """One sweep with a hand-written backward that keeps only the sweep's output."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, dim: int, reverse: bool) -> Tensor:
        xw = _wide(x)
        ww = w.to(xw.dtype)
        h = _scan(xw, _shift_to_target(ww, dim, reverse), dim, reverse, relu=True)
        h = h.to(x.dtype)
        ctx.dim, ctx.reverse = dim, reverse
        ctx.save_for_backward(h, w)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        h, w = ctx.saved_tensors
        dim, reverse = ctx.dim, ctx.reverse
        hw, g = _wide(h), _wide(grad)
        ww = w.to(hw.dtype)
        n = h.shape[dim]
        first = n - 1 if reverse else 0
        # Q_i, the gradient of position i's pre-activation, obeys (in reverse scan order)
        # Q_i = m_i g_i + m_i w_i Q_next(i), m_i the ReLU mask (1 at the first position).
        m = (hw > 0).to(hw.dtype)
        _at(m, dim, slice(first, first + 1)).fill_(1.0)
        q = _scan(g * m, m.mul_(ww), dim, not reverse, relu=False)
        # w_j multiplies h_j into position next(j): dL/dw_j = sum over batch, channels.
        gw = torch.zeros_like(hw[0, 0])
        src, dst = (slice(1, n), slice(0, n - 1)) if reverse else (slice(0, n - 1), slice(1, n))
        _at(gw, dim, src).copy_((_at(hw, dim, src) * _at(q, dim, dst)).sum(dim=(0, 1)))
        return q.to(grad.dtype), gw.to(w.dtype), None, None


def directional_scan(x: Tensor, w: Tensor, *, dim: int, reverse: bool) -> Tensor:
    """One context-transfer sweep (docs/method.md, "Baselines"), exact, as a chunked scan.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
    w : Tensor, shape (H, W)
        Step weights in [0, 1] (the sigmoid of the gate), at the source row/column.
    dim : {-2, -1}
        -2 sweeps the rows ("up" forwards, "down" with ``reverse``), -1 the columns ("left"
        forwards, "right" with ``reverse``).
    reverse : bool

    Returns
    -------
    Tensor, shape (B, C, H, W)
        Position 0 (or ``n-1`` with ``reverse``) equals ``x`` there; every later position is
        ``ReLU(w[prev] * out[prev] + x)``.
    """
    if dim not in (-2, -1):
        raise ValueError(f"dim must be -2 (rows) or -1 (columns), got {dim}")
    if x.ndim != 4 or tuple(w.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"x must be (B, C, H, W) and w (H, W); got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    if torch.jit.is_tracing():  # a traced graph cannot hold an autograd.Function (docs/bmz.md)
        xw = _wide(x)
        h = _scan(xw, _shift_to_target(w.to(xw.dtype), dim, reverse), dim, bool(reverse),
                  relu=True)
        return h.to(x.dtype)
    return _DirectionalScan.apply(x, w, dim, bool(reverse))


class ContextTransfer(nn.Module):
    """The context-transfer module on one skip connection (docs/method.md, "Baselines").

    Parameters
    ----------
    channels : int
        ``C`` of the skip tensor.
    size : (int, int)
        ``(H, W)`` of the skip tensor at the training patch size: the gate is ``(4, H, W)``,
        zero-initialised. Other sizes are served by cropping or edge-padding it.

    Attributes
    ----------
    gate : Parameter, shape (4, H, W)
        Logits of the step weights of the up, down, left and right sweeps.
    proj : Conv2d
        ``4C -> C``, 1x1, with bias, over ``[left, right, up, down]``.
    """

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(4, int(size[0]), int(size[1])))
        self.proj = Conv2d(4 * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        gate = self.gate
        if tuple(gate.shape[-2:]) != tuple(x.shape[-2:]):
            gate = fit_prior(gate[None], tuple(x.shape[-2:]))[0]
        w = torch.sigmoid(gate)
        sweeps = (
            directional_scan(x, w[2], dim=-1, reverse=False),  # left
            directional_scan(x, w[3], dim=-1, reverse=True),   # right
            directional_scan(x, w[0], dim=-2, reverse=False),  # up
            directional_scan(x, w[1], dim=-2, reverse=True),   # down
        )
        # The 1x1 conv over the concatenation, one input quarter at a time: no 4C copy is made
        # and the backward pass keeps only the sweeps (which the scans keep anyway).
        c = x.shape[1]
        weight = self.proj.weight
        y = conv2d(sweeps[0], weight[:, :c], self.proj.bias)
        for i in range(1, 4):
            y = y + F.conv2d(sweeps[i], weight[:, i * c : (i + 1) * c])
        return F.relu(y)
