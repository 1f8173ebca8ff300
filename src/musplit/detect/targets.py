"""Detection targets from instance masks: boxes, centroid heatmap and size maps.

docs/detection.md, "Targets": instance labels -> boxes (xywh, +1 widths)
-> centroid heatmap (ellipse + box filter, summed) and size maps (3x3 blocks, ViT; central half
of the box, CNN).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from musplit.errors import InputError

__all__ = ["boxes_from_labels", "centroid_heatmap", "make_targets", "size_maps"]


def boxes_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of every instance, in ascending id order.

    Parameters
    ----------
    labels : (H, W) integer instance image, 0 = background.

    Returns
    -------
    boxes : (K, 4) int64 ``(x, y, w, h)``: x = min column, y = min row, w = max column - x + 1,
        h = max row - y + 1 (OpenCV ``boundingRect``). A multi-component instance gets one box.
    ids : (K,) the instance ids.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"labels must be a 2-D image, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"labels must be integer instance ids, got {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise InputError("instance ids must be non-negative")
    objs = ndi.find_objects(lab.astype(np.int64, copy=False))
    boxes, ids = [], []
    for i, sl in enumerate(objs):
        if sl is None:
            continue
        ys, xs = sl
        boxes.append((xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start))
        ids.append(i + 1)
    return (np.asarray(boxes, np.int64).reshape(-1, 4), np.asarray(ids, np.int64))


def _ellipse(h: int, w: int, cx: int, cy: int, ax: int, ay: int) -> np.ndarray:
    """Filled axis-aligned ellipse with semi-axes (ax, ay) on an (h, w) grid, OpenCV-like.

    OpenCV fills the polygon of ``ellipse2Poly``: for semi-axes below 3 its angular step is 90°,
    i.e. a diamond |x|/ax + |y|/ay <= 1 (a plus sign for (1, 1)); for larger axes a fine
    polygon whose filled pixels match ((x/(ax+0.5))^2 + (y/(ay+0.5))^2 <= 1), since boundary
    pixels are drawn. A zero axis degenerates to a line segment. Agrees with OpenCV within
    +-1 px on the boundary (clean mode, docs/detection.md, "Targets").
    """
    yy = (np.arange(h)[:, None] - cy).astype(np.float64)
    xx = (np.arange(w)[None, :] - cx).astype(np.float64)
    if max(ax, ay) >= 3:
        return (xx / (ax + 0.5)) ** 2 + (yy / (ay + 0.5)) ** 2 <= 1.0
    if ax == 0 and ay == 0:
        return (yy == 0) & (xx == 0)
    if ax == 0:
        return (xx == 0) & (np.abs(yy) <= ay)
    if ay == 0:
        return (yy == 0) & (np.abs(xx) <= ax)
    return np.abs(xx) / ax + np.abs(yy) / ay <= 1.0 + 1e-9


def _box_filter(a: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Normalised box filter with OpenCV's centred anchor and reflect-101 border."""
    out = ndi.uniform_filter1d(a, kh, axis=0, mode="mirror")
    return ndi.uniform_filter1d(out, kw, axis=1, mode="mirror")


def centroid_heatmap(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sum of per-cell blurred ellipses: ``(H, W)`` float32; overlaps may exceed 1.

    Per box: an ellipse of value 1 centred at (x + w//2, y + h//2) with semi-axes
    (w // 2.5, h // 2.5); if kw = w // 1.5 > 0 and kh = h // 1.5 > 0 a normalised kh x kw box
    filter inside rows [y - h, y + 2h) x columns [x - w, x + 2w) (clipped to the image).
    """
    H, W = shape
    heat = np.zeros((H, W), np.float64)
    for x, y, w, h in np.asarray(boxes, np.int64).reshape(-1, 4):
        r0, r1 = max(0, y - h), min(H, y + 2 * h)
        c0, c1 = max(0, x - w), min(W, x + 2 * w)
        if r1 <= r0 or c1 <= c0:
            continue
        cx, cy = x + w // 2, y + h // 2
        m = _ellipse(r1 - r0, c1 - c0, cx - c0, cy - r0, int(w // 2.5), int(h // 2.5))
        m = m.astype(np.float64)
        kw, kh = int(w // 1.5), int(h // 1.5)
        if kw > 0 and kh > 0:
            m = _box_filter(m, kh, kw)
        heat[r0:r1, c0:c1] += m
    return heat.astype(np.float32)


def size_maps(boxes: np.ndarray, shape: tuple[int, int], scheme: str = "block3",
              relative: bool = False, image_size: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Size targets: ``sizes`` (2, H, W) float32 (channel 0 height, 1 width), ``mask``.

    scheme "block3" (ViT): a 3x3 block at (cx +- 1, cy +- 1); values in pixels, or divided by
    ``image_size`` (default max(H, W)) when ``relative``. scheme "central_half" (CNN): rows
    y + h//4 ... y + 3h//4 inclusive (same for columns), values h/H and w/W. Later boxes overwrite
    earlier ones (ascending id order). ``mask`` (H, W) bool is ``block > 0``.
    """
    H, W = shape
    sizes = np.zeros((2, H, W), np.float32)
    mask = np.zeros((H, W), bool)
    s = float(image_size or max(H, W))
    for x, y, w, h in np.asarray(boxes, np.int64).reshape(-1, 4):
        if scheme == "block3":
            cx, cy = x + w // 2, y + h // 2
            rs = slice(max(0, cy - 1), min(H, cy + 2))
            cs = slice(max(0, cx - 1), min(W, cx + 2))
            vh, vw = (h / s, w / s) if relative else (float(h), float(w))
        elif scheme == "central_half":
            rs = slice(max(0, y + h // 4), min(H, y + (3 * h) // 4 + 1))
            cs = slice(max(0, x + w // 4), min(W, x + (3 * w) // 4 + 1))
            vh, vw = h / H, w / W
        else:
            raise InputError(f"unknown size scheme {scheme!r}")
        sizes[0, rs, cs] = vh
        sizes[1, rs, cs] = vw
        mask[rs, cs] = True
    mask &= (sizes[0] > 0) | (sizes[1] > 0)
    return sizes, mask


def make_targets(labels: np.ndarray, scheme: str = "block3", relative: bool = False,
                 image_size: int | None = None) -> dict[str, np.ndarray]:
    """Heatmap (1, H, W), sizes (2, H, W), mask (1, H, W) and boxes (K, 4) of one label image."""
    boxes, _ = boxes_from_labels(labels)
    shape = tuple(np.asarray(labels).shape)
    sizes, mask = size_maps(boxes, shape, scheme, relative, image_size)
    return {"heatmap": centroid_heatmap(boxes, shape)[None], "sizes": sizes,
            "mask": mask[None].astype(np.float32), "boxes": boxes}
