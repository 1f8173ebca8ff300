"""COCO-style box evaluation: mAP / mAR through pycocotools' ``COCOeval``, and F1 at one IoU.

docs/detection.md, "Evaluation protocol": COCOeval is set up as torchmetrics'
``MeanAveragePrecision`` sets up its pycocotools backend (the torchmetrics wrapper itself needs
torchvision, which has no CPU build here). pycocotools is imported only when an evaluation runs.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from musplit.errors import InputError

__all__ = ["METRIC_BACKEND", "evaluate_boxes", "f1_at_iou"]

METRIC_BACKEND = "pycocotools-cocoeval"


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
    """COCO box mAP over all images, accumulated into one evaluation (docs/detection.md,
    "Evaluation protocol").

    The engine is pycocotools' ``COCOeval``, configured as torchmetrics
    ``MeanAveragePrecision(box_format="xywh", iou_type="bbox", backend="pycocotools")`` configures
    it (IoU 0.50:0.05:0.95, 101 recall points, one class, area = w * h, the given maxDets). The
    torchmetrics wrapper itself refuses to run without torchvision, which this package does not
    depend on, so COCOeval is called directly; the summary is computed here (see
    :func:`_summarize`) because pycocotools' ``summarize()`` truncates ``map`` at 100 detections.

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
    the largest threshold like every other AP, as the clean evaluation intends.
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
