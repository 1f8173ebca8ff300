"""SinosoidalCritters: the synthetic two-channel dataset of µSplit (docs/data.md,
"Synthetic data", which has the whole recipe).

A *critter* is a curve made of two sine segments whose angular frequencies come from two of four
ranges R0..R3, optionally joined by a slow, almost straight connector (frequency 0.01). Channel 1
pairs (R0, R2) or (R1, R3), channel 2 pairs (R0, R3) or (R1, R2): every range occurs equally
often in both channels, so only the *pairing* identifies the channel. Each channel
of a frame holds ``curves_per_channel`` critters rendered as thick lines.

The pipeline per frame is: draw the recipe parameters from the frame's own random stream,
build each critter's centreline on a 0.1 px grid, place it, rasterise
it into a binary mask, and convolve the per-channel sum of the masks with the thickness kernel
K(0, 0) = 1, K(d) = sqrt(2)/|d|. Convolution is linear, so one FFT convolution per channel
gives exactly the sum of the per-curve renderings ``M_curve * K``.

Public functions
----------------
generate_critters
    The dataset: ``(n_frames, size, size, 2)`` float32.
critter_centreline
    The centreline samples of one critter, for inspection and tests.
rasterise_centreline
    Binary mask of the pixels a centreline passes through.
render_centrelines
    Mask (or per-channel curve-count image) convolved with the thickness kernel.
thickness_kernel
    The kernel K itself.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft

from musplit.errors import ConfigError, InputError

__all__ = [
    "CHANNEL_PAIRINGS",
    "PAIRINGS",
    "CONNECTOR_FREQUENCY",
    "FREQUENCY_RANGES",
    "GENERATOR_VERSION",
    "SAMPLING_STEP",
    "critter_centreline",
    "generate_critters",
    "rasterise_centreline",
    "render_centrelines",
    "thickness_kernel",
]

logger = logging.getLogger(__name__)

#: Bump when a change alters the generated arrays for unchanged arguments (cache keys).
GENERATOR_VERSION = "1"

#: Angular frequency ranges R0..R3 in rad/px, half-open ``[low, high)``.
FREQUENCY_RANGES: tuple[tuple[float, float], ...] = (
    (0.05, 0.07),
    (0.12, 0.14),
    (0.30, 0.32),
    (0.60, 0.62),
)

#: Per channel, the two (lower range, higher range) pairings, each drawn with probability 1/2.
CHANNEL_PAIRINGS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((0, 2), (1, 3)),
    ((0, 3), (1, 2)),
)

#: Angular frequency of the N25 connector segment.
CONNECTOR_FREQUENCY = 0.01

#: Centreline sampling step along x in px; 10 samples per pixel.
SAMPLING_STEP = 0.1
_SAMPLES_PER_PX = 10

_VERTICAL_BAND = 0.9  # curves start in [0, 0.9 W)
_HORIZONTAL_SHIFT = 0.3  # h = +-U * 0.3 W
_PARITY_CONNECTOR_FRACTION = 0.1  # reference law c = floor(0.1 D)

#: Named channel pairings. "paper" is the paper's: only the pairing identifies the channel, so a
#: pixel can be assigned only where both waveforms of its critter are in view. The other two are
#: easier variants for short training budgets (not in the paper): in "shared-low" the
#: low-frequency segment (R0 or R1) occurs in both channels and the high-frequency one (R2 for
#: channel 1, R3 for channel 2) identifies the channel; in "shared-high" the other way round
#: (R0 for channel 1, R1 for channel 2). Half of every critter is then ambiguous on its own and
#: needs the other half in view.
PAIRINGS: dict[str, tuple[tuple[tuple[int, int], tuple[int, int]], ...]] = {
    "paper": CHANNEL_PAIRINGS,
    "shared-low": (((0, 2), (1, 2)), ((0, 3), (1, 3))),
    "shared-high": (((0, 2), (0, 3)), ((1, 2), (1, 3))),
}
_PAIRING_ARRAYS = {k: np.asarray(v, dtype=np.int64) for k, v in PAIRINGS.items()}
_PAIRINGS = _PAIRING_ARRAYS["paper"]  # (channel, option, lower/higher)
_RANGES = np.asarray(FREQUENCY_RANGES, dtype=np.float64)  # (range, low/high)


# --------------------------------------------------------------------------------------------
# Centreline geometry
# --------------------------------------------------------------------------------------------


def _centrelines(
    freqs: np.ndarray, lengths: np.ndarray, amplitude: float, parity: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Centreline heights of several critters at once.

    Parameters
    ----------
    freqs : ndarray, shape (n, S)
        Angular frequency of each of the S segments of each curve.
    lengths : ndarray of int, shape (n, S)
        Segment lengths in pixels (each >= 1).
    amplitude : float
        Multiplies the unit sine (A).
    parity : bool
        Keep the reference's truthiness skip of the continuity shift.

    Returns
    -------
    y : ndarray, shape (sum(n_samples),)
        The curves' heights at x = 0, 0.1, ..., concatenated curve after curve.
    n_samples : ndarray of int, shape (n,)
        Number of samples of each curve.
    """
    n, n_seg = freqs.shape
    # A segment of length l px has 10 l samples; its last one is dropped because the next
    # segment starts on the same value, and the final segment drops it as well, as the
    # reference does, so every segment keeps 10 l - 1 samples.
    n_s = lengths.astype(np.int64) * _SAMPLES_PER_PX
    theta = np.zeros((n, n_seg))  # phase of each segment's first sample
    shift = np.zeros((n, n_seg))  # vertical shift that continues the previous segment
    for s in range(1, n_seg):
        w_prev, w = freqs[:, s - 1], freqs[:, s]
        phi_last = theta[:, s - 1] + w_prev * (SAMPLING_STEP * (n_s[:, s - 1] - 1))
        y_last = np.sin(phi_last) + shift[:, s - 1]
        # Match slopes: w cos(theta) = w_prev cos(phi_last). Clipped: at w1 -> 0.01 the
        # argument is usually beyond +-1, giving a C0 kink (the N25 connector).
        theta[:, s] = np.arccos(np.clip(w_prev * np.cos(phi_last) / w, -1.0, 1.0))
        continued = y_last - np.sin(theta[:, s])
        if parity:
            # Reference quirk: `if prev_last_y:` skips the shift when the previous
            # segment ended on exactly 0.0, and the old shift stays in force.
            continued = np.where(y_last == 0.0, shift[:, s - 1], continued)
        shift[:, s] = continued

    # Flat (ragged) layout: segments of all curves back to back, no padding.
    kept = (n_s - 1).ravel()
    seg_first = np.cumsum(kept) - kept
    local = np.arange(int(kept.sum())) - np.repeat(seg_first, kept)  # sample index in segment
    phase = np.repeat(theta.ravel(), kept) + np.repeat(freqs.ravel(), kept) * (
        SAMPLING_STEP * local
    )
    y = amplitude * (np.sin(phase) + np.repeat(shift.ravel(), kept))
    return y, (n_s - 1).sum(axis=1)


def critter_centreline(
    frequencies, lengths, amplitude: float = 8.0, *, generator_parity: bool = False
) -> np.ndarray:
    """Centreline of one critter before placement.

    The first segment is ``sin(w_1 x)`` from phase 0. Each later segment starts at the phase
    ``theta = arccos(clip(w_prev cos(phi_last) / w, -1, 1))`` that matches the previous slope, is
    shifted vertically to continue the previous value, and the previous segment's last sample is
    dropped. The result is multiplied by ``amplitude``.

    Parameters
    ----------
    frequencies : sequence of float, length S
        Angular frequencies in rad/px: ``(w1, w2)`` for N0, ``(w1, 0.01, w2)`` for N25.
    lengths : sequence of int, length S
        Segment lengths in pixels, each >= 1.
    amplitude : float
        Amplitude A in px.
    generator_parity : bool
        Keep the reference's skip of the continuity shift after a segment ending on exactly 0.

    Returns
    -------
    ndarray, shape (n_samples,)
        Heights (px) at ``x = 0, 0.1, ..., 0.1 (n_samples - 1)``, where
        ``n_samples = sum(10 * lengths - 1)``.
    """
    freqs = np.asarray(frequencies, dtype=np.float64).reshape(1, -1)
    lens = np.asarray(lengths).reshape(1, -1)
    if freqs.shape != lens.shape or freqs.shape[1] == 0:
        raise InputError(
            f"frequencies and lengths need the same non-zero length, got {freqs.shape[1]} "
            f"and {lens.shape[1]}"
        )
    if not np.issubdtype(lens.dtype, np.integer) or (lens < 1).any():
        raise InputError(f"segment lengths must be integers >= 1 px, got {lens.ravel().tolist()}")
    if not (np.isfinite(freqs).all() and (freqs > 0).all()):
        raise InputError(f"frequencies must be finite and > 0, got {freqs.ravel().tolist()}")
    y, _ = _centrelines(freqs, lens, float(amplitude), generator_parity)
    return y


# --------------------------------------------------------------------------------------------
# Rasterisation and rendering
# --------------------------------------------------------------------------------------------


def rasterise_centreline(x, y, size: int) -> np.ndarray:
    """Binary mask of the pixels a centreline passes through.

    A sample at (x, y) falls in pixel ``(row, col) = (trunc(y), trunc(x))``; samples with
    ``col`` outside ``[0, size)`` or ``row`` outside ``[0, size)`` are dropped. Every pixel counts
    once however many samples fall in it, so the rendering does not depend on sampling density.

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Sample coordinates in px (column, row).
    size : int
        Side of the square image.

    Returns
    -------
    ndarray of bool, shape (size, size)
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"x and y need the same length, got {x.size} and {y.size}")
    mask = np.zeros((size, size), dtype=bool)
    ok = np.isfinite(x) & np.isfinite(y)
    # astype(int64) truncates towards zero, as the reference's astype(int) does.
    cols = x[ok].astype(np.int64)
    rows = y[ok].astype(np.int64)
    keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    mask[rows[keep], cols[keep]] = True
    return mask


def _window(thickness: int, parity: bool) -> np.ndarray:
    """Offsets of the thickness window along one axis."""
    half = (thickness - 1) // 2
    # Reference: range(-half, half), i.e. [-10, 9]; the centre is always drawn.
    return np.arange(-half, max(half, 1)) if parity else np.arange(-half, half + 1)


def thickness_kernel(thickness: int = 21, *, generator_parity: bool = False) -> np.ndarray:
    """The rendering kernel K over its window.

    Parameters
    ----------
    thickness : int
        Odd window side; the half-width is ``(thickness - 1) // 2``.
    generator_parity : bool
        Use the reference's asymmetric window ``[-h, h - 1]`` instead of ``[-h, h]``.

    Returns
    -------
    ndarray, shape (k, k)
        ``K[i, j]`` is the weight at offset ``(off[i], off[j])`` with ``off`` running from
        ``-h`` upwards; ``K = 1`` at the centre and ``sqrt(2) / |d|`` elsewhere.
    """
    off = _window(_check_thickness(thickness), generator_parity).astype(np.float64)
    r2 = off[:, None] ** 2 + off[None, :] ** 2
    with np.errstate(divide="ignore"):
        k = 1.0 / np.sqrt(0.5 * r2)
    k[r2 == 0] = 1.0
    return k


@functools.lru_cache(maxsize=16)
def _kernel_spectrum(n_rows: int, n_cols: int, thickness: int, parity: bool) -> np.ndarray:
    """rfft2 of K placed with wrap-around on an (n_rows, n_cols) periodic grid."""
    off = _window(thickness, parity)
    grid = np.zeros((n_rows, n_cols))
    grid[np.ix_(off % n_rows, off % n_cols)] = thickness_kernel(thickness, generator_parity=parity)
    spec = scipy.fft.rfft2(grid)
    spec.setflags(write=False)
    return spec


def _render(counts: np.ndarray, thickness: int, parity: bool) -> np.ndarray:
    """FFT convolution of integer counts (H, W, ...) with K; float64 (H, W, ...).

    Spatial axes first so that a frame's (H, W, 2) channels come out in the dataset's layout.
    """
    n_rows, n_cols = counts.shape[:2]
    half = (thickness - 1) // 2
    # Zero padding by >= half on the periodic grid keeps wrap-around contributions out of the
    # kept (H, W) region: a true offset |d| >= L - half > H - 1 cannot occur.
    lr = scipy.fft.next_fast_len(n_rows + half, real=True)
    lc = scipy.fft.next_fast_len(n_cols + half, real=True)
    spec = scipy.fft.rfft2(counts.astype(np.float64), s=(lr, lc), axes=(0, 1))
    kernel = _kernel_spectrum(lr, lc, thickness, parity)
    spec *= kernel.reshape(kernel.shape + (1,) * (counts.ndim - 2))
    out = scipy.fft.irfft2(spec, s=(lr, lc), axes=(0, 1))[:n_rows, :n_cols]
    # Counts are integers and every weight in the window is >= K_min = 1/half (a corner), so a
    # true value is either 0 or >= K_min; float64 FFT error is ~1e-12. Snapping values below
    # K_min / 2 to 0 makes the background exactly 0.
    out[out < 0.5 / max(half, 1)] = 0.0
    if parity:
        # Reference quirk: off-centre contributions need row > 0 and col > 0 (a strict
        # test), so row 0 and column 0 hold only the centre term.
        out[0] = counts[0]
        out[:, 0] = counts[:, 0]
    return out


def render_centrelines(
    counts, *, thickness: int = 21, generator_parity: bool = False
) -> np.ndarray:
    """Convolve centreline masks with the thickness kernel.

    For one curve pass its binary mask M; the result is ``M * K`` with contributions outside the
    image dropped. For several curves pass the sum of their binary masks (a count image): by
    linearity this equals the sum of the per-curve renderings.

    Parameters
    ----------
    counts : array_like of bool or non-negative int, shape (..., H, W)
        Binary mask or per-pixel number of curves through each pixel.
    thickness : int
        Odd window side (21: half-width 10).
    generator_parity : bool
        Reference rendering: window ``[-h, h - 1]`` and no off-centre contributions in row 0 or
        column 0.

    Returns
    -------
    ndarray of float32, shape (..., H, W)
        Non-negative; exactly 0 farther than the window from every centreline pixel.
    """
    counts = np.asarray(counts)
    if counts.ndim < 2 or 0 in counts.shape[-2:]:
        raise InputError(f"counts must have shape (..., H, W) with H, W > 0, got {counts.shape}")
    if counts.dtype != bool and not np.issubdtype(counts.dtype, np.integer):
        raise InputError(f"counts must be a bool or integer array, got dtype {counts.dtype}")
    if counts.dtype != bool and counts.size and counts.min() < 0:
        raise InputError("counts must be non-negative")
    spatial_first = np.moveaxis(counts, (-2, -1), (0, 1))
    out = _render(spatial_first, _check_thickness(thickness), generator_parity)
    return np.moveaxis(out, (0, 1), (-2, -1)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Recipe and the dataset
# --------------------------------------------------------------------------------------------


def _check_thickness(thickness) -> int:
    try:
        t = operator.index(thickness)
    except TypeError:
        raise ConfigError(f"thickness must be an odd integer >= 1, got {thickness!r}") from None
    if t < 1 or t % 2 == 0:
        raise ConfigError(f"thickness must be an odd integer >= 1, got {t}")
    return t


def _frame(seed: int, index: int, cfg: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render frame ``index``: (size, size, 2) float64, plus its per-curve table."""
    size, k = cfg["size"], cfg["curves"]
    # Own stream per frame: frame i depends on (seed, i) only.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
    u = rng.random((2, k, 7))  # one block of draws, laid out (channel, curve, variable)

    option = (u[..., 0] >= 0.5).astype(np.int64)  # which of the channel's two pairings
    # (2, k, 2): lower, higher range
    ranges = _PAIRING_ARRAYS[cfg["pairing"]][np.arange(2)[:, None], option]
    low, high = _RANGES[ranges, 0], _RANGES[ranges, 1]
    w = low + u[..., 1:3] * (high - low)  # w1 from the lower range, so w1 < w2
    mirrored = u[..., 3] < 0.5
    bucket = np.arange(k)[None, :]
    band = _VERTICAL_BAND * size
    mu = cfg["mu"]
    v = (bucket / k + mu / 2 + u[..., 4] * (1.0 / k - mu)) * band  # one curve per bucket
    h = u[..., 5] * _HORIZONTAL_SHIFT * size * np.where(u[..., 6] < 0.5, -1.0, 1.0)

    span = size + np.abs(h)  # D = W + |h|
    connector = cfg["connector"]
    if connector == 0:
        edge = np.floor(span / 2).astype(np.int64)
        conn = np.zeros_like(edge)
        freqs = np.stack([w[..., 0], w[..., 1]], axis=-1)
        lengths = np.stack([edge, edge], axis=-1)
    else:
        if cfg["parity"]:
            conn = np.floor(_PARITY_CONNECTOR_FRACTION * span).astype(np.int64)
        else:
            conn = np.full(span.shape, connector, dtype=np.int64)
        edge = np.floor((span - conn) / 2).astype(np.int64)
        freqs = np.stack([w[..., 0], np.full(span.shape, CONNECTOR_FREQUENCY), w[..., 1]], -1)
        lengths = np.stack([edge, conn, edge], axis=-1)

    n_curves = 2 * k
    y, n_samples = _centrelines(
        freqs.reshape(n_curves, -1), lengths.reshape(n_curves, -1), cfg["amplitude"], cfg["parity"]
    )
    first = np.cumsum(n_samples) - n_samples
    j = np.arange(y.size) - np.repeat(first, n_samples)  # sample index within its curve

    def per_sample(per_curve: np.ndarray) -> np.ndarray:
        return np.repeat(per_curve.ravel(), n_samples)

    # Mirror left<->right, then y <- y - min(y) + v and x <- x + h.
    x = SAMPLING_STEP * j
    x_max = SAMPLING_STEP * (n_samples - 1)
    x = np.where(per_sample(mirrored), per_sample(x_max) - x, x) + per_sample(h)
    y = y - per_sample(np.minimum.reduceat(y, first)) + per_sample(v)
    # Rasterise with trunc, keep 0 <= col < W and row < W (row >= 0 since y >= v >= 0).
    cols = x.astype(np.int64)
    rows = y.astype(np.int64)
    keep = (cols >= 0) & (cols < size) & (rows < size)
    curve_id = per_sample(np.arange(n_curves))
    masks = np.zeros((n_curves, size, size), dtype=bool)
    masks[curve_id[keep], rows[keep], cols[keep]] = True  # binary per curve
    # uint8 sums are exact (k < 256, checked) and much faster than int64 ones.
    counts = masks.reshape(2, k, size, size).view(np.uint8).sum(axis=1, dtype=np.uint8)
    image = _render(np.moveaxis(counts, 0, -1), cfg["thickness"], cfg["parity"])

    info = {
        "frame": np.full(n_curves, index, dtype=np.int64),
        "channel": np.repeat(np.arange(2, dtype=np.int64), k),
        "curve": np.tile(np.arange(k, dtype=np.int64), 2),
        "range1": ranges[..., 0].ravel(),
        "range2": ranges[..., 1].ravel(),
        "w1": w[..., 0].ravel(),
        "w2": w[..., 1].ravel(),
        "mirrored": mirrored.ravel(),
        "h_shift": h.ravel(),
        "v_offset": v.ravel(),
        "edge_length": edge.ravel(),
        "connector_length": conn.ravel(),
    }
    return image, info


def generate_critters(
    n_frames: int,
    size: int = 256,
    connector: int = 25,
    seed: int = 0,
    *,
    generator_parity: bool = False,
    curves_per_channel: int = 5,
    amplitude: float = 8.0,
    thickness: int = 21,
    pairing: str = "paper",
    return_info: bool = False,
    workers: int | None = None,
):
    """Generate SinosoidalCritters frames (docs/data.md, "Synthetic data").

    Each frame has two target channels with ``curves_per_channel`` critters each. Frame ``i`` is
    drawn from its own stream ``Generator(PCG64(SeedSequence([seed, i])))``, so it does not
    depend on ``n_frames`` or ``workers``, and the same arguments give the same array.

    Parameters
    ----------
    n_frames : int
        Number of frames N (>= 0).
    size : int
        Frame side W in px (the paper uses 256 and 128).
    connector : int
        Connector length in px: 0 gives the two-segment "N0" critters, 25 the paper's "N25"
        (segments ``[w1, 0.01, w2]`` of lengths ``[e, connector, e]``, ``e = floor((D -
        connector) / 2)``, ``D = W + |h|``). With ``generator_parity=True`` any non-zero value
        switches on the reference law ``connector = floor(0.1 D)`` instead.
    seed : int
        Non-negative seed.
    generator_parity : bool
        Reproduce the reference generator's quirks: ``floor(0.1 D)`` connector
        length, asymmetric ``[-10, 9]`` window, no off-centre contributions in row 0 or column
        0, and the skipped continuity shift after a segment ending on exactly 0.0. The random
        draw order is not the reference's; equivalence is statistical.
    curves_per_channel : int
        Critters per channel per frame (5 in the paper).
    amplitude : float
        Sine amplitude A in px (8 in the paper). The minimum vertical spacing between the
        critters of one channel is 2A (16 px in the paper).
    thickness : int
        Odd side of the rendering window (21: half-width 10).
    pairing : {"paper", "shared-low", "shared-high"}
        Which frequency pairings make each channel, see :data:`PAIRINGS` ("paper": the paper's).
    return_info : bool
        Also return a table describing every curve.
    workers : int or None
        Threads rendering frames in parallel; ``None`` or 1 renders serially. The result does not
        depend on it.

    Returns
    -------
    frames : ndarray of float32, shape (n_frames, size, size, 2)
        Channel 0 is the paper's channel 1 (pairings (R0, R2) / (R1, R3)), channel 1 its
        channel 2 ((R0, R3) / (R1, R2)). Non-negative, background exactly 0, not normalised.
    info : dict of str to ndarray, shape (n_frames * 2 * curves_per_channel,) each
        Only with ``return_info``; one row per curve, ordered by frame, channel, curve:
        ``frame``, ``channel`` (0 or 1), ``curve`` (vertical bucket), ``range1``/``range2``
        (indices into :data:`FREQUENCY_RANGES` of w1/w2), ``w1``/``w2`` (rad/px, w1 < w2),
        ``mirrored``, ``h_shift`` (px), ``v_offset`` (px), ``edge_length`` and
        ``connector_length`` (px; 0 for N0). ``pandas.DataFrame(info)`` makes it a table.

    Examples
    --------
    >>> frames = generate_critters(4, size=128, connector=0, seed=1)
    >>> frames.shape, frames.dtype
    ((4, 128, 128, 2), dtype('float32'))
    >>> inputs = frames.mean(axis=-1)  # the superimposed input
    """
    n_frames = _as_int("n_frames", n_frames, 0)
    size = _as_int("size", size, 16)
    connector = _as_int("connector", connector, 0)
    seed = _as_int("seed", seed, 0)
    k = _as_int("curves_per_channel", curves_per_channel, 1)
    if k > 255:
        raise ConfigError(f"curves_per_channel must be <= 255, got {k}")
    thickness = _check_thickness(thickness)
    if pairing not in PAIRINGS:
        raise ConfigError(f"unknown pairing '{pairing}'; choose one of: {', '.join(PAIRINGS)}")
    amplitude = float(amplitude)
    if not (math.isfinite(amplitude) and amplitude > 0):
        raise ConfigError(f"amplitude must be finite and > 0, got {amplitude}")
    if workers is not None:
        workers = _as_int("workers", workers, 1)
    if not generator_parity and connector > size - 2:
        # Keeps both wave segments at least 1 px long: e = floor((D - c) / 2) >= 1.
        raise ConfigError(f"connector must be <= size - 2 = {size - 2} px, got {connector}")
    if generator_parity and connector not in (0, 25):
        logger.warning(
            "generator_parity=True uses the reference connector length floor(0.1 (W + |h|)); "
            "connector=%d only switches the connector on",
            connector,
        )

    band = _VERTICAL_BAND * size
    mu = 2.0 * amplitude / band  # minimum spacing 2A as a fraction of the band
    if mu >= 1.0 / k:
        # The reference asserts here (W < 89 px at the paper settings); small demo frames are
        # still useful, so the buckets are kept and only the spacing guarantee is dropped.
        logger.warning(
            "size %d is too small to space %d curves %.3g px apart; spacing not enforced",
            size,
            k,
            2.0 * amplitude,
        )
        mu = 0.0
    cfg = {
        "size": size,
        "curves": k,
        "connector": connector,
        "parity": bool(generator_parity),
        "amplitude": amplitude,
        "thickness": thickness,
        "mu": mu,
        "pairing": pairing,
    }

    start = time.perf_counter()
    frames = np.empty((n_frames, size, size, 2), dtype=np.float32)
    infos: list[dict[str, np.ndarray]] = [{}] * n_frames

    def one(i: int) -> None:
        frames[i], infos[i] = _frame(seed, i, cfg)

    if workers is None or workers == 1 or n_frames < 2:
        for i in range(n_frames):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(n_frames)))
    logger.debug(
        "generated %d critter frames of %d px (connector %d, parity %s) in %.2f s",
        n_frames,
        size,
        connector,
        generator_parity,
        time.perf_counter() - start,
    )
    if not return_info:
        return frames
    if n_frames:
        info = {key: np.concatenate([d[key] for d in infos]) for key in infos[0]}
    else:
        info = {key: np.empty(0, dtype=dt) for key, dt in _INFO_DTYPES.items()}
    return frames, info


_INFO_DTYPES = {
    "frame": np.int64,
    "channel": np.int64,
    "curve": np.int64,
    "range1": np.int64,
    "range2": np.int64,
    "w1": np.float64,
    "w2": np.float64,
    "mirrored": bool,
    "h_shift": np.float64,
    "v_offset": np.float64,
    "edge_length": np.int64,
    "connector_length": np.int64,
}


def _as_int(name: str, value, minimum: int) -> int:
    try:
        out = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {out}")
    return out
