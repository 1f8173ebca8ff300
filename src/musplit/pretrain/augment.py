"""Joint geometric augmentation and SimCLR views (docs/pretraining.md, "Optimisation and
augmentation"; docs/pretraining.md, "Objectives").

One parameter draw (:func:`draw_params`) is applied identically to everything that belongs to
a sample -- the image, its label image, its target -- so they stay aligned (the reference's
batch-concatenation trick drew separate parameters for inputs and targets).

The steps per sample, in order: horizontal flip (p 0.5), vertical flip (p 0.5), a random
crop of 90 % of the side placed uniformly, rotation by an angle uniform in ±72° (bilinear,
reflect padding at the crop's border), bilinear resize back to the input size. The rotation and
the resize are done as one resampling (one interpolation instead of two). Label images use
nearest-neighbour sampling.

Clean mode computes the target after the transform from the transformed ``u``
(:func:`augment_with_target`), so colours are never interpolated; reference mode transforms
``u`` and the precomputed target with the same parameters, bilinear on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from musplit.errors import InputError
from musplit.pretrain.colormap import pcolor

__all__ = ["AugmentParams", "apply", "augment_pair", "augment_with_target", "draw_params",
           "photometric", "simclr_params"]


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one joint transform (arrays of length B).

    Attributes
    ----------
    hflip, vflip : ndarray of bool
    top, left : ndarray of int
        Crop corner.
    crop : (int, int)
        Crop height and width (the same for the batch).
    angle : ndarray of float
        Rotation in degrees.
    """

    hflip: np.ndarray
    vflip: np.ndarray
    top: np.ndarray
    left: np.ndarray
    crop: tuple[int, int]
    angle: np.ndarray

    @property
    def batch(self) -> int:
        return len(self.angle)


def draw_params(batch: int, size: tuple[int, int], rng: np.random.Generator, *,
                crop_frac: float = 0.9, max_angle: float = 72.0, p_flip: float = 0.5
                ) -> AugmentParams:
    """Draw the joint-augmentation parameters for ``batch`` samples of ``size = (H, W)``.

    The crop side is ``floor(crop_frac * side)`` (345 of 384); flips have probability
    ``p_flip`` each; the angle is uniform in ``[-max_angle, max_angle]`` degrees.
    """
    h, w = (int(v) for v in size)
    if not 0 < crop_frac <= 1:
        raise InputError(f"crop fraction must be in (0, 1], got {crop_frac}")
    ch, cw = max(1, int(crop_frac * h)), max(1, int(crop_frac * w))
    return AugmentParams(
        hflip=rng.random(batch) < p_flip,
        vflip=rng.random(batch) < p_flip,
        top=rng.integers(0, h - ch + 1, batch),
        left=rng.integers(0, w - cw + 1, batch),
        crop=(ch, cw),
        angle=rng.uniform(-max_angle, max_angle, batch),
    )


def simclr_params(batch: int, size: tuple[int, int], rng: np.random.Generator) -> AugmentParams:
    """SimCLR view geometry: crop 202/384 of the side, rotation ±36°, no flips."""
    return draw_params(batch, size, rng, crop_frac=202 / 384, max_angle=36.0, p_flip=0.0)


def _grid(crop: tuple[int, int], out: tuple[int, int], angle_deg: float,
          device: torch.device) -> Tensor:
    """Sampling grid (1, H, W, 2) that rotates a ``crop`` about its centre and resizes it to
    ``out`` (``align_corners=False`` pixel-centre convention)."""
    ch, cw = crop
    h, w = out
    ys = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) * (ch / h) - 0.5
    xs = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) * (cw / w) - 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    cy, cx = (ch - 1) / 2, (cw - 1) / 2
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    dx, dy = xx - cx, yy - cy
    sx = c * dx - s * dy + cx
    sy = s * dx + c * dy + cy
    gx = (2 * sx + 1) / cw - 1
    gy = (2 * sy + 1) / ch - 1
    return torch.stack([gx, gy], dim=-1)[None].float()


def apply(x: Tensor, params: AugmentParams, mode: str = "bilinear") -> Tensor:
    """Apply drawn parameters to ``x (B, C, H, W)``; the output has the input's size.

    ``mode`` is "bilinear" for intensities and targets, "nearest" for label images (pass them
    as float; ids up to 2^24 are exact).
    """
    if x.ndim != 4 or x.shape[0] != params.batch:
        raise InputError(f"augmentation input must be (B, C, H, W) with B = {params.batch}, "
                         f"got {tuple(x.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise InputError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    h, w = x.shape[-2:]
    ch, cw = params.crop
    out = []
    for b in range(params.batch):
        xb = x[b : b + 1]
        dims = [d for d, f in ((-1, params.hflip[b]), (-2, params.vflip[b])) if f]
        if dims:
            xb = torch.flip(xb, dims)
        t, left = int(params.top[b]), int(params.left[b])
        xb = xb[..., t : t + ch, left : left + cw]
        grid = _grid((ch, cw), (h, w), float(params.angle[b]), x.device)
        xb = F.grid_sample(xb.float(), grid, mode=mode, padding_mode="reflection",
                           align_corners=False)
        out.append(xb)
    return torch.cat(out).to(x.dtype)


def augment_pair(image: Tensor, labels: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """One draw applied to images ``(B, H, W)`` (bilinear) and label images ``(B, H, W)``
    (nearest); returns them in the same shapes and dtypes."""
    img = apply(image[:, None].float(), params, "bilinear")[:, 0]
    lab = apply(labels[:, None].float(), params, "nearest")[:, 0]
    return img, torch.round(lab).to(labels.dtype)


def augment_with_target(u: Tensor, params: AugmentParams, *, colormap: str = "nipy_spectral",
                        quantize: bool = True, mode: str = "clean",
                        target_fn=None) -> tuple[Tensor, Tensor]:
    """Augment normalised images ``u (B, H, W)`` and build their target (docs/pretraining.md,
    "Optimisation and augmentation").

    Parameters
    ----------
    u : Tensor, shape (B, H, W), in [0, 1]
    params : AugmentParams
    colormap, quantize
        The pcolor target (ignored when ``target_fn`` is given).
    mode : {"clean", "reference"}
        clean: target computed from the transformed ``u`` (exact). reference: target computed
        first, then transformed bilinearly with the same parameters.
    target_fn : callable, optional
        ``(B, H, W) -> (B, C, H, W)``; default ``pcolor(., colormap, quantize)``.

    Returns
    -------
    u_aug : Tensor (B, H, W)
    target : Tensor (B, C, H, W)
    """
    fn = target_fn or (lambda v: pcolor(v, colormap, quantize=quantize))
    if mode == "clean":
        ua = apply(u[:, None], params)[:, 0].clamp(0.0, 1.0)
        return ua, fn(ua)
    if mode == "reference":
        t = fn(u)
        return apply(u[:, None], params)[:, 0], apply(t, params)
    raise InputError(f"mode must be 'clean' or 'reference', got {mode!r}")


def photometric(u: Tensor, rng: np.random.Generator) -> Tensor:
    """SimCLR colour jitter: contrast ``(u - mean) f + mean`` with ``f`` in
    [0.7, 1.3], then brightness ``+ delta`` with ``delta`` in [-0.3, 0.3], clipped to [0, 1];
    one draw per sample of ``u (B, H, W)``."""
    b = u.shape[0]
    f = torch.from_numpy(rng.uniform(0.7, 1.3, b)).to(u).view(b, 1, 1)
    d = torch.from_numpy(rng.uniform(-0.3, 0.3, b)).to(u).view(b, 1, 1)
    m = u.mean(dim=(-2, -1), keepdim=True)
    return ((u - m) * f + m + d).clamp(0.0, 1.0)
