"""Centroid-heatmap cell detection: targets, loss, fine-tuning, decoding and COCO evaluation.

Spec/pcmc.md §9 (and §10 for the reference defects avoided here). Pipeline:

instance labels -> boxes (xywh, +1 widths) -> centroid heatmap (ellipse + box filter, summed)
and size maps (3x3 blocks, ViT; central half of the box, CNN) -> detector -> Huber loss ->
decoding (3x3 max-pool NMS, threshold, 4-connected components, truncated centroids, sizes read
at the centroid) -> COCO mAP from pycocotools' ``COCOeval``, set up as torchmetrics'
``MeanAveragePrecision`` sets up its pycocotools backend (the torchmetrics wrapper itself needs
torchvision, which has no CPU build here).

Two evaluation modes share one API (§9.6): ``clean`` (default: ground truth from the instance
masks, heatmap-peak scores, candidates above 0.3, max_dets [10, 100, 1000], clipped boxes) and
``reference`` (ground truth decoded from the target maps, every score 1, threshold 0.75, NMS 3,
max_dets [1, 10, 100], no clipping, float labels).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from musplit.errors import CheckpointError, InputError
from musplit.pretrain.config import DetectionConfig
from musplit.pretrain.models import build_detector, load_encoder

log = logging.getLogger("musplit")

__all__ = [
    "boxes_from_labels",
    "centroid_heatmap",
    "decode",
    "detection_loss",
    "evaluate_boxes",
    "evaluate_detector",
    "f1_at_iou",
    "label_subset",
    "load_detector",
    "make_targets",
    "normalize_images",
    "predict",
    "read_encoder_state",
    "save_detector",
    "size_maps",
    "train_detector",
]

METRIC_BACKEND = "pycocotools-cocoeval"


# -- §9.2 targets --------------------------------------------------------------------------
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
    +-1 px on the boundary (clean mode, §9.2).
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
    """Sum of per-cell blurred ellipses (§9.2): ``(H, W)`` float32; overlaps may exceed 1.

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
    """Size targets (§9.2): ``sizes`` (2, H, W) float32 (channel 0 height, 1 width), ``mask``.

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


# -- §9.3 loss -----------------------------------------------------------------------------
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


# -- §9.5 decoding -------------------------------------------------------------------------
def decode(heatmap: np.ndarray | torch.Tensor, sizes: np.ndarray | torch.Tensor,
           threshold: float = 0.75, nms_kernel: int = 3, size_scale: tuple[float, float] = (1, 1),
           clip: bool = True, constant_score: bool = False) -> dict[str, np.ndarray]:
    """Decode one heatmap and size map into boxes (§9.5).

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


# -- §9.6 evaluation -----------------------------------------------------------------------
def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, 0:1], b[None, :, 0]), 0,
                 None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, 1:2], b[None, :, 1]), 0,
                 None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def f1_at_iou(preds: list[dict], gts: list[np.ndarray], iou: float = 0.5) -> dict[str, float]:
    """Greedy one-to-one matching by descending score, per image; F1 over all images."""
    tp = n_pred = n_gt = 0
    for p, g in zip(preds, gts, strict=True):
        boxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
        g = np.asarray(g, np.float64).reshape(-1, 4)
        n_pred += len(boxes)
        n_gt += len(g)
        if not len(boxes) or not len(g):
            continue
        order = np.argsort(-np.asarray(p["scores"], np.float64), kind="stable")
        ious = _iou_xywh(boxes[order], g)
        used = np.zeros(len(g), bool)
        for row in ious:
            row = np.where(used, -1.0, row)
            j = int(np.argmax(row))
            if row[j] >= iou:
                used[j] = True
                tp += 1
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gt if n_gt else 0.0
    f1 = 2 * tp / (n_pred + n_gt) if (n_pred + n_gt) else 1.0
    return {"f1": f1, "precision": prec, "recall": rec, "tp": tp, "n_pred": n_pred, "n_gt": n_gt}


def evaluate_boxes(preds: list[dict], gts: list[np.ndarray], max_dets: list[int] | None = None,
                   float_labels: bool = False) -> dict[str, float]:
    """COCO box mAP over all images, accumulated into one evaluation (§9.6).

    The engine is pycocotools' ``COCOeval``, configured as torchmetrics
    ``MeanAveragePrecision(box_format="xywh", iou_type="bbox", backend="pycocotools")`` configures
    it (IoU 0.50:0.05:0.95, 101 recall points, one class, area = w * h, the given maxDets). The
    torchmetrics wrapper itself refuses to run without torchvision, which this package does not
    depend on, so COCOeval is called directly; the summary is computed here (see
    :func:`_summarize`) because pycocotools' ``summarize()`` truncates ``map`` at 100
    detections.

    Parameters
    ----------
    preds : per image ``{"boxes": (K, 4) xywh, "scores": (K,)}``.
    gts : per image (G, 4) xywh ground-truth boxes.
    max_dets : maxDets thresholds (default [10, 100, 1000]).
    float_labels : the reference passes float labels; with one class this changes nothing and
        is accepted for API symmetry.

    Returns
    -------
    dict with ``map``, ``map_50``, ``map_75``, ``map_small``, ``map_medium``, ``map_large`` (at the
    largest maxDets) and ``mar_<d>`` for every d in ``max_dets``; -1 where COCO has nothing to
    average (e.g. no ground truth in an area range).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    del float_labels
    if len(preds) != len(gts):
        raise InputError(f"{len(preds)} predictions for {len(gts)} ground-truth images")
    max_dets = sorted(max_dets or [10, 100, 1000])
    images, gt_anns, dt_anns = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        images.append({"id": i + 1})
        b = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
        s = np.asarray(p["scores"], np.float64).reshape(-1)
        if len(b) != len(s):
            raise InputError(f"{len(b)} boxes but {len(s)} scores")
        for box in np.asarray(g, np.float64).reshape(-1, 4):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": 1,
                            "bbox": box.tolist(), "area": float(box[2] * box[3]),
                            "iscrowd": 0})
        for box, sc in zip(b, s, strict=True):
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": i + 1, "category_id": 1,
                            "bbox": box.tolist(), "area": float(box[2] * box[3]),
                            "score": float(sc), "iscrowd": 0})
    cats = [{"id": 1, "name": "cell"}]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": cats}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": cats}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
    return _summarize(ev, max_dets)


def _summarize(ev, max_dets: list[int]) -> dict[str, float]:
    """COCO summary numbers from ``ev.eval``, every AP at the **largest** maxDets.

    pycocotools' own ``summarize()`` hard-codes maxDets = 100 for its first number (AP@[.5:.95])
    whatever ``params.maxDets`` says, so a frame with 150 cells would be truncated even with
    maxDets [10, 100, 1000]; torchmetrics' pycocotools backend inherits this. Here ``map`` uses
    the largest threshold like every other AP, as §9.6 intends.
    """
    p = ev.params
    prec = ev.eval["precision"]  # (T, R, K, A, M)
    rec = ev.eval["recall"]  # (T, K, A, M)
    areas = {name: i for i, name in enumerate(p.areaRngLbl)}
    last = p.maxDets.index(max(max_dets))

    def ap(iou=None, area="all", m=last):
        s = prec[:, :, :, areas[area], m]
        if iou is not None:
            s = s[np.flatnonzero(np.isclose(p.iouThrs, iou))]
        s = s[s > -1]
        return float(s.mean()) if s.size else -1.0

    def ar(area="all", m=last):
        s = rec[:, :, areas[area], m]
        s = s[s > -1]
        return float(s.mean()) if s.size else -1.0

    out = {"map": ap(), "map_50": ap(0.5), "map_75": ap(0.75), "map_small": ap(area="small"),
           "map_medium": ap(area="medium"), "map_large": ap(area="large")}
    for d in max_dets:
        out[f"mar_{d}"] = ar(m=p.maxDets.index(d))
    out["mar_small"] = ar("small")
    out["mar_medium"] = ar("medium")
    return out


def normalize_images(images: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (P-4); constant images become zeros (defect 14)."""
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
    from musplit.pretrain.synth import _resize_pair

    out_i, out_l = [], []
    for i in range(len(images)):
        lab = labels[i] if labels is not None else np.zeros(images.shape[1:], np.int32)
        a, b = _resize_pair(images[i], lab, size)
        out_i.append(a)
        out_l.append(b)
    return np.stack(out_i), (np.stack(out_l) if labels is not None else None)


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
    """Score a detector on frames with instance masks (§9.6); returns a flat metrics dict.

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


# -- §9.4 fine-tuning ----------------------------------------------------------------------
def label_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a ``fraction`` of n frames; nested across fractions for one seed."""
    if not 0 < fraction <= 1:
        raise InputError(f"label fraction must be in (0, 1], got {fraction}")
    if n < 1:
        raise InputError("no training frames")
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 1729])).permutation(n)
    k = max(1, int(round(fraction * n)))
    return np.sort(perm[:k])


class _DetectionData(torch.utils.data.Dataset):
    """Normalised frames + labels -> (x, targets), with label-exact flips / 90° rotations."""

    def __init__(self, u: np.ndarray, labels: np.ndarray, cfg: DetectionConfig,
                 pcolor: bool = False) -> None:
        self.u, self.labels, self.cfg, self.pcolor = u, labels, cfg, pcolor

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, item):
        i, aug = item
        u, lab = self.u[i], self.labels[i]
        if self.cfg.augment:
            k, flip = aug % 4, aug // 4
            u, lab = np.rot90(u, k), np.rot90(lab, k)
            if flip:
                u, lab = u[:, ::-1], lab[:, ::-1]
        u = np.ascontiguousarray(u, np.float32)
        t = make_targets(np.ascontiguousarray(lab), self.cfg.scheme, self.cfg.relative_sizes,
                         self.cfg.image_size)
        x = torch.from_numpy(u)[None].expand(3, -1, -1).contiguous()
        tg = {"heatmap": torch.from_numpy(t["heatmap"]), "sizes": torch.from_numpy(t["sizes"]),
              "mask": torch.from_numpy(t["mask"])}
        if self.pcolor:
            from musplit.pretrain.colormap import pcolor  # the other half of the package

            tg["pcolor"] = torch.as_tensor(np.asarray(pcolor(u), np.float32))
        return x, tg


class _Sampler(torch.utils.data.Sampler):
    """steps x batch (index, augmentation) pairs drawn from a seeded generator."""

    def __init__(self, n: int, total: int, seed: int) -> None:
        self.n, self.total, self.seed = n, total, seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        g = np.random.default_rng(np.random.SeedSequence([self.seed, 31337]))
        idx = g.integers(0, self.n, self.total)
        aug = g.integers(0, 8, self.total)
        return iter(zip(idx.tolist(), aug.tolist(), strict=True))


def _make_module_class():
    import lightning as L

    class DetectorModule(L.LightningModule):
        """Lightning wrapper: loss, AdamW + per-step cosine schedule, frozen backbone."""

        def __init__(self, model: nn.Module, cfg: DetectionConfig, steps: int) -> None:
            super().__init__()
            self.model, self.cfg, self.total_steps = model, cfg, steps
            self.history: dict[str, list] = {"step": [], "loss": [], "heatmap_loss": [],
                                             "size_loss": [], "lr": [], "heatmap_iou": []}
            if cfg.backbone_frozen:
                for p in model.encoder.parameters():
                    p.requires_grad_(False)

        def on_train_batch_start(self, batch, batch_idx):
            if self.cfg.backbone_frozen:
                self.model.encoder.eval()

        def training_step(self, batch, batch_idx):
            x, tg = batch
            out = self.model(x)
            parts = detection_loss(out, tg, self.cfg)
            h = self.history
            h["step"].append(int(self.global_step))
            h["loss"].append(float(parts["loss"].detach()))
            h["heatmap_loss"].append(float(parts["heatmap"].detach()))
            h["size_loss"].append(float(parts["size"].detach()))
            h["lr"].append(float(self.optimizers().param_groups[0]["lr"]))
            a, b = heatmap_iou(out["heatmap"].detach().float().cpu(), tg["heatmap"].cpu())
            h["heatmap_iou"].append(a / b if b else 1.0)
            return parts["loss"]

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, self.total_steps), eta_min=self.cfg.lr_min)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return DetectorModule


def __getattr__(name: str):
    if name == "DetectorModule":  # built lazily so that importing this module stays light
        return _make_module_class()
    raise AttributeError(name)


def read_encoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights to initialise a detector from (``--init``): a musplit checkpoint or a state dict.

    Accepts a payload with ``encoder_state_dict`` (preferred) or ``state_dict``, or a plain
    mapping of tensors. Loaded with ``weights_only=True``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"init checkpoint {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused / corrupt file: the user's file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"init checkpoint {p} could not be loaded safely ({first})") \
            from None
    if isinstance(payload, dict) and isinstance(payload.get("extra"), dict) and \
            payload["extra"].get("kind") == "musplit-pretrain":
        # A `musplit pretrain` checkpoint: its encoder weights, without the pretext head.
        from musplit.pretrain.train import load_pretrained

        return load_pretrained(p).encoder_state
    if isinstance(payload, dict):
        for key in ("encoder_state_dict", "state_dict"):
            if isinstance(payload.get(key), dict):
                return payload[key]
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
    raise CheckpointError(f"{p} holds no state dict (expected 'encoder_state_dict' or "
                          "'state_dict')")


def _init_scope(model: nn.Module, state: dict, scope: str) -> str:
    if scope != "auto":
        return scope
    if getattr(model, "variant", "") == "cnn" and any(k.startswith("neck.") for k in state):
        return "all"  # a CNN pretext model: transfer all but the replaced final convs (§6.1)
    return "encoder"


def train_detector(images: np.ndarray, labels: np.ndarray, config: DetectionConfig | None = None,
                   *, encoder_state: dict[str, torch.Tensor] | None = None,
                   init: str | os.PathLike | None = None, init_scope: str = "auto",
                   steps: int | None = None, label_fraction: float = 1.0,
                   seed: int | None = None, batch: int | None = None,
                   accelerator: str = "auto") -> tuple[nn.Module, dict]:
    """Fine-tune a detector on frames with instance masks (§9.4, §12.2).

    Parameters
    ----------
    images : (N, H, W) raw frames (any real dtype); min-max normalised per frame.
    labels : (N, H, W) integer instance masks; resized with nearest neighbour if the frames
        are not at the model's image size.
    config : :class:`DetectionConfig` (model, loss, optimiser, ...); default ViT at 384.
    encoder_state : pre-trained weights (from :func:`musplit.pretrain.models.encoder_state_dict`
        or a full pretext model's state dict), loaded strictly before training.
    init : path of a checkpoint to read ``encoder_state`` from (``--init``).
    init_scope : "encoder", "all" (CNN pretext: all but the heads' final convs) or "auto".
    steps, batch, seed : override the config's step budget, batch size and seed.
    label_fraction : train on a nested random fraction of the frames (fixed by ``seed``).

    Returns
    -------
    model : the fine-tuned detector (eval mode, on CPU) with ``detection_config`` attached.
    log : dict with per-step ``loss``, ``heatmap_loss``, ``size_loss``, ``lr``,
        ``heatmap_iou``, the ``subset`` indices, the ``load_report`` and the config.
    """
    import lightning as L

    cfg = config or DetectionConfig()
    upd = {k: v for k, v in (("steps", steps), ("batch", batch), ("seed", seed)) if v is not None}
    if upd:
        cfg = DetectionConfig.model_validate({**cfg.model_dump(), **upd})
    imgs, labs = _fit_geometry(images, labels, cfg.image_size)
    subset = label_subset(len(imgs), label_fraction, cfg.seed)
    u = normalize_images(imgs[subset])
    labs = labs[subset]
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg)
    report = None
    if init is not None:
        if encoder_state is not None:
            raise InputError("give either an encoder state or an init checkpoint, not both")
        encoder_state = read_encoder_state(init)
    if encoder_state is not None:
        scope = _init_scope(model, encoder_state, init_scope)
        report = load_encoder(model, encoder_state, strict=True, scope=scope).as_dict()
        report["scope"] = scope
        log.info("loaded pre-trained weights: %s", report)
    aux = bool(getattr(model.cfg, "aux_pcolor", False))
    data = _DetectionData(u, labs, cfg, pcolor=aux)
    loader = torch.utils.data.DataLoader(
        data, batch_size=cfg.batch, sampler=_Sampler(len(data), cfg.steps * cfg.batch, cfg.seed),
        num_workers=0)
    module = _make_module_class()(model, cfg, cfg.steps)
    _quiet_lightning()
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=cfg.steps, max_epochs=-1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, deterministic=False)
    trainer.fit(module, loader)
    model = module.model.cpu().eval()
    model.detection_config = cfg
    hist = dict(module.history)
    hist.update({"subset": subset.tolist(), "label_fraction": label_fraction,
                 "load_report": report, "config": cfg.model_dump(mode="json"),
                 "steps": cfg.steps})
    return model, hist


def _quiet_lightning() -> None:
    for pattern in (r".*does not have many workers.*", r".*dataloader is not resumable.*",
                    r".*isinstance\(treespec, LeafSpec\).*", r".*GPU available but not used.*",
                    r".*`max_epochs` was not set.*", r".*Total length of .* across ranks.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch",
                 "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


# -- checkpoints ---------------------------------------------------------------------------
CHECKPOINT_KIND = "pcmc-detector"


def save_detector(path: str | os.PathLike, model: nn.Module, cfg: DetectionConfig,
                  extra: dict | None = None) -> Path:
    """Self-describing detector checkpoint (temporary name, then rename)."""
    from musplit.checkpoint import save_checkpoint

    return save_checkpoint(path, state_dict=model.state_dict(),
                           config={"kind": CHECKPOINT_KIND,
                                   "detection": cfg.model_dump(mode="json")},
                           stats=None, extra=extra)


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, DetectionConfig, dict]:
    """Load a detector written by :func:`save_detector` (``weights_only=True``)."""
    from musplit.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    conf = payload.get("config") or {}
    if not isinstance(conf, dict) or conf.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a PCMC detector checkpoint")
    try:
        cfg = DetectionConfig.model_validate(conf["detection"])
    except Exception as e:  # written by another version
        raise CheckpointError(f"{path}: detector config is invalid ({e})") from None
    model = build_detector(cfg)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the model ({first})") from None
    model.eval()
    model.detection_config = cfg
    return model, cfg, payload.get("extra") or {}

