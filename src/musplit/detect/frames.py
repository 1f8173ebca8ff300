"""Frames into a detector's geometry: per-image min-max, and resizing image + instance mask.

docs/pretraining.md, "Pre-processing" (geometry and normalisation; the detector uses the same).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from musplit.errors import InputError

__all__ = ["normalize_images"]


def _resize_pair(img: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear image (no anti-aliasing) and nearest-neighbour labels to size × size
    (docs/pretraining.md, "Pre-processing")."""
    t = torch.from_numpy(img.astype(np.float32))[None, None]
    im = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    h, w = lab.shape
    rows = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(np.int64)
    return im, lab[np.ix_(rows, cols)]


def normalize_images(images: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]; constant images become zeros (docs/pretraining.md,
    "Pre-processing")."""
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InputError(f"images must be (N, H, W), got shape {x.shape}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError("images contain NaN or infinite values")
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    rng = hi - lo
    return np.where(rng > 0, (x - lo) / np.where(rng > 0, rng, 1), 0.0).astype(np.float32)


def _fit_geometry(images: np.ndarray, labels: np.ndarray | None, size: int):
    """Resize frames to size x size (bilinear, no anti-aliasing; labels nearest) if needed."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
        labels = None if labels is None else np.asarray(labels)[None]
    if images.ndim != 3:
        raise InputError(f"images must be (N, H, W), got shape {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape:
            raise InputError(f"labels {labels.shape} do not match images {images.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be integer instance ids, got {labels.dtype}")
    if images.shape[1:] == (size, size):
        return images, labels
    out_i, out_l = [], []
    for i in range(len(images)):
        lab = labels[i] if labels is not None else np.zeros(images.shape[1:], np.int32)
        a, b = _resize_pair(images[i], lab, size)
        out_i.append(a)
        out_l.append(b)
    return np.stack(out_i), (np.stack(out_l) if labels is not None else None)
