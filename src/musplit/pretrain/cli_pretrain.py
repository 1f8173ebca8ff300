"""Moved to :mod:`musplit.cli.pretrain`; this name keeps old imports working."""

from musplit.cli.pretrain import CHECKPOINT, _load_images, _usplit_model, pretrain

__all__ = ["CHECKPOINT", "_load_images", "_usplit_model", "pretrain"]
