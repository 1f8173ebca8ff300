"""One synthetic cell rasterised in a local window: shape, protrusions and object intensity.

docs/detection.md, "Cell simulator": star-convex shapes (optional elastic warp, protrusions,
filopodia, cytoplasm) and object intensity (log-normal brightness, texture, radial profile,
sub-nuclear spots); plus the frame-level noise fields the renderer draws from.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from musplit.pretrain.config import SynthPresetConfig


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
    # Clamp so that a fully visible cell's box is >= min_box on its short side (cells under
    # about 4 px never exceed the decoding threshold):
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
