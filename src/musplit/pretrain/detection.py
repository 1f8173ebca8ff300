"""Old import path of centroid-heatmap cell detection, now in :mod:`musplit.detect`.

Re-exports every name that used to live here: targets (:mod:`musplit.detect.targets`), loss
(:mod:`musplit.detect.loss`), decoding (:mod:`musplit.detect.decode`), COCO evaluation
(:mod:`musplit.detect.coco`), frame geometry (:mod:`musplit.detect.frames`), running and scoring
a detector (:mod:`musplit.detect.evaluate`), fine-tuning (:mod:`musplit.detect.train`) and
checkpoints (:mod:`musplit.detect.checkpoint`).
"""

from __future__ import annotations

# Every import below is a re-export for the old import path (hence noqa: F401).
from musplit.detect import train as _train  # noqa: F401
from musplit.detect.checkpoint import CHECKPOINT_KIND, load_detector, save_detector  # noqa: F401
from musplit.detect.coco import (  # noqa: F401
    METRIC_BACKEND,
    _iou_xywh,
    _summarize,
    evaluate_boxes,
    f1_at_iou,
)
from musplit.detect.decode import _size_scale, decode  # noqa: F401
from musplit.detect.evaluate import evaluate_detector, predict, predict_maps  # noqa: F401
from musplit.detect.frames import _fit_geometry, normalize_images  # noqa: F401
from musplit.detect.loss import detection_loss, heatmap_iou  # noqa: F401
from musplit.detect.models import build_detector  # noqa: F401
from musplit.detect.targets import (  # noqa: F401
    _box_filter,
    _ellipse,
    boxes_from_labels,
    centroid_heatmap,
    make_targets,
    size_maps,
)
from musplit.detect.train import (  # noqa: F401
    _DetectionData,
    _init_scope,
    _make_module_class,
    _quiet_lightning,
    _Sampler,
    label_subset,
    log,
    read_encoder_state,
    train_detector,
)
from musplit.pretrain.transfer import load_encoder  # noqa: F401

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


def __getattr__(name: str):
    if name == "DetectorModule":  # built lazily (imports lightning), as before
        return _train.DetectorModule
    raise AttributeError(name)
