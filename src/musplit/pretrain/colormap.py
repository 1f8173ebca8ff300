"""The pseudo-spectral target of PCMC (docs/pretraining.md, "Colormap").

``pcolor(u)`` maps a min-max normalised grayscale image ``u`` in [0, 1] to the RGB part of
matplotlib's ``nipy_spectral`` colormap, bit-compatible with matplotlib's 256-entry lookup table
(section 3.3): entry ``i`` is the piecewise-linear interpolation of the control points at
``i/255``, and a float ``u`` reads entry ``floor(256 u)`` (``u = 1`` reads 255; ``u < 0`` the
"under" colour = entry 0; ``u > 1`` the "over" colour = entry 255). The control points are
vendored here, so matplotlib is not needed at run time, except for ``viridis`` (a 256-entry
listed map that is loaded from matplotlib rather than copied by hand).

Two pitfalls are refused rather than reproduced: integer input (matplotlib reads integers as
direct LUT indices, so an un-normalised uint16 image becomes grey) and NaN
(matplotlib's transparent "bad" colour).

Channels come first: ``(..., H, W)`` in, ``(..., 3, H, W)`` out, for numpy arrays and torch
tensors alike.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from musplit.errors import InputError

__all__ = ["COLORMAPS", "N_LUT", "control_points", "lut", "minmax_normalize", "pcolor"]

#: Colormaps the pretext target can use; ``gray`` is the masked-gray control.
COLORMAPS = ("nipy_spectral", "rainbow", "seismic", "viridis", "gray")
#: Entries of every lookup table (matplotlib's default ``N``).
N_LUT = 256

# matplotlib ``_cm.py``: nipy_spectral, 21 equally spaced points (x = 0, 0.05, ..., 1); left and
# right values coincide at every point, so each channel is continuous and piecewise linear.
_NIPY_SPECTRAL = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.4667, 0.0, 0.5333],
        [0.5333, 0.0, 0.6],
        [0.0, 0.0, 0.6667],
        [0.0, 0.0, 0.8667],
        [0.0, 0.4667, 0.8667],
        [0.0, 0.6, 0.8667],
        [0.0, 0.6667, 0.6667],
        [0.0, 0.6667, 0.5333],
        [0.0, 0.6, 0.0],
        [0.0, 0.7333, 0.0],
        [0.0, 0.8667, 0.0],
        [0.0, 1.0, 0.0],
        [0.7333, 1.0, 0.0],
        [0.9333, 0.9333, 0.0],
        [1.0, 0.8, 0.0],
        [1.0, 0.6, 0.0],
        [1.0, 0.0, 0.0],
        [0.8667, 0.0, 0.0],
        [0.8, 0.0, 0.0],
        [0.8, 0.8, 0.8],
    ],
    dtype=np.float64,
)
# matplotlib ``seismic``: 5 equally spaced colours.
_SEISMIC = np.array(
    [[0.0, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]],
    dtype=np.float64,
)


def _rainbow(x: np.ndarray) -> np.ndarray:
    # gnuplot functions 33, 13, 10, clipped to [0, 1] as matplotlib does for function data.
    rgb = np.stack([np.abs(2 * x - 0.5), np.sin(np.pi * x), np.cos(np.pi * x / 2)], axis=-1)
    return np.clip(rgb, 0.0, 1.0)


def _viridis_table() -> np.ndarray:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputError("the 'viridis' colormap needs matplotlib (pip install matplotlib); "
                         "nipy_spectral, rainbow, seismic and gray do not") from None
    cmap = matplotlib.colormaps["viridis"]
    return np.asarray(cmap(np.arange(cmap.N))[:, :3], dtype=np.float64)


def control_points(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The control points of a colormap: ``x (K,)`` in [0, 1] and ``rgb (K, 3)``.

    ``rainbow`` is defined by functions; its "control points" are a dense sampling (4097
    points), close enough to the functions for the continuous variant (ablation A6).
    """
    _check_name(name)
    if name == "nipy_spectral":
        rgb = _NIPY_SPECTRAL
    elif name == "seismic":
        rgb = _SEISMIC
    elif name == "viridis":
        rgb = _viridis_table()
    elif name == "rainbow":
        x = np.linspace(0.0, 1.0, 4097)
        return x, _rainbow(x)
    else:  # gray
        rgb = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    return np.linspace(0.0, 1.0, len(rgb)), rgb


def _check_name(name: str) -> None:
    if name not in COLORMAPS:
        raise InputError(f"unknown colormap {name!r}; choose one of: {', '.join(COLORMAPS)}")


@functools.cache
def _lut64(name: str) -> np.ndarray:
    x_lut = np.linspace(0.0, 1.0, N_LUT)  # x_i = i / 255
    if name == "rainbow":
        return _rainbow(x_lut)
    if name == "viridis":
        return _viridis_table()
    x, rgb = control_points(name)
    table = np.stack([np.interp(x_lut, x, rgb[:, c]) for c in range(3)], axis=-1)
    return np.clip(table, 0.0, 1.0)


def lut(name: str = "nipy_spectral") -> np.ndarray:
    """The 256-entry lookup table of a colormap, float32 ``(256, 3)`` (a copy).

    Entry ``i`` is the colormap at ``i/255``. ``gray`` has one too (``(i/255,) * 3``)
    although its target is not quantised.
    """
    _check_name(name)
    return _lut64(name).astype(np.float32)


def _check_input(u) -> None:
    if isinstance(u, torch.Tensor):
        if not (u.is_floating_point()):
            raise InputError(f"pcolor needs a float image normalised to [0, 1], got dtype "
                             f"{u.dtype} (integers would be read as LUT indices; normalise first)")
        if torch.isnan(u).any():
            raise InputError("pcolor input contains NaN pixels")
        return
    if not isinstance(u, np.ndarray) or u.dtype.kind != "f":
        dtype = getattr(u, "dtype", type(u).__name__)
        raise InputError(f"pcolor needs a float image normalised to [0, 1], got dtype {dtype} "
                         "(integers would be read as LUT indices; normalise first)")
    if np.isnan(u).any():
        raise InputError("pcolor input contains NaN pixels")


def pcolor(u, name: str = "nipy_spectral", *, quantize: bool = True):
    """Pseudo-colour a normalised grayscale image (docs/pretraining.md, "Colormap").

    Parameters
    ----------
    u : numpy.ndarray or torch.Tensor, float, shape (..., H, W)
        Intensities in [0, 1] (values outside take the under/over colours). Integer dtypes and
        NaN are refused.
    name : {"nipy_spectral", "rainbow", "seismic", "viridis", "gray"}
        The colormap. ``gray`` gives ``(u, u, u)`` clipped to [0, 1], never quantised.
    quantize : bool
        True (default): matplotlib's 256-level lookup, ``LUT[min(floor(256 u), 255)]``, with
        ``u < 0`` reading entry 0. False: the control points interpolated directly (no staircase;
        ablation A6).

    Returns
    -------
    numpy.ndarray or torch.Tensor (as the input), float32, shape (..., 3, H, W)
        The RGB target (alpha dropped), channels first.

    Raises
    ------
    InputError
        Integer input, NaN pixels, an unknown colormap, or fewer than 2 dimensions.
    """
    _check_name(name)
    _check_input(u)
    if u.ndim < 2:
        raise InputError(f"pcolor needs an image (..., H, W), got shape {tuple(u.shape)}")
    if isinstance(u, torch.Tensor):
        return _pcolor_torch(u, name, quantize)
    if name == "gray":
        v = np.clip(u, 0.0, 1.0).astype(np.float32)
        return np.stack([v, v, v], axis=-3)
    if quantize:
        # The index is taken in the input's own precision, as matplotlib does (multiplying by
        # 256 is exact); the clip maps under to entry 0 and over (and u = 1) to entry 255.
        idx = np.clip(np.floor(u * N_LUT), 0, N_LUT - 1).astype(np.intp)
        out = lut(name)[idx]
    else:
        x, rgb = control_points(name)
        v = np.clip(u, 0.0, 1.0).astype(np.float64)
        out = np.stack([np.interp(v, x, rgb[:, c]) for c in range(3)], axis=-1)
        out = out.astype(np.float32)
    return np.moveaxis(out, -1, -3)


def _pcolor_torch(u: torch.Tensor, name: str, quantize: bool) -> torch.Tensor:
    if name == "gray":
        v = u.float().clamp(0.0, 1.0)
        return torch.stack([v, v, v], dim=-3)
    if quantize:  # index in the input's precision (see the numpy path)
        table = torch.from_numpy(lut(name)).to(u.device)
        idx = torch.floor(u * N_LUT).clamp_(0, N_LUT - 1).long()
        out = table[idx]  # (..., H, W, 3)
    else:
        u = u.float()
        x, rgb = control_points(name)
        xs = torch.from_numpy(x).to(u.device, torch.float32)
        ys = torch.from_numpy(rgb).to(u.device, torch.float32)
        v = u.clamp(0.0, 1.0)
        k = torch.searchsorted(xs, v.contiguous(), right=True).clamp_(1, len(xs) - 1)
        x0, x1 = xs[k - 1], xs[k]
        w = ((v - x0) / (x1 - x0)).unsqueeze(-1)
        out = ys[k - 1] * (1 - w) + ys[k] * w
    return out.movedim(-1, -3).contiguous()


def minmax_normalize(x, percentiles: tuple[float, float] | None = None):
    """Per-image min-max normalisation over the last two axes (docs/pretraining.md,
    "Pre-processing").

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor, shape (..., H, W)
        Any real dtype; cast to float32 first.
    percentiles : (float, float), optional
        Clip to these percentiles (0-100) of each image before scaling (hot-pixel guard).

    Returns
    -------
    same type as ``x``, float32, values in [0, 1]
        A constant image gives zeros (not its raw values, as the TF reference does).
    """
    is_torch = isinstance(x, torch.Tensor)
    t = x.float() if is_torch else torch.from_numpy(np.asarray(x, dtype=np.float32))
    if t.ndim < 2:
        raise InputError(f"an image needs (..., H, W), got shape {tuple(t.shape)}")
    flat = t.reshape(*t.shape[:-2], -1)
    if percentiles is not None:
        lo_p, hi_p = (float(p) for p in percentiles)
        if not 0.0 <= lo_p < hi_p <= 100.0:
            raise InputError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
        q = torch.tensor([lo_p / 100.0, hi_p / 100.0], dtype=flat.dtype, device=flat.device)
        bounds = torch.quantile(flat, q, dim=-1, keepdim=True)
        lo, hi = bounds[0], bounds[1]
        flat = torch.minimum(torch.maximum(flat, lo), hi)
    else:
        lo = flat.amin(dim=-1, keepdim=True)
        hi = flat.amax(dim=-1, keepdim=True)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat)).reshape(t.shape)
    return out if is_torch else out.numpy()
