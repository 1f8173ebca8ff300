"""Detector checkpoints: self-describing musplit checkpoints of kind ``pcmc-detector``.

Loaded with ``weights_only=True`` and rebuilt from the stored :class:`DetectionConfig`.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from musplit.checkpoint import load_checkpoint, save_checkpoint
from musplit.detect.models import build_detector
from musplit.errors import CheckpointError
from musplit.pretrain.config import DetectionConfig

__all__ = ["CHECKPOINT_KIND", "load_detector", "save_detector"]

CHECKPOINT_KIND = "pcmc-detector"


def save_detector(path: str | os.PathLike, model: nn.Module, cfg: DetectionConfig,
                  extra: dict | None = None) -> Path:
    """Self-describing detector checkpoint (temporary name, then rename)."""
    return save_checkpoint(path, state_dict=model.state_dict(),
                           config={"kind": CHECKPOINT_KIND,
                                   "detection": cfg.model_dump(mode="json")},
                           stats=None, extra=extra)


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, DetectionConfig, dict]:
    """Load a detector written by :func:`save_detector` (``weights_only=True``)."""
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
