"""Running a detector on raw frames: maps, decoded boxes, and scores against instance masks.

docs/detection.md, "Evaluation protocol": two modes share one API, ``clean`` (default: ground truth
from the instance masks, heatmap-peak scores, candidates above 0.3, max_dets [10, 100, 1000],
clipped boxes) and ``reference`` (ground truth decoded from the target maps, every score 1,
threshold 0.75, NMS 3, max_dets [1, 10, 100], no clipping, float labels).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from musplit.detect.coco import METRIC_BACKEND, evaluate_boxes, f1_at_iou
from musplit.detect.decode import _size_scale, decode
from musplit.detect.frames import _fit_geometry, normalize_images
from musplit.detect.loss import heatmap_iou
from musplit.detect.targets import make_targets
from musplit.pretrain.config import DetectionConfig

__all__ = ["evaluate_detector", "predict", "predict_maps"]


@torch.no_grad()
def predict_maps(model: nn.Module, images: np.ndarray, batch_size: int = 4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, H, W) and size maps (N, 2, H, W) for normalised frames (N, H, W) in [0, 1]."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    heats, sizes = [], []
    try:
        for i in range(0, len(images), batch_size):
            u = torch.as_tensor(images[i:i + batch_size], dtype=torch.float32, device=dev)
            out = model(u[:, None].expand(-1, 3, -1, -1))
            heats.append(out["heatmap"][:, 0].float().cpu().numpy())
            sizes.append(out["sizes"].float().cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(heats), np.concatenate(sizes)


def predict(model: nn.Module, images: np.ndarray, cfg: DetectionConfig | None = None,
            threshold: float | None = None, batch_size: int = 4) -> list[dict[str, np.ndarray]]:
    """Boxes and scores for raw frames (N, H, W): normalise, fit geometry, run, decode.

    Boxes are in the model's frame (image_size); rescale them for other geometries.
    ``threshold`` defaults to the config's decoding threshold τ.
    """
    cfg = cfg or getattr(model, "detection_config", None) or DetectionConfig()
    imgs, _ = _fit_geometry(images, None, cfg.image_size)
    u = normalize_images(imgs)
    heat, sizes = predict_maps(model, u, batch_size)
    t = cfg.threshold if threshold is None else threshold
    ref = cfg.mode == "reference"
    return [decode(heat[i], sizes[i], t, cfg.nms_kernel, _size_scale(cfg, heat.shape[1:]),
                   clip=not ref, constant_score=ref) for i in range(len(heat))]


def evaluate_detector(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                      reference_mode: bool = False, cfg: DetectionConfig | None = None,
                      batch_size: int = 4) -> dict:
    """Score a detector on frames with instance masks (docs/detection.md, "Evaluation protocol");
    returns a flat metrics dict.

    Clean mode (default): ground truth = every instance's box from the masks, predictions
    decoded at ``candidate_threshold`` with heatmap-peak scores. Reference mode: ground truth
    decoded from the target maps at 0.75, constant scores, max_dets [1, 10, 100], no clipping,
    float labels. Both report ``map``, ``map_50``, ``map_75``, ``map_small``, ``map_medium``,
    ``mar_<maxdet>``, F1 at IoU 0.5 at the decoding threshold and the heatmap IoU at 0.75.
    """
    cfg = cfg or getattr(model, "detection_config", None) or DetectionConfig()
    cfg = cfg.with_mode("reference" if reference_mode else "clean")
    ref = cfg.mode == "reference"
    imgs, labs = _fit_geometry(images, labels, cfg.image_size)
    u = normalize_images(imgs)
    heat, sizes = predict_maps(model, u, batch_size)
    scale = _size_scale(cfg, heat.shape[1:])
    preds, preds_tau, gts = [], [], []
    inter = union = 0
    for i in range(len(heat)):
        tg = make_targets(labs[i], cfg.scheme, cfg.relative_sizes, cfg.image_size)
        a, b = heatmap_iou(heat[i], tg["heatmap"][0], 0.75)
        inter += a
        union += b
        if ref:
            gt = decode(tg["heatmap"][0], tg["sizes"], 0.75, 3, scale, clip=False,
                        constant_score=True)["boxes"]
        else:
            gt = tg["boxes"].astype(np.float64)
        gts.append(gt)
        cand = cfg.threshold if ref else cfg.candidate_threshold
        p = decode(heat[i], sizes[i], cand, cfg.nms_kernel, scale, clip=not ref,
                   constant_score=ref)
        preds.append(p)
        preds_tau.append(p if cand == cfg.threshold else
                         decode(heat[i], sizes[i], cfg.threshold, cfg.nms_kernel, scale,
                                clip=not ref, constant_score=ref))
    res = evaluate_boxes(preds, gts, cfg.max_dets_resolved, float_labels=ref)
    f1 = f1_at_iou(preds_tau, gts, 0.5)
    res.update({
        "f1_50": f1["f1"], "precision_50": f1["precision"], "recall_50": f1["recall"],
        "heatmap_iou": inter / union if union else 1.0,
        "mode": cfg.mode, "backend": METRIC_BACKEND, "n_images": len(heat),
        "n_gt": int(sum(len(g) for g in gts)), "n_pred": int(sum(len(p["boxes"]) for p in preds)),
        "max_dets": cfg.max_dets_resolved,
    })
    return res
