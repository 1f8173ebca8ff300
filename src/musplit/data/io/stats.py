"""Per-channel intensity statistics of an image from a bounded sample (``musplit info``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from musplit.data.io.backends import _TiffPages, _WholeTiff
from musplit.data.io.readers import open_image


def _sample_plan(
    n: int, h: int, w: int, max_pixels: int, max_bands: int = 16
) -> tuple[list[int], list[slice]]:
    """Frames and row bands to read so that at most about ``max_pixels`` pixels per channel
    are read: all of it when it fits, else evenly spaced frames, else up to ``max_bands``
    evenly spaced bands of rows of evenly spaced frames."""
    if n * h * w <= max_pixels:
        return list(range(n)), [slice(0, h)]
    if h * w <= max_pixels:
        k = max(1, max_pixels // (h * w))
        return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)}), [slice(0, h)]
    frames = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, 8))})
    rows = max(1, max_pixels // (len(frames) * w))  # rows per frame
    bands = max(1, min(max_bands, rows))
    band = max(1, rows // bands)
    if bands == 1:
        return frames, [slice((h - band) // 2, (h - band) // 2 + band)]  # the central rows
    starts = sorted({int(round(v)) for v in np.linspace(0, h - band, bands)})
    return frames, [slice(y, y + band) for y in starts]


def channel_statistics(source: Any, max_pixels: int = 16 * 2**20) -> list[dict]:
    """Per-channel intensity statistics of an image, from a bounded sample.

    Parameters
    ----------
    source : ImageSource, path-like or array
        The image (anything :func:`open_image` takes).
    max_pixels : int
        At most about this many pixels per channel are read (whole frames evenly spaced over
        the image; for frames larger than this, evenly spaced bands of rows, or one central
        band of a compressed TIFF, whose pages are decoded whole). Everything is read when the
        image is no larger.

    Returns
    -------
    list of dict
        One per channel: ``channel`` (index), ``name`` (channel name, else the index as text),
        ``min``, ``median``, ``p99_9`` (99.9th percentile), ``max`` (of the finite values),
        ``saturation`` (the value counted as saturated, or None), ``saturated`` (fraction of
        the pixels read equal to it), ``zeros`` (fraction equal to 0), ``non_finite`` (fraction
        NaN or Inf), ``pixels`` (pixels read per channel), ``frames`` (frames read),
        ``sampled`` (True when not every pixel was read).

    Notes
    -----
    Saturation: for integer pixel types the type's maximum (255, 65535, ...). A float image has
    no such value, so its channel maximum counts as saturated only when more than 0.1 % of the
    pixels read equal it (a clipped plateau); otherwise ``saturation`` is None and
    ``saturated`` 0. Pixels are read lazily through :meth:`ImageSource.read`, a frame at a time.
    """
    src = open_image(source)
    n, h, w, c = src.canonical_shape
    max_pixels = max(1, int(max_pixels))
    # A page read page by page (compressed TIFF) is decoded whole for any band of its rows:
    # then one central band per frame, not many.
    parts = getattr(src, "parts", [src])
    paged = any(isinstance(getattr(p, "_data", None), (_TiffPages, _WholeTiff)) for p in parts)
    frames, bands = _sample_plan(n, h, w, max_pixels, 1 if paged else 16)
    per_frame = sum(b.stop - b.start for b in bands) * w
    values = np.empty((c, len(frames) * per_frame), dtype=np.float32)
    pos = 0
    for f in frames:
        for band in bands:
            block = src.read([f], None, (band, slice(0, w)), check_finite=False)[0]
            k = block.shape[0] * block.shape[1]
            values[:, pos : pos + k] = block.reshape(k, c).T
            pos += k
    sampled = len(frames) < n or per_frame < h * w
    top = float(np.iinfo(src.dtype).max) if src.dtype.kind in "iu" else None
    out = []
    for ch in range(c):
        v = values[ch, :pos]
        finite = np.isfinite(v)
        n_bad = v.size - int(np.count_nonzero(finite))
        if n_bad:
            v = v[finite]
        entry: dict[str, Any] = {
            "channel": ch,
            "name": src.channel_names[ch] if src.channel_names else str(ch),
            "pixels": int(pos),
            "frames": len(frames),
            "sampled": bool(sampled),
            "non_finite": n_bad / pos if pos else 0.0,
        }
        if v.size == 0:
            nan = float("nan")
            entry.update(min=nan, median=nan, p99_9=nan, max=nan, saturation=None,
                         saturated=0.0, zeros=0.0)  # fmt: skip
            out.append(entry)
            continue
        lo, hi = float(v.min()), float(v.max())
        median, p999 = (float(x) for x in np.percentile(v, [50.0, 99.9]))
        if top is not None:
            sat_value: float | None = top
            sat = int(np.count_nonzero(v == np.float32(top))) / pos
        else:
            sat = int(np.count_nonzero(v == np.float32(hi))) / pos
            sat_value = hi if sat > 0.001 else None
            sat = sat if sat > 0.001 else 0.0
        entry.update(
            min=lo,
            median=median,
            p99_9=p999,
            max=hi,
            saturation=sat_value,
            saturated=sat,
            zeros=int(np.count_nonzero(v == 0)) / pos,
        )
        out.append(entry)
    return out
