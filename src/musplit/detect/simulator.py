"""The cell simulator: synthetic fluorescence frames with exact instance masks.

Stand-ins for the Cell Tracking Challenge data of the PCMC paper (docs/detection.md, "Cell
simulator"). A frame is rendered from one rasterised support per cell, so the label image
and the intensity image agree exactly: every object pixel belongs to one instance, instances
never overlap (they may touch when the preset's ``gap`` is 0), and every labelled pixel carries
its instance's signal.

Renderer (docs/detection.md, "Cell simulator"), per frame: count → star-convex shapes
(:mod:`musplit.detect.shapes`) → placement with rejection → object intensity → Gaussian PSF →
background (flat, ramp, smooth noise, haze) → Poisson photons with a nominal (not per-frame)
reference → read noise, gain, offset → uint16.

Determinism (docs/detection.md, "Determinism and storage"): frame ``i`` of namespace
``ns`` draws from ``Generator(PCG64(SeedSequence([seed, namespace_id, preset_id, i])))``, so
frames are independent, parallel generation is reproducible and namespaces never share a frame.

Only numpy and scipy are used; OpenCV is not needed. Presets are in
:mod:`musplit.detect.presets`, storage in :mod:`musplit.detect.dataset`, the reader of real
masks in :mod:`musplit.detect.ctc`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from musplit.detect.presets import PRESETS, preset_config
from musplit.detect.shapes import _make_cell, _ramp, _u, _unit_noise
from musplit.errors import InputError
from musplit.pretrain.config import SynthPresetConfig

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
    "render_frame",
]


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


def render_frame(cfg: SynthPresetConfig, rng: np.random.Generator,
                 dtype: str = "uint16") -> SynthFrame:
    """Render one frame of preset ``cfg`` with generator ``rng`` (docs/detection.md, "Cell
    simulator").

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
