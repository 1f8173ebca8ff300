"""Weight transfer from a pretext model to a detector: which keys move, and a strict report.

:func:`encoder_state_dict` takes the transferable weights of a model, :func:`load_encoder` loads
them into another and says what it did (docs/pretraining.md, "Pretext models"; docs/detection.md,
"Fine-tuning").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from musplit.checkpoints.strict import compare_state, mismatch_summary
from musplit.errors import CheckpointError, InputError

__all__ = ["LoadReport", "encoder_state_dict", "load_encoder"]


@dataclass
class LoadReport:
    """What :func:`load_encoder` did: keys loaded, missing, unexpected, mismatched, skipped."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]
    skipped: list[str]

    def as_dict(self) -> dict:
        return {"loaded": len(self.loaded), "missing": self.missing,
                "unexpected": self.unexpected, "shape_mismatch": self.shape_mismatch,
                "skipped": self.skipped}


def _head_final_keys(model: nn.Module) -> set[str]:
    keys = set()
    for head in ("heatmap_head", "size_head"):
        if hasattr(model, head):
            keys |= {f"{head}.out.{k}" for k in getattr(model, head).out.state_dict()}
    return keys


def encoder_state_dict(model: nn.Module, scope: str = "encoder") -> dict[str, torch.Tensor]:
    """The transferable weights of ``model`` (tensors detached, on CPU).

    scope "encoder": ``model.encoder`` (ContextBlock + patch embedding + ViT, or ContextBlock +
    EfficientNetV2-S trunk), keys relative to the encoder. scope "all" (CNN pretext → detector):
    every weight except the two heads' final convolutions, keys relative to the model.
    """
    if scope == "encoder":
        sd = model.encoder.state_dict()
    elif scope == "all":
        skip = _head_final_keys(model)
        sd = {k: v for k, v in model.state_dict().items() if k not in skip}
    else:
        raise InputError(f"scope must be 'encoder' or 'all', got {scope!r}")
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def load_encoder(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                 scope: str = "encoder") -> LoadReport:
    """Load transferable weights into ``model`` and report what happened.

    ``state`` is what :func:`encoder_state_dict` returned (keys relative to the encoder, or, for
    scope "all", to the model); keys prefixed ``encoder.`` are accepted for scope "encoder" and
    other prefixed keys are then reported as skipped. Strict (default): every target key must be
    present with the same shape and no key may be left over, else :class:`CheckpointError`.
    With scope "all" the heads' final convolutions are never loaded (they are replaced).
    """
    if scope == "encoder":
        target = model.encoder
        src = {}
        skipped = []
        prefixed = any(k.startswith("encoder.") for k in state)
        for k, v in state.items():
            if prefixed:
                if k.startswith("encoder."):
                    src[k[len("encoder."):]] = v
                else:
                    skipped.append(k)
            else:
                src[k] = v
        exclude: set[str] = set()
    elif scope == "all":
        target = model
        exclude = _head_final_keys(model)
        src = {k: v for k, v in state.items() if k not in exclude}
        skipped = sorted(k for k in state if k in exclude)
    else:
        raise InputError(f"scope must be 'encoder' or 'all', got {scope!r}")
    own = {k: v for k, v in target.state_dict().items() if k not in exclude}
    diff = compare_state(own, src, sort=True)
    mismatch = [k for k, _, _ in diff.shapes]
    report = LoadReport(loaded=[], missing=diff.missing, unexpected=diff.unexpected,
                        shape_mismatch=mismatch, skipped=skipped)
    if strict and diff:
        raise CheckpointError(f"encoder weights do not match the model: {mismatch_summary(diff)}")
    load = {k: src[k] for k in own if k in src and k not in mismatch}
    with torch.no_grad():
        target.load_state_dict(load, strict=False)
    report.loaded = sorted(load)
    return report
