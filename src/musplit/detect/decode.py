"""Decoding a predicted heatmap and size map into scored boxes.

docs/detection.md, "Decoding": 3x3 max-pool NMS, threshold, 4-connected components,
truncated centroids, sizes read at the centroid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from musplit.errors import InputError
from musplit.pretrain.config import DetectionConfig

__all__ = ["decode"]


def decode(heatmap: np.ndarray | torch.Tensor, sizes: np.ndarray | torch.Tensor,
           threshold: float = 0.75, nms_kernel: int = 3, size_scale: tuple[float, float] = (1, 1),
           clip: bool = True, constant_score: bool = False) -> dict[str, np.ndarray]:
    """Decode one heatmap and size map into boxes (docs/detection.md, "Decoding").

    Parameters
    ----------
    heatmap : (H, W) or (1, H, W) predicted centroid heatmap.
    sizes : (2, H, W) size maps (channel 0 height, channel 1 width).
    threshold : keep NMS(H) > threshold (strict).
    nms_kernel : max-pool NMS window (stride 1, same padding; ties keep all); 0 or 1 = none.
    size_scale : multipliers (for h, for w): 1 for pixel sizes, the image size for ViT
        ``rel_dims``, (H, W) for the CNN's relative sizes.
    clip : clip boxes to the image (clean mode).
    constant_score : every score 1.0 (reference mode); else the component's heatmap peak,
        clipped to [0, 1].

    Returns
    -------
    dict with ``boxes`` (K, 4) float64 xywh and ``scores`` (K,) float64.
    """
    hm = torch.as_tensor(np.asarray(heatmap, np.float32) if not isinstance(heatmap, torch.Tensor)
                         else heatmap.detach().float().cpu())
    if hm.ndim == 3:
        hm = hm[0]
    if hm.ndim != 2:
        raise InputError(f"heatmap must be (H, W), got {tuple(hm.shape)}")
    sz = np.asarray(sizes.detach().float().cpu() if isinstance(sizes, torch.Tensor) else sizes,
                    np.float64)
    H, W = hm.shape
    if sz.shape != (2, H, W):
        raise InputError(f"sizes must be (2, {H}, {W}), got {sz.shape}")
    if nms_kernel and nms_kernel > 1:
        pooled = F.max_pool2d(hm[None, None], nms_kernel, stride=1,
                              padding=nms_kernel // 2)[0, 0]
        if pooled.shape != hm.shape:  # even kernels: crop to the input size
            pooled = pooled[:H, :W]
        nms = torch.where(hm == pooled, hm, torch.zeros_like(hm))
    else:
        nms = hm
    hm_np = hm.numpy().astype(np.float64)
    binary = nms.numpy() > threshold
    comp, n = ndi.label(binary)  # 4-connectivity
    if n == 0:
        return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    idx = np.arange(1, n + 1)
    ys, xs = np.nonzero(comp)
    lab = comp[ys, xs]
    cnt = np.bincount(lab, minlength=n + 1)[1:]
    cx = (np.bincount(lab, weights=xs, minlength=n + 1)[1:] / cnt).astype(np.int64)
    cy = (np.bincount(lab, weights=ys, minlength=n + 1)[1:] / cnt).astype(np.int64)
    h = sz[0, cy, cx] * size_scale[0]
    w = sz[1, cy, cx] * size_scale[1]
    # relative sizes stored as float32 come back as 11.99999 px: snap float noise to integers
    h = np.where(np.abs(h - np.round(h)) < 1e-3, np.round(h), h)
    w = np.where(np.abs(w - np.round(w)) < 1e-3, np.round(w), w)
    x0 = cx - np.floor(w / 2.0)
    y0 = cy - np.floor(h / 2.0)
    boxes = np.stack([x0, y0, w, h], axis=1).astype(np.float64)
    if clip:
        x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, W)
        y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, H)
        boxes[:, 0] = np.clip(boxes[:, 0], 0, W)
        boxes[:, 1] = np.clip(boxes[:, 1], 0, H)
        boxes[:, 2] = np.maximum(x1 - boxes[:, 0], 0)
        boxes[:, 3] = np.maximum(y1 - boxes[:, 1], 0)
    if constant_score:
        scores = np.ones(n)
    else:
        scores = np.clip(ndi.maximum(hm_np, comp, idx), 0.0, 1.0).astype(np.float64)
    return {"boxes": boxes, "scores": np.asarray(scores, np.float64)}


def _size_scale(cfg: DetectionConfig, shape: tuple[int, int]) -> tuple[float, float]:
    if cfg.model == "ccf_cnn":
        return (float(shape[0]), float(shape[1]))
    if cfg.rel_dims:
        return (float(cfg.image_size), float(cfg.image_size))
    return (1.0, 1.0)
