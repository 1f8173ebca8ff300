"""The detection loss (Huber on heatmap and sizes) and the heatmap IoU that training logs.

docs/detection.md, "Loss".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from musplit.pretrain.config import DetectionConfig

__all__ = ["detection_loss", "heatmap_iou"]


def detection_loss(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                   cfg: DetectionConfig) -> dict[str, torch.Tensor]:
    """L = Huber(H^, H) + 0.5 Huber(h^ * M, h) + 0.5 Huber(w^ * M, w) [+ MSE(pcolor)].

    Huber with delta ``cfg.huber_delta`` and the mean over all pixels (reference: the size terms
    are diluted by the zeros); ``size_loss_norm="mask"`` divides the summed size loss by
    max(1, sum M) instead. Returns ``loss``, ``heatmap``, ``size`` (and ``pcolor``) terms.
    """
    d = cfg.huber_delta
    heat = F.huber_loss(pred["heatmap"].float(), target["heatmap"], delta=d)
    m = target["mask"]
    sz = pred["sizes"].float() * m
    if cfg.size_loss_norm == "mask":
        per = F.huber_loss(sz, target["sizes"], delta=d, reduction="none")
        size = per.sum() / torch.clamp(m.sum(), min=1.0)
        size_term = cfg.size_weight * size
    else:
        size = (F.huber_loss(sz[:, 0], target["sizes"][:, 0], delta=d)
                + F.huber_loss(sz[:, 1], target["sizes"][:, 1], delta=d))
        size_term = cfg.size_weight * size
    out = {"heatmap": heat, "size": size}
    total = heat + size_term
    if "pcolor" in pred and "pcolor" in target:
        pc = F.mse_loss(pred["pcolor"].float(), target["pcolor"])
        out["pcolor"] = pc
        total = total + cfg.aux_pcolor_weight * pc
    out["loss"] = total
    return out


def heatmap_iou(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                threshold: float = 0.75) -> tuple[int, int]:
    """(intersection, union) of (pred > t) and (target > t), for the logged "mIoU"."""
    p = np.asarray(pred) > threshold
    t = np.asarray(target) > threshold
    return int((p & t).sum()), int((p | t).sum())
