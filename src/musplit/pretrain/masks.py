"""Masking schemes of PCMC and its baselines (docs/pretraining.md, "Masks").

* :func:`padded_mask` -- the paper's padded masks (4.1): a grid of ``P x P`` candidate patches
  with a gap of ``P // 2`` between and around them, each zeroed with probability ``p``.
* :func:`token_mask` -- MAE token dropping (4.2, 4.3): a per-sample random permutation, the
  first ``floor(r N)`` tokens are masked.
* :func:`block_mask` -- the CNN MAE baseline (4.3): exactly ``round(r n)`` of the ``n`` blocks.
* :func:`no_mask` -- nothing masked (4.4).

Pixel masks are boolean arrays, ``True`` where the pixel is masked, drawn from a
``numpy.random.Generator`` (the data pipeline runs in numpy). Grids are anchored at pixel
``(0, 0)`` of the array they are drawn for, so a mask drawn for a whole frame is anchored in frame
coordinates (docs/pretraining.md, "µSplit pre-training").
"""

from __future__ import annotations

import numpy as np
import torch

from musplit.errors import InputError

__all__ = [
    "apply_mask",
    "block_mask",
    "coverage",
    "make_mask",
    "no_mask",
    "padded_grid",
    "padded_mask",
    "token_mask",
    "tokens_to_pixels",
]


def _check_hw(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise InputError(f"mask size must be positive, got {height}x{width}")


def _check_p(value: float, name: str, *, upper_open: bool = False) -> float:
    v = float(value)
    if not (0.0 <= v < 1.0 if upper_open else 0.0 <= v <= 1.0):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise InputError(f"{name} must be in {bound}, got {value}")
    return v


def padded_grid(height: int, width: int, patch: int = 12) -> tuple[int, int]:
    """Rows and columns of candidate patches: ``(floor(H/s), floor(W/s))``, ``s = P + P//2``.

    At 384 x 384 with ``P = 12`` that is 21 x 21 = 441 candidates; at 64 x 64 with ``P = 6``,
    7 x 7.
    """
    _check_hw(height, width)
    if int(patch) < 2:
        raise InputError(f"padded-mask patch must be >= 2, got {patch}")
    s = patch + patch // 2
    return int(height) // s, int(width) // s


def padded_mask(
    height: int,
    width: int,
    *,
    batch: int = 1,
    patch: int = 12,
    p: float = 0.5,
    per_sample: bool = True,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Padded masks (the paper's proposal).

    Patch ``(i, j)`` covers rows ``[g + i s, g + i s + P)`` and the same columns, with gap
    ``g = P // 2`` and stride ``s = P + g``; each of the ``n_r x n_c`` candidates is masked
    independently with probability ``p``. Pixels outside the candidates are never masked, so
    every hole has unmasked context. Expected coverage ``p n_r n_c P^2 / (H W)``: 21.5 % at
    384 x 384, ``p = 0.5``.

    Parameters
    ----------
    height, width : int
    batch : int
        Number of masks.
    patch : int
        Patch side ``P`` (12 at 384 px; 6 for 64-px µSplit patches).
    p : float
        Probability that a candidate is masked.
    per_sample : bool
        One draw per mask (clean mode) or one draw shared by the batch (the reference).
    rng : numpy.random.Generator, optional

    Returns
    -------
    ndarray of bool, shape (batch, H, W)
        True where masked.

    Raises
    ------
    InputError
        An empty candidate grid or ``p`` outside [0, 1].
    """
    p = _check_p(p, "padded-mask p")
    n_r, n_c = padded_grid(height, width, patch)
    if n_r == 0 or n_c == 0:
        raise InputError(f"a {height}x{width} image has no padded-mask candidates for patch "
                         f"{patch} (needs sides >= {patch + patch // 2})")
    rng = rng if rng is not None else np.random.default_rng()
    draws = 1 if not per_sample else batch
    chosen = rng.random((draws, n_r, n_c)) < p
    if draws != batch:
        chosen = np.broadcast_to(chosen, (batch, n_r, n_c))
    g, s = patch // 2, patch + patch // 2
    # Expand the grid decisions to pixels: each candidate becomes an s x s cell whose first g
    # rows/columns are the gap and the next P the patch.
    cell = np.zeros((s, s), dtype=bool)
    cell[g:, g:] = True
    blocks = chosen[:, :, None, :, None] & cell[None, None, :, None, :]
    mask = np.zeros((batch, height, width), dtype=bool)
    mask[:, : n_r * s, : n_c * s] = blocks.reshape(batch, n_r * s, n_c * s)
    return mask


def block_mask(
    height: int,
    width: int,
    *,
    batch: int = 1,
    block: int = 24,
    ratio: float = 0.75,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """MAE-style block masks in pixel space (CNN baseline).

    The image is tiled by ``block x block`` cells from ``(0, 0)`` (``floor(H/b) x floor(W/b)``
    cells; a remainder strip is never masked) and exactly ``round(ratio n)`` of the ``n`` cells
    are masked per sample, chosen uniformly. At 384 px with ``block = 24``: 192 of 256.

    Returns
    -------
    ndarray of bool, shape (batch, H, W)
    """
    _check_hw(height, width)
    ratio = _check_p(ratio, "block-mask ratio")
    if int(block) < 1:
        raise InputError(f"block size must be >= 1, got {block}")
    nr, nc = height // block, width // block
    n = nr * nc
    if n == 0:
        raise InputError(f"a {height}x{width} image holds no {block}x{block} mask blocks")
    k = int(round(ratio * n))
    rng = rng if rng is not None else np.random.default_rng()
    order = np.argsort(rng.random((batch, n)), axis=1)
    chosen = np.zeros((batch, n), dtype=bool)
    np.put_along_axis(chosen, order[:, :k], True, axis=1)
    cells = chosen.reshape(batch, nr, 1, nc, 1)
    cells = np.broadcast_to(cells, (batch, nr, block, nc, block))
    mask = np.zeros((batch, height, width), dtype=bool)
    mask[:, : nr * block, : nc * block] = cells.reshape(batch, nr * block, nc * block)
    return mask


def no_mask(height: int, width: int, *, batch: int = 1) -> np.ndarray:
    """Nothing masked: all False, shape (batch, H, W)."""
    _check_hw(height, width)
    return np.zeros((batch, height, width), dtype=bool)


def token_mask(
    batch: int,
    n_tokens: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE token masking: per sample, ``argsort`` of uniform noise.

    Parameters
    ----------
    batch, n_tokens : int
    ratio : float
        In [0, 1); ``floor(ratio * n_tokens)`` tokens are masked (760 of 2304 at 0.33). 0 masks
        nothing.
    generator : torch.Generator, optional
    device : optional

    Returns
    -------
    masked : LongTensor, shape (batch, M)
        Indices of the masked tokens (row-major token order), ``M = floor(ratio N)``.
    visible : LongTensor, shape (batch, N - M)
        Indices of the visible tokens.
    """
    ratio = _check_p(ratio, "token-mask ratio", upper_open=True)
    m = int(np.floor(ratio * n_tokens + 1e-9))  # guard against 0.33*N landing a hair below
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, n_tokens, generator=generator, device=gen_device)
    order = noise.argsort(dim=1)
    if device is not None:
        order = order.to(device)
    return order[:, :m], order[:, m:]


def tokens_to_pixels(masked: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Pixel mask of masked tokens: ``(B, M)`` indices on a ``(gh, gw)`` row-major token grid
    to a bool tensor ``(B, gh * patch, gw * patch)``."""
    gh, gw = grid
    b = masked.shape[0]
    flat = torch.zeros(b, gh * gw, dtype=torch.bool, device=masked.device)
    flat.scatter_(1, masked, True)
    cells = flat.reshape(b, gh, 1, gw, 1).expand(b, gh, patch, gw, patch)
    return cells.reshape(b, gh * patch, gw * patch)


def apply_mask(x, mask, fill: float = 0.0):
    """Set masked pixels to ``fill`` in every channel.

    ``x`` ``(B, C, H, W)`` or ``(B, H, W)`` (numpy or torch), ``mask`` bool ``(B, H, W)``.
    Returns a new array/tensor.
    """
    if isinstance(x, torch.Tensor):
        m = torch.as_tensor(mask, device=x.device)
        if x.ndim == 4:
            m = m[:, None]
        return x.masked_fill(m, fill)
    m = np.asarray(mask)
    if x.ndim == 4:
        m = m[:, None]
    return np.where(m, np.asarray(fill, dtype=x.dtype), x)


def coverage(mask) -> float:
    """Fraction of masked pixels."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return float(m.mean())


def make_mask(config, height: int, width: int, *, batch: int = 1,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Pixel masks for a pixel-space :class:`~musplit.pretrain.pretext_config.MaskConfig`
    (``padded``, ``blocks`` or ``none``), shape (batch, H, W). Token masks are drawn inside the
    ViT (:func:`token_mask`)."""
    kind = config.kind
    if kind == "padded":
        return padded_mask(height, width, batch=batch, patch=config.patch, p=config.p,
                           per_sample=bool(config.per_sample), rng=rng)
    if kind == "blocks":
        return block_mask(height, width, batch=batch, block=config.block, ratio=config.ratio,
                          rng=rng)
    if kind == "none":
        return no_mask(height, width, batch=batch)
    raise InputError(f"mask kind {kind!r} is not a pixel-space mask")
