"""Synthetic images of two to four structures with known clean ground truth (docs/data.md,
"Synthetic structures").

MicroSplit (Nature Methods 2026) unmixes two, three and four structures imaged in one channel.
This generator gives such data at any size, with the clean truth that a real acquisition never
has, so splitting and denoising can both be scored. Each structure lives at its own spatial
scale, which is what lets a network tell them apart in the sum:

``filaments``
    thin, long, gently curving lines (actin- or tubulin-like), blurred by the PSF only;
``blobs``
    a few large, smooth, elliptical bodies (nucleus-like);
``puncta``
    many small bright dots of varying brightness (vesicle- or spot-like);
``membranes``
    the boundaries of a random cell tiling (a Voronoi network of thin ridges).

``C = 2`` uses the first two, ``C = 3`` the first three, ``C = 4`` all four. Every channel is
blurred with a Gaussian PSF (``psf_sigma`` pixels) and scaled so that its 99.9th percentile over
the whole stack is 1. :func:`add_poisson_gaussian` turns clean images into photon counts with
read noise, as a camera records them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from musplit.errors import InputError

__all__ = ["STRUCTURES", "Structures", "add_poisson_gaussian", "generate_structures"]

#: The structures, in the order a C-channel stack takes them.
STRUCTURES = ("filaments", "blobs", "puncta", "membranes")


@dataclass(frozen=True)
class Structures:
    """A generated stack: ``clean`` is ``(frames, size, size, C)`` float32 in [0, ~1];
    ``names`` the structure of each channel."""

    clean: np.ndarray
    names: tuple[str, ...]

    def mix(self, weights=None) -> np.ndarray:
        """The superimposed image, ``sum_c w_c * clean_c`` (default: equal weights summing to
        one), shape ``(frames, size, size)``."""
        c = self.clean.shape[-1]
        w = np.full(c, 1.0 / c) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (c,):
            raise InputError(f"{w.size} mixing weights for {c} channels")
        return np.tensordot(self.clean, w.astype(np.float32), axes=([-1], [0]))


def _splat(size: int, ys: np.ndarray, xs: np.ndarray, values=None) -> np.ndarray:
    """Add point masses at sub-pixel positions (bilinear), dropping those outside."""
    img = np.zeros((size, size), dtype=np.float64)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    v = np.ones_like(ys) if values is None else values
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                      (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        keep = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
        np.add.at(img, (yy[keep], xx[keep]), (w * v)[keep])
    return img


def _filaments(rng: np.random.Generator, size: int) -> np.ndarray:
    n = max(3, round(6 * (size / 128) ** 2))
    step = 0.5
    length = int(1.2 * size / step)
    ys, xs = [], []
    for _ in range(n):
        y, x = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        angles = angle + np.cumsum(rng.normal(0.0, 0.04, length))  # a persistent walk
        ys.append(y + step * np.cumsum(np.sin(angles)))
        xs.append(x + step * np.cumsum(np.cos(angles)))
    return _splat(size, np.concatenate(ys), np.concatenate(xs))  # the PSF gives the width


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    n = max(1, round(3 * (size / 128) ** 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(0.08, 0.16, 2) * size
        t = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)) / a
        v = (-(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)) / b
        img += rng.uniform(0.5, 1.0) / (1 + np.exp(8 * (np.hypot(u, v) - 1)))
    return ndimage.gaussian_filter(img, 2.0)


def _puncta(rng: np.random.Generator, size: int) -> np.ndarray:
    n = max(10, round(60 * (size / 128) ** 2))
    ys, xs = rng.uniform(0, size, (2, n))
    return ndimage.gaussian_filter(_splat(size, ys, xs, rng.uniform(0.3, 1.0, n)), 1.2)


def _membranes(rng: np.random.Generator, size: int) -> np.ndarray:
    n = max(4, round(10 * (size / 128) ** 2))
    seeds = rng.uniform(-0.1 * size, 1.1 * size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d, _ = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2)
    ridge = (d[:, 1] - d[:, 0]).reshape(size, size)  # 0 between the two nearest cells
    return np.exp(-0.5 * (ridge / 2.0) ** 2)


_MAKERS = {"filaments": _filaments, "blobs": _blobs, "puncta": _puncta,
           "membranes": _membranes}


def generate_structures(frames: int, size: int, channels: int = 3, *, seed: int = 0,
                        psf_sigma: float = 1.0) -> Structures:
    """``frames`` images of ``channels`` (2 to 4) structures at ``size`` x ``size`` pixels.

    Parameters
    ----------
    frames, size : int
        Stack shape; ``size`` at least 32.
    channels : int
        How many structures (:data:`STRUCTURES`, in order).
    seed : int
        The same seed gives the same stack; each frame has its own random stream.
    psf_sigma : float
        The Gaussian PSF every channel is blurred with, in pixels (0: none).
    """
    if not 2 <= channels <= 4:
        raise InputError(f"{channels} structures asked for: the generator makes 2 to 4 "
                         f"({', '.join(STRUCTURES)})")
    if frames < 1 or size < 32:
        raise InputError(f"need at least 1 frame of at least 32 x 32 pixels, got {frames} "
                         f"frame(s) of {size} x {size}")
    names = STRUCTURES[:channels]
    out = np.empty((frames, size, size, channels), dtype=np.float32)
    for f in range(frames):
        rng = np.random.default_rng([seed, f])
        for c, name in enumerate(names):
            img = _MAKERS[name](rng, size)
            if psf_sigma > 0:
                img = ndimage.gaussian_filter(img, psf_sigma)
            out[f, ..., c] = img
    for c in range(channels):  # one scale per channel over the stack, not per frame
        top = float(np.percentile(out[..., c], 99.9))
        out[..., c] /= top if top > 0 else 1.0
    return Structures(clean=out, names=names)


def add_poisson_gaussian(clean: np.ndarray, peak: float, read_sigma: float = 1.0, *,
                         seed: int = 0) -> np.ndarray:
    """Photon counts of ``clean * peak`` (Poisson shot noise) plus Gaussian read noise of
    ``read_sigma`` photons; float32, in photons (divide by ``peak`` for the clean scale)."""
    if peak <= 0 or read_sigma < 0:
        raise InputError(f"peak must be > 0 and read_sigma >= 0, got {peak}, {read_sigma}")
    rng = np.random.default_rng(seed)
    photons = rng.poisson(np.clip(clean, 0, None).astype(np.float64) * peak)
    return (photons + rng.normal(0.0, read_sigma, clean.shape)).astype(np.float32)
