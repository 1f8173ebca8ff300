"""Synthetic fluorescence cells with exact instance masks, and readers for real instance masks.

Stand-ins for the Cell Tracking Challenge data of the PCMC paper (spec/pcmc.md §11). A frame is
rendered from one rasterised support per cell, so the label image and the intensity image agree
exactly: every object pixel belongs to one instance, instances never overlap (they may touch when
the preset's ``gap`` is 0), and every labelled pixel carries its instance's signal.

Renderer (§11.2), per frame: count → star-convex shapes (optional elastic warp, protrusions,
filopodia, cytoplasm) → placement with rejection → object intensity (log-normal brightness,
texture, radial profile, sub-nuclear spots) → Gaussian PSF → background (flat, ramp, smooth
noise, haze) → Poisson photons with a nominal (not per-frame) reference → read noise, gain,
offset → uint16.

Determinism (§11.6): frame ``i`` of namespace ``ns`` draws from
``Generator(PCG64(SeedSequence([seed, namespace_id, preset_id, i])))``, so frames are
independent, parallel generation is reproducible and namespaces never share a frame.

Only numpy, scipy and scikit-image are used; OpenCV is not needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from musplit.errors import InputError
from musplit.pretrain.config import SynthDatasetConfig, SynthPresetConfig

GENERATOR_VERSION = 1

NAMESPACES: tuple[str, ...] = (
    "pretrain", "detect-train", "detect-val", "detect-test",
    "split-pool", "split-train", "split-val", "split-test",
)

__all__ = [
    "GENERATOR_VERSION",
    "NAMESPACES",
    "PRESETS",
    "SynthFrame",
    "frame_rng",
    "generate",
    "generate_frames",
    "preset_config",
    "read_ctc",
    "render_frame",
    "verify_dataset",
    "write_dataset",
]


def _presets() -> dict[str, SynthPresetConfig]:
    """The six presets of §11.3 (all numbers are [ours] stand-ins for CTC datasets)."""
    p = {
        # Fluo-N2DH-SIM+: simulated HL60 nuclei, round, textured, bright/dark spots.
        "sim_nuclei": SynthPresetConfig(
            name="sim_nuclei", cells=(8, 30), axis_long=(14, 28), aspect_max=1.4, epsilon=0.06,
            sigma_b=0.15, tau=0.25, sigma_t=2.0, spots=(1, 4), spot_radius=(2, 4),
            spot_factors=[0.5, 1.8], sigma_psf=1.5, n_peak=(300, 800), sigma_read=2.0,
            background=0.03, ramp=0.0, mask_covers="nucleus"),
        # Fluo-N2DL-HeLa: many small touching nuclei, a few bright mitotic ones.
        "dense_small_nuclei": SynthPresetConfig(
            name="dense_small_nuclei", cells=(60, 160), axis_long=(5, 11), aspect_max=1.6,
            epsilon=0.10, gap=0, sigma_b=0.35, tau=0.15, sigma_t=1.5, mitotic_fraction=0.05,
            sigma_psf=1.2, n_peak=(100, 300), sigma_read=3.0, background=0.05, ramp=0.1,
            mask_covers="nucleus"),
        # Fluo-N2DH-GOWT1: heterogeneous brightness (some nuclei near background), low SNR.
        "hetero_lowsnr_nuclei": SynthPresetConfig(
            name="hetero_lowsnr_nuclei", cells=(10, 30), axis_long=(12, 24), aspect_max=1.4,
            epsilon=0.08, sigma_b=0.8, tau=0.35, sigma_t=1.0, spots=(0, 3),
            spot_radius=(2, 3), spot_factors=[1.8], sigma_psf=1.8, n_peak=(20, 80),
            sigma_read=4.0, background=0.08, haze=0.1, i_ref=2.5, mask_covers="nucleus"),
        # Fluo-C2DL-MSC: few large elongated, warped cells with short branches.
        "large_elongated_cells": SynthPresetConfig(
            name="large_elongated_cells", cells=(2, 8), axis_long=(30, 90), axis_short=(8, 20),
            epsilon=0.05, elastic_alpha=(8, 15), elastic_sigma=10.0, branches=(0, 2),
            branch_length=(10, 30), branch_width=(3, 5), sigma_b=0.4, tau=0.1, sigma_t=3.0,
            interior_gradient=0.3, sigma_psf=2.0, n_peak=(30, 120), sigma_read=4.0,
            background=0.05, ramp=0.3, mask_covers="whole_cell"),
        # Fluo-C3DH-A549-SIM seen in 2-D: one (sometimes two) big cells with filopodia.
        "single_cell_filopodia": SynthPresetConfig(
            name="single_cell_filopodia", cells=(1, 1), extra_cell_p=0.2, axis_long=(50, 100),
            aspect_max=1.4, epsilon=0.10, filopodia=(6, 20), filopodia_length=(15, 70),
            filopodia_width=(1, 2), filopodia_intensity=(0.4, 0.8), sigma_b=0.0, tau=0.15,
            sigma_t=2.0, sigma_psf=1.5, n_peak=(200, 600), sigma_read=2.0, background=0.03,
            mask_covers="whole_cell"),
        # Fluo-C2DL-Huh7 / cytoplasm stain: bright nucleus inside a dim textured cytoplasm.
        "cyto_halo_cells": SynthPresetConfig(
            name="cyto_halo_cells", cells=(8, 25), axis_long=(8, 14), aspect_max=1.3,
            epsilon=0.12, gap=0, cytoplasm_scale=(1.6, 2.4), cytoplasm_intensity=(0.2, 0.4),
            cytoplasm_tau=0.2, sigma_b=0.5, tau=0.2, sigma_t=1.5, sigma_psf=1.5,
            n_peak=(50, 200), sigma_read=3.0, background=0.05, ramp=0.1,
            mask_covers="whole_cell"),
    }
    return p


PRESETS: dict[str, SynthPresetConfig] = _presets()


def preset_config(preset: str | SynthPresetConfig, size: int | None = None,
                  overrides: dict | None = None) -> SynthPresetConfig:
    """The preset's config, with ``overrides`` applied and scaled to a frame side ``size``.

    At another size the cell *sizes* stay (cells must stay ≥ ``min_box`` px), the counts scale
    with the frame area (at least one cell) and semi-axes and protrusions are capped so that a
    cell fits the frame.
    """
    if isinstance(preset, SynthPresetConfig):
        cfg = preset
    else:
        if preset not in PRESETS:
            raise InputError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
        cfg = PRESETS[preset]
    if overrides:
        try:
            cfg = SynthPresetConfig.model_validate({**cfg.model_dump(), **overrides})
        except Exception as e:  # pydantic ValidationError: a user mistake in the overrides
            raise InputError(f"invalid preset overrides for {cfg.name}: {e}") from None
    if size is None or size == cfg.size:
        return cfg
    if size < 32:
        raise InputError(f"synthetic frames must be at least 32 px on a side, got {size}")
    a = (size / cfg.size) ** 2
    lo = max(1, round(cfg.cells[0] * a)) if cfg.cells[0] > 0 else 0
    hi = max(lo, 1, round(cfg.cells[1] * a))
    cap = 0.35 * size

    def capped(r):
        return None if r is None else (min(r[0], cap), min(r[1], cap))

    return cfg.model_copy(update={
        "size": size,
        "cells": (lo, hi),
        "axis_long": capped(cfg.axis_long),
        "axis_short": capped(cfg.axis_short),
        "filopodia_length": (min(cfg.filopodia_length[0], 0.3 * size),
                             min(cfg.filopodia_length[1], 0.3 * size)),
        "branch_length": (min(cfg.branch_length[0], 0.2 * size),
                          min(cfg.branch_length[1], 0.2 * size)),
    })


def _preset_id(name: str) -> int:
    names = list(PRESETS)
    return names.index(name) if name in names else 1000 + zlib.crc32(name.encode()) % 100000


def frame_rng(seed: int, namespace: str, preset: str, index: int) -> np.random.Generator:
    """The generator of one frame: ``SeedSequence([seed, namespace_id, preset_id, index])``."""
    if namespace not in NAMESPACES:
        raise InputError(f"unknown namespace {namespace!r}; choose from {list(NAMESPACES)}")
    if seed < 0 or index < 0:
        raise InputError("seed and frame index must be non-negative")
    ss = np.random.SeedSequence([int(seed), NAMESPACES.index(namespace), _preset_id(preset),
                                 int(index)])
    return np.random.Generator(np.random.PCG64(ss))


@dataclass
class SynthFrame:
    """One rendered frame.

    Attributes
    ----------
    image : (H, W) uint16 (or uint8) detector counts (ADU).
    labels : (H, W) uint16 instance ids, 0 = background, 1..N in placement order.
    clean : (H, W) float32 expected photons (noise-free, after optics and background).
    objects : (H, W) float32 object intensity before optics; > 0 exactly where labels > 0.
    cells : per-cell metadata: id, box (x, y, w, h), centroid (row, col), area, brightness.
    n_peak : photons at the nominal reference intensity for this frame.
    """

    image: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    objects: np.ndarray | None = None
    cells: list[dict] = field(default_factory=list)
    n_peak: float = 0.0


def _u(rng: np.random.Generator, r) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _unit_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    s = n.std()
    return n / s if s > 0 else n


def _polyline_mask(rng, shape, start, heading, length, width, curl=0.15) -> np.ndarray:
    """A random-walk polyline of ``length`` px and ``width`` px stamped into a boolean mask."""
    mask = np.zeros(shape, bool)
    y, x = start
    r = max(width / 2.0, 0.5)
    rr = int(math.ceil(r))
    oy, ox = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    disc = oy ** 2 + ox ** 2 <= r * r + 1e-9
    for _ in range(int(round(length))):
        iy, ix = int(round(y)), int(round(x))
        y0, x0 = iy - rr, ix - rr
        sy0, sx0 = max(0, y0), max(0, x0)
        sy1, sx1 = min(shape[0], iy + rr + 1), min(shape[1], ix + rr + 1)
        if sy1 > sy0 and sx1 > sx0:
            mask[sy0:sy1, sx0:sx1] |= disc[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        heading += rng.normal(0.0, curl)
        y += math.sin(heading)
        x += math.cos(heading)
    return mask


class _Cell:
    """A candidate cell rasterised in a local window (frame coordinates y0:y1, x0:x1)."""

    __slots__ = ("y0", "x0", "support", "intensity", "mitotic", "brightness")


def _make_cell(rng: np.random.Generator, cfg: SynthPresetConfig, tex: np.ndarray,
               tex2: np.ndarray) -> _Cell:
    size = cfg.size
    mitotic = cfg.mitotic_fraction > 0 and rng.random() < cfg.mitotic_fraction
    a = _u(rng, cfg.axis_long)
    if cfg.axis_short is not None:
        b = _u(rng, cfg.axis_short)
    else:
        b = a / _u(rng, (1.0, cfg.aspect_max))
    if a < b:
        a, b = b, a
    if mitotic:
        a, b = 0.6 * a, 0.6 * b
    # Clamp so that a fully visible cell's box is >= min_box on its short side (defect 12):
    # the harmonics can shrink the radius by at most sum_k eps/k.
    shrink = 1.0 - cfg.epsilon * sum(1.0 / k for k in range(2, 6))
    b_min = (cfg.min_box / 2.0 + 0.5) / max(shrink, 0.3)
    b = max(b, b_min)
    a = max(a, b)
    theta = rng.uniform(0, math.pi)
    amps = rng.uniform(0, cfg.epsilon, size=4) / np.arange(2, 6) if cfg.epsilon > 0 else \
        np.zeros(4)
    phases = rng.uniform(0, 2 * math.pi, size=4)
    cscale = _u(rng, cfg.cytoplasm_scale) if cfg.cytoplasm_scale is not None else 1.0
    alpha = _u(rng, cfg.elastic_alpha) if cfg.elastic_alpha is not None else 0.0
    extra = 0.0
    if cfg.branches is not None:
        extra = max(extra, cfg.branch_length[1] + cfg.branch_width[1])
    if cfg.filopodia is not None:
        extra = max(extra, cfg.filopodia_length[1] + cfg.filopodia_width[1])
    half = int(math.ceil(a * cscale * (1 + cfg.epsilon * 1.3) + alpha + extra + 3))
    cy, cx = rng.uniform(0, size), rng.uniform(0, size)
    y0, x0 = int(math.floor(cy)) - half, int(math.floor(cx)) - half
    n = 2 * half + 1
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    dy, dx = yy + y0 - cy, xx + x0 - cx
    if alpha > 0:
        disp = rng.standard_normal((2, n, n))
        for i in range(2):
            d = ndi.gaussian_filter(disp[i], cfg.elastic_sigma, mode="reflect")
            m = np.abs(d).max()
            disp[i] = d / m * alpha if m > 0 else d
        dy, dx = dy + disp[0], dx + disp[1]
    cu = dx * math.cos(theta) + dy * math.sin(theta)
    cv = -dx * math.sin(theta) + dy * math.cos(theta)
    phi = np.arctan2(cv, cu)
    dist = np.hypot(cu, cv)

    def rho_of(aa, bb, am, ph):
        r_ell = aa * bb / np.sqrt((bb * np.cos(phi)) ** 2 + (aa * np.sin(phi)) ** 2)
        pert = 1.0 + sum(am[k] * np.cos((k + 2) * phi + ph[k]) for k in range(4))
        return dist / (r_ell * pert)

    rho = rho_of(a, b, amps, phases)
    nucleus = rho <= 1.0
    tau = 0.05 if mitotic else cfg.tau
    bright = cfg.brightness * float(rng.lognormal(0.0, cfg.sigma_b)) if cfg.sigma_b > 0 \
        else cfg.brightness
    if mitotic:
        bright *= 2.0
    win = (slice(0, n), slice(0, n))
    # Texture fields are frame-level; read them through the (clipped) window.
    fy0, fx0 = max(0, y0), max(0, x0)
    fy1, fx1 = min(size, y0 + n), min(size, x0 + n)
    t_local = np.zeros((n, n))
    t2_local = np.zeros((n, n))
    if fy1 > fy0 and fx1 > fx0:
        t_local[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = tex[fy0:fy1, fx0:fx1]
        t2_local[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = tex2[fy0:fy1, fx0:fx1]
    texture = np.maximum(1.0 + tau * t_local, 0.2)
    profile = np.clip(1.0 - 0.3 * rho ** 2, 0.0, 1.0)
    inten = bright * texture * profile
    if cfg.interior_gradient > 0:
        g = 1.0 + cfg.interior_gradient * np.clip(cu / a, -1, 1) * rng.choice([-1.0, 1.0])
        inten = inten * g
    # Sub-nuclear spots: discs inside the nucleus body, multiplied by f_n.
    k_spots = int(rng.integers(cfg.spots[0], cfg.spots[1] + 1))
    body = np.argwhere(rho < 0.6)
    for _ in range(k_spots if len(body) else 0):
        sy, sx = body[rng.integers(len(body))]
        rn = _u(rng, cfg.spot_radius)
        f = float(rng.choice(cfg.spot_factors))
        disc = (yy - sy) ** 2 + (xx - sx) ** 2 <= rn * rn
        inten = np.where(disc & nucleus, inten * f, inten)
    support = nucleus.copy()
    if cfg.cytoplasm_scale is not None:
        amps2 = rng.uniform(0, cfg.epsilon, size=4) / np.arange(2, 6)
        phases2 = rng.uniform(0, 2 * math.pi, size=4)
        cell = rho_of(a * cscale, b * cscale, amps2, phases2) <= 1.0
        cyto = cell & ~nucleus
        c = _u(rng, cfg.cytoplasm_intensity)
        ctex = np.maximum(1.0 + cfg.cytoplasm_tau * t2_local, 0.2)
        inten = np.where(cyto, bright * c * ctex, inten)
        support |= cell
    level = bright * 0.7
    protrusions = []
    if cfg.branches is not None:
        for _ in range(int(rng.integers(cfg.branches[0], cfg.branches[1] + 1))):
            protrusions.append((cfg.branch_length, cfg.branch_width, (1.0, 1.0), 0.1))
    if cfg.filopodia is not None:
        for _ in range(int(rng.integers(cfg.filopodia[0], cfg.filopodia[1] + 1))):
            protrusions.append((cfg.filopodia_length, cfg.filopodia_width,
                                cfg.filopodia_intensity, 0.08))
    for length_r, width_r, inten_r, curl in protrusions:
        edge = np.argwhere(support & ~ndi.binary_erosion(support))
        if not len(edge):
            break
        ey, ex = edge[rng.integers(len(edge))]
        heading = math.atan2(ey - (cy - y0), ex - (cx - x0)) + rng.normal(0, 0.3)
        m = _polyline_mask(rng, (n, n), (float(ey), float(ex)), heading, _u(rng, length_r),
                           _u(rng, width_r), curl) & ~support
        inten = np.where(m, level * _u(rng, inten_r) * texture, inten)
        support |= m
    del win
    c = _Cell()
    c.y0, c.x0 = y0, x0
    c.support = support
    c.intensity = np.where(support, inten, 0.0)
    c.mitotic = bool(mitotic)
    c.brightness = bright
    return c


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    r = xx * math.cos(ang) + yy * math.sin(ang)
    return (r - r.min()) / max(r.max() - r.min(), 1e-12)


def render_frame(cfg: SynthPresetConfig, rng: np.random.Generator,
                 dtype: str = "uint16") -> SynthFrame:
    """Render one frame of preset ``cfg`` with generator ``rng`` (spec §11.2).

    Parameters
    ----------
    cfg : the preset (already scaled to its frame side ``cfg.size``).
    rng : the frame's generator (see :func:`frame_rng`).
    dtype : "uint16" (detector ADU) or "uint8" (rescaled by the 99.9th percentile).

    Returns
    -------
    SynthFrame with ``image`` (H, W), ``labels`` (H, W) uint16, ``clean`` and per-cell metadata.
    """
    size = cfg.size
    n_target = int(rng.integers(cfg.cells[0], cfg.cells[1] + 1))
    if cfg.extra_cell_p > 0 and rng.random() < cfg.extra_cell_p:
        n_target += 1
    tex = _unit_noise(rng, (size, size), cfg.sigma_t)
    tex2 = _unit_noise(rng, (size, size), cfg.sigma_t)
    labels = np.zeros((size, size), np.uint16)
    obj = np.zeros((size, size), np.float64)
    cells: list[dict] = []
    disk = None
    if cfg.gap > 0:
        r = cfg.gap
        oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
        disk = oy ** 2 + ox ** 2 <= r * r
    for _ in range(n_target):
        for _attempt in range(cfg.attempts):
            c = _make_cell(rng, cfg, tex, tex2)
            n = c.support.shape[0]
            fy0, fx0 = max(0, c.y0), max(0, c.x0)
            fy1, fx1 = min(size, c.y0 + n), min(size, c.x0 + n)
            if fy1 <= fy0 or fx1 <= fx0:
                continue
            sl = (slice(fy0 - c.y0, fy1 - c.y0), slice(fx0 - c.x0, fx1 - c.x0))
            vis = c.support[sl]
            if int(vis.sum()) < cfg.min_area:
                continue
            grown = ndi.binary_dilation(vis, disk) if disk is not None else vis
            if np.any(labels[fy0:fy1, fx0:fx1][grown]):
                continue
            rows = np.flatnonzero(vis.any(1))
            cols = np.flatnonzero(vis.any(0))
            y, x = fy0 + rows[0], fx0 + cols[0]
            h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
            full = y > 0 and x > 0 and y + h < size and x + w < size
            if full and min(h, w) < cfg.min_box:
                continue
            cid = len(cells) + 1
            labels[fy0:fy1, fx0:fx1][vis] = cid
            obj[fy0:fy1, fx0:fx1][vis] = c.intensity[sl][vis]
            ys, xs = np.nonzero(vis)
            cells.append({
                "id": cid, "box": [int(x), int(y), int(w), int(h)],
                "centroid": [float(fy0 + ys.mean()), float(fx0 + xs.mean())],
                "area": int(vis.sum()), "brightness": float(c.brightness),
                "fully_visible": bool(full), "mitotic": c.mitotic,
            })
            break
    blur = ndi.gaussian_filter(obj, cfg.sigma_psf, mode="reflect") if cfg.sigma_psf > 0 else obj
    bg = np.full((size, size), cfg.background)
    if cfg.ramp > 0:
        bg += cfg.ramp * _ramp(rng, size)
    if cfg.background_noise > 0:
        bg += cfg.background_noise * _unit_noise(rng, (size, size), 40.0)
    if cfg.haze > 0:
        bg += cfg.haze * ndi.gaussian_filter(obj, 8.0, mode="reflect")
    bg = np.maximum(bg, 0.0)
    n_peak = _u(rng, cfg.n_peak)
    lam = np.maximum(n_peak * (blur / cfg.i_ref + bg), 0.0)
    counts = rng.poisson(lam).astype(np.float64)
    if cfg.sigma_read > 0:
        counts += rng.normal(0.0, cfg.sigma_read, size=counts.shape)
    adu = np.clip(np.round(cfg.gain * counts + cfg.offset), 0, 65535)
    if dtype == "uint16":
        image = adu.astype(np.uint16)
    elif dtype == "uint8":
        p = np.percentile(adu, 99.9)
        image = np.clip(np.round(adu / max(p, 1e-12) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise InputError(f"dtype must be 'uint16' or 'uint8', got {dtype!r}")
    return SynthFrame(image=image, labels=labels, clean=lam.astype(np.float32),
                      objects=obj.astype(np.float32), cells=cells, n_peak=n_peak)


def generate_frames(preset: str | SynthPresetConfig, n: int, seed: int, size: int | None = None,
                    namespace: str = "pretrain", start: int = 0, dtype: str = "uint16",
                    overrides: dict | None = None):
    """Yield :class:`SynthFrame` objects for frames ``start .. start + n - 1`` of a namespace."""
    cfg = preset_config(preset, size, overrides)
    if n < 0:
        raise InputError(f"number of frames must be non-negative, got {n}")
    for i in range(start, start + n):
        yield render_frame(cfg, frame_rng(seed, namespace, cfg.name, i), dtype=dtype)


def generate(preset: str | SynthPresetConfig, n: int, seed: int, size: int | None = None,
             namespace: str = "pretrain", start: int = 0,
             overrides: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic frames and their instance masks.

    Parameters
    ----------
    preset : a name in :data:`PRESETS` or a :class:`SynthPresetConfig`.
    n : number of frames.
    seed : global seed; with ``namespace`` and the frame index it fixes every frame.
    size : frame side (default: the preset's, 384); see :func:`preset_config` for scaling.
    namespace : one of :data:`NAMESPACES`; different namespaces never share frames.
    start : index of the first frame (frames are independent, so ranges can be split).

    Returns
    -------
    images : (N, H, W) float32 detector counts (the uint16 ADU values as float).
    labels : (N, H, W) int32 instance ids, 0 = background.
    """
    cfg = preset_config(preset, size, overrides)
    frames = list(generate_frames(cfg, n, seed, namespace=namespace, start=start))
    s = cfg.size
    images = np.zeros((n, s, s), np.float32)
    labels = np.zeros((n, s, s), np.int32)
    for i, f in enumerate(frames):
        images[i] = f.image
        labels[i] = f.labels
    return images, labels


# -- storage -------------------------------------------------------------------------------
def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    import tifffile

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tifffile.imwrite(tmp, arr, photometric="minisblack", software=None, datetime=None)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _file_record(root: Path, rel: str, arr: np.ndarray) -> dict:
    from musplit.checkpoint import file_sha256

    return {"path": rel, "sha256": file_sha256(root / rel),
            "data_sha256": _sha256_bytes(np.ascontiguousarray(arr).tobytes()),
            "shape": list(arr.shape), "dtype": str(arr.dtype)}


def write_dataset(out_dir: str | os.PathLike, config: SynthDatasetConfig,
                  overwrite: bool = False) -> Path:
    """Generate ``config`` into ``out_dir`` and return the manifest path (§11.6 storage).

    Layout: ``images/000000.tif`` (uint16 or uint8), ``labels/000000.tif`` (uint16),
    ``meta/000000.json`` (per-cell metadata) and ``manifest.json`` (generator version, preset
    config, seeds, and per-file sha256, data sha256, shape and dtype).
    """
    from musplit import __version__

    out = Path(out_dir)
    man_path = out / "manifest.json"
    if man_path.exists() and not overwrite:
        raise InputError(f"{man_path} exists; pass overwrite to replace the dataset")
    cfg = preset_config(config.preset, config.size, config.overrides)
    for sub in ("images", "labels", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    files = []
    for i, fr in enumerate(generate_frames(cfg, config.frames, config.seed,
                                           namespace=config.namespace, dtype=config.dtype)):
        stem = f"{i:06d}"
        _write_tiff(out / "images" / f"{stem}.tif", fr.image)
        _write_tiff(out / "labels" / f"{stem}.tif", fr.labels)
        _write_json(out / "meta" / f"{stem}.json",
                    {"index": i, "n_peak": fr.n_peak, "cells": fr.cells})
        files.append(_file_record(out, f"images/{stem}.tif", fr.image))
        files.append(_file_record(out, f"labels/{stem}.tif", fr.labels))
    manifest = {
        "generator": "musplit.pretrain.synth",
        "generator_version": GENERATOR_VERSION,
        "musplit_version": __version__,
        "dataset": config.model_dump(mode="json"),
        "preset": cfg.model_dump(mode="json"),
        "seed_scheme": "SeedSequence([seed, namespace_id, preset_id, frame_index])",
        "namespace_id": NAMESPACES.index(config.namespace),
        "preset_id": _preset_id(cfg.name),
        "files": files,
    }
    _write_json(man_path, manifest)
    return man_path


def verify_dataset(out_dir: str | os.PathLike) -> list[str]:
    """Regenerate a written dataset and compare checksums; returns the problems (empty = ok).

    Checks each file against its recorded sha256 (was it changed on disk?) and each regenerated
    array against the recorded data sha256 (does this generator still produce the same data?).
    """
    from musplit.checkpoint import file_sha256

    out = Path(out_dir)
    man_path = out / "manifest.json"
    if not man_path.is_file():
        raise InputError(f"{out} is not a synthetic dataset (no manifest.json)")
    try:
        manifest = json.loads(man_path.read_text())
        config = SynthDatasetConfig.model_validate(manifest["dataset"])
        cfg = SynthPresetConfig.model_validate(manifest["preset"])
        records = {r["path"]: r for r in manifest["files"]}
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"{man_path} is not a valid synth manifest ({e})") from None
    problems = []
    for rel, rec in records.items():
        p = out / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(p) != rec["sha256"]:
            problems.append(f"{rel}: file checksum differs from the manifest")
    for i, fr in enumerate(generate_frames(cfg, config.frames, config.seed,
                                           namespace=config.namespace, dtype=config.dtype)):
        stem = f"{i:06d}"
        for kind, arr in (("images", fr.image), ("labels", fr.labels)):
            rel = f"{kind}/{stem}.tif"
            rec = records.get(rel)
            if rec is None:
                problems.append(f"{rel}: not in the manifest")
                continue
            if _sha256_bytes(np.ascontiguousarray(arr).tobytes()) != rec["data_sha256"]:
                problems.append(f"{rel}: regenerated data differ from the manifest")
    return problems


# -- Cell Tracking Challenge instance masks ------------------------------------------------
def _frame_key(stem: str, prefix: str) -> str | None:
    if not stem.startswith(prefix):
        return None
    rest = stem[len(prefix):]
    return rest if rest.isdigit() else None


def _resize_pair(img: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image (no anti-aliasing) and nearest-neighbour labels to size × size (P-3)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(img.astype(np.float32))[None, None]
    im = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    h, w = lab.shape
    rows = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(np.int64)
    return im, lab[np.ix_(rows, cols)]


def read_ctc(folder: str | os.PathLike, source: str = "auto", size: int | None = None,
             sequences: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read images and instance masks in the Cell Tracking Challenge layout.

    ``folder`` is either a dataset root holding sequences (``01/t000.tif`` with masks in
    ``01_GT/SEG/man_seg000.tif`` or ``01_ST/SEG/man_seg000.tif``) or one sequence folder
    (``.../01``, masks in its sibling ``01_GT/SEG``). Images and masks are paired by their frame
    number (never by sort order, defect 13); frames without a mask are skipped, as CTC gold
    truth is sparse; a mask without its image is an error.

    Parameters
    ----------
    source : "gt" (``_GT/SEG``), "st" (``_ST/SEG``) or "auto" (GT where present, else ST).
    size : resize every frame to size × size (bilinear image, nearest labels); needed when
        sequences differ in shape.
    sequences : sequence names to read (default: every ``NN`` folder with masks).

    Returns
    -------
    images : (N, H, W) float32. labels : (N, H, W) int32.
    """
    import tifffile

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if source not in ("auto", "gt", "st"):
        raise InputError(f"source must be 'auto', 'gt' or 'st', got {source!r}")
    if (root.parent / f"{root.name}_GT").is_dir() or (root.parent / f"{root.name}_ST").is_dir():
        seq_dirs = [root]
        base = root.parent
    else:
        base = root
        seq_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if sequences is not None:
            missing = [s for s in sequences if not (root / s).is_dir()]
            if missing:
                raise InputError(f"{root}: sequence folder(s) {missing} not found")
            seq_dirs = [root / s for s in sequences]
        if not seq_dirs:
            raise InputError(f"{root}: no sequence folders (01, 02, ...) found; expected the Cell "
                             "Tracking Challenge layout 01/t000.tif + 01_GT/SEG/man_seg000.tif")
    images, labels = [], []
    used = 0
    for seq in seq_dirs:
        cands = {"gt": base / f"{seq.name}_GT" / "SEG", "st": base / f"{seq.name}_ST" / "SEG"}
        if source == "auto":
            seg = cands["gt"] if cands["gt"].is_dir() else cands["st"]
        else:
            seg = cands[source]
        if not seg.is_dir():
            if len(seq_dirs) == 1 or sequences is not None:
                raise InputError(f"{seq}: no mask folder {seg} (expected {seq.name}_GT/SEG or "
                                 f"{seq.name}_ST/SEG next to it)")
            continue
        img_files = {}
        for p in seq.iterdir():
            if p.suffix.lower() in (".tif", ".tiff"):
                k = _frame_key(p.stem, "t")
                if k is not None:
                    img_files[int(k)] = p
        mask_files = []
        for p in sorted(seg.iterdir()):
            if p.suffix.lower() not in (".tif", ".tiff"):
                continue
            k = _frame_key(p.stem, "man_seg")
            if k is None:
                if p.stem.startswith("man_seg_"):
                    raise InputError(f"{p}: per-slice 3-D annotations (man_seg_TTT_ZZZ) are not "
                                     "supported; give 2-D frames")
                continue
            mask_files.append((int(k), p))
        if not mask_files:
            raise InputError(f"{seg}: no mask files named man_segNNN.tif")
        for k, mp in mask_files:
            if k not in img_files:
                raise InputError(f"{mp}: no matching image t{k:03d}.tif in {seq}")
            try:
                img = tifffile.imread(img_files[k])
                lab = tifffile.imread(mp)
            except Exception as e:  # unreadable or not a TIFF: the user's file
                raise InputError(f"cannot read {img_files[k].name} / {mp.name}: {e}") from None
            img, lab = np.squeeze(img), np.squeeze(lab)
            if img.ndim != 2 or lab.ndim != 2:
                raise InputError(f"{img_files[k]}: expected 2-D frames, got image {img.shape} "
                                 f"and mask {lab.shape}")
            if img.shape != lab.shape:
                raise InputError(f"{img_files[k].name} has shape {img.shape} but its mask "
                                 f"{mp.name} has shape {lab.shape}")
            if not np.issubdtype(lab.dtype, np.integer):
                raise InputError(f"{mp}: instance masks must be integer images, got {lab.dtype}")
            if lab.min() < 0:
                raise InputError(f"{mp}: instance ids must be non-negative")
            if size is not None:
                img, lab = _resize_pair(img, lab, size)
            images.append(img.astype(np.float32))
            labels.append(lab.astype(np.int32))
            used += 1
    if not used:
        raise InputError(f"{root}: no image/mask pairs found")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(f"{root}: frames differ in shape {sorted(shapes)}; pass a size to "
                         "resize them")
    return np.stack(images), np.stack(labels)
