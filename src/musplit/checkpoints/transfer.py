"""Transfer of pre-trained weights into a µSplit network (docs/pretraining.md, "Encoder transfer").

:func:`encoder_keys` says which state-dict keys of a LadderVAE or U-Net pre-training produces
(the bottom-up path, or the whole network but its head); :func:`load_pretrained_encoder`
loads them strictly from a ``musplit pretrain`` checkpoint, its loaded result or a state dict,
and returns a report that :func:`write_report` writes as JSON. ``train.init_from`` uses both.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from musplit.checkpoints.format import _atomic_write
from musplit.checkpoints.strict import compare_state
from musplit.errors import CheckpointError, InputError
from musplit.kinds import LADDER_KINDS

log = logging.getLogger(__name__)

__all__ = ["HEAD_PREFIX", "encoder_keys", "load_pretrained_encoder", "write_report"]

#: Prefix of the pretext-only parameters in a pre-training checkpoint (never transferred).
HEAD_PREFIX = "pretext_head."
_UNET_ENCODER = ("inc.", "downs.", "lc_stems.", "lc_convs.", "lc_merges.")


def encoder_keys(model: nn.Module, scope: str = "encoder") -> list[str]:
    """State-dict keys of a µSplit network that pre-training transfers (docs/pretraining.md,
    "µSplit pre-training").

    ``scope="encoder"``: the bottom-up path (LadderVAE ``encoder.*``; the U-Net's ``inc``,
    ``downs`` and LC branches). ``scope="network"``: every key but the output head (``head.*``).
    """
    keys = list(model.state_dict())
    if scope == "network":
        return [k for k in keys if not k.startswith("head.")]
    if scope != "encoder":
        raise InputError(f"scope must be 'encoder' or 'network', got {scope!r}")
    kind = getattr(getattr(model, "config", None), "kind", None)
    if kind in LADDER_KINDS:
        return [k for k in keys if k.startswith("encoder.")]
    if kind == "unet":
        return [k for k in keys if k.startswith(_UNET_ENCODER)]
    raise InputError(f"encoder pre-training supports the LadderVAE (hvae, hae) and the U-Net, "
                     f"not kind {kind!r}")


def _source_state(source) -> tuple[dict, dict]:
    """``(state_dict, info)`` from a checkpoint path, a PretrainResult or a state dict."""
    # Lazy: a pre-training result comes from musplit.pretrain, which imports this module.
    from musplit.pretrain.result import PretrainResult, load_pretrained

    if isinstance(source, (str, os.PathLike)):
        source = load_pretrained(source)
    if isinstance(source, PretrainResult):
        info = {"source": str(source.path) if source.path else "<in memory>",
                "objective": source.config.pretext.objective, "scope": source.config.scope,
                "model": source.config.model,
                "data_manifest_sha256": source.data_manifest_sha256}
        return source.state_dict, info
    if isinstance(source, dict):
        return source, {"source": "<state dict>"}
    raise InputError(f"init-from needs a checkpoint path, a PretrainResult or a state dict, "
                     f"got {type(source).__name__}")


def load_pretrained_encoder(model: nn.Module, path_or_state) -> dict:
    """Load pre-trained encoder weights into a µSplit network, strictly (docs/pretraining.md,
    "Encoder transfer").

    Every key of the transferred part (the encoder, or the whole network but its head for a
    ``scope="network"`` checkpoint) must be present with the same shape; the only keys allowed
    to be left over are the pretext head's (:data:`HEAD_PREFIX`).

    Parameters
    ----------
    model : nn.Module
        A freshly built :class:`~musplit.models.LadderVAE` or U-Net.
    path_or_state : path-like, PretrainResult or dict
        A pre-training checkpoint (``musplit pretrain``), its loaded result, or a state dict in
        the network's key names.

    Returns
    -------
    dict
        The load report: ``source``, ``objective``, ``scope``, ``loaded`` (count),
        ``loaded_keys``, ``missing`` (empty), ``unused`` (the pretext-head keys),
        ``data_manifest_sha256`` where known.

    Raises
    ------
    CheckpointError
        Missing encoder keys, shape mismatches, or keys that belong to neither the network nor
        the pretext head; or a checkpoint pre-trained for another model family.
    """
    state, info = _source_state(path_or_state)
    if info.get("model") not in (None, "usplit_encoder"):
        raise CheckpointError(f"{info['source']} was pre-trained for {info['model']}, not for a "
                              "µSplit network (pre-train with --model usplit_encoder)")
    own = model.state_dict()
    scope = info.get("scope")
    if scope is None:
        non_encoder = set(own) - set(encoder_keys(model, "encoder"))
        scope = "network" if any(k in non_encoder for k in state) else "encoder"
    expected = encoder_keys(model, scope)
    mismatch = compare_state(own, state, expected)
    unused = sorted(mismatch.unexpected)
    foreign = [k for k in unused if not k.startswith(HEAD_PREFIX)]
    where = info["source"]
    if mismatch.missing:
        raise CheckpointError(f"{where} does not fit this network: {len(mismatch.missing)} "
                              f"{scope} key(s) missing, e.g. {mismatch.missing[0]} (pre-train "
                              "with the same model config)")
    if mismatch.shapes:
        k, given, wanted = mismatch.shapes[0]
        raise CheckpointError(f"{where} does not fit this network: {len(mismatch.shapes)} shape "
                              f"mismatch(es), e.g. {k} {given} vs {wanted} (pre-train with the "
                              "same model config)")
    if foreign:
        raise CheckpointError(f"{where} holds {len(foreign)} key(s) that are neither in this "
                              f"network's {scope} nor pretext-head keys, e.g. {foreign[0]}")
    with torch.no_grad():
        for k in expected:
            own[k].copy_(state[k].to(own[k].dtype))
    model.load_state_dict(own, strict=True)
    report = dict(info, scope=scope, loaded=len(expected), loaded_keys=expected, missing=[],
                  shape_mismatch=[], unused=unused)
    log.info("init from %s: %d %s tensors loaded, %d pretext-head tensors unused", where,
             len(expected), scope, len(unused))
    return report


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write a load report as JSON, atomically."""
    text = json.dumps(report, indent=2)
    return _atomic_write(path, lambda tmp: tmp.write_text(text))
