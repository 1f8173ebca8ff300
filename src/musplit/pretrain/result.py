"""The result of pre-training and its checkpoint: :class:`PretrainResult`, :func:`load_pretrained`.

A pre-training checkpoint is a musplit checkpoint (weights-only loadable, written atomically)
of kind ``musplit-pretrain``; it carries the pre-training config, the data-manifest hash, the
loss log and the key map used for transfer (docs/pretraining.md, "Optimisation and augmentation").
This module sits below both the training loop (:mod:`musplit.pretrain.train`) and the code that
reads its checkpoints (:mod:`musplit.pretrain.usplit`, :mod:`musplit.detect.train`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from musplit.checkpoint import load_checkpoint, save_checkpoint
from musplit.errors import CheckpointError, MusplitError
from musplit.pretrain.pretext_config import PretrainConfig

__all__ = ["CHECKPOINT_KIND", "HEAD_PREFIX", "PretrainResult", "data_manifest_sha256",
           "load_pretrained"]

HEAD_PREFIX = "pretext_head."
CHECKPOINT_KIND = "musplit-pretrain"


def data_manifest_sha256(images: np.ndarray) -> str:
    """Content hash of the pre-training data (shape, dtype and bytes)."""
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256()
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns (and :func:`load_pretrained` reads back).

    Attributes
    ----------
    config : PretrainConfig
    encoder_state : dict of str to Tensor
        The transferred weights, in the key names of the model they load into.
    state_dict : dict of str to Tensor
        ``encoder_state`` plus the pretext-only weights under ``pretext_head.`` (the
        checkpoint's content; a strict transfer reports exactly those as unused).
    key_map : dict of str to str
        Pretext-model key -> transfer key of every transferred tensor.
    log : list of float
        Loss per optimiser step.
    steps, seed : int
    data_manifest_sha256 : str
    extra : dict
        Provenance: data shape, skipped steps, run time, backends.
    path : Path or None
        Where it was saved or loaded from.
    """

    config: PretrainConfig
    encoder_state: dict[str, Tensor]
    state_dict: dict[str, Tensor]
    key_map: dict[str, str]
    log: list[float]
    steps: int
    seed: int
    data_manifest_sha256: str
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def head_keys(self) -> list[str]:
        """The pretext-only keys of :attr:`state_dict`."""
        return sorted(k for k in self.state_dict if k.startswith(HEAD_PREFIX))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically (temporary name, then rename)."""
        extra = {
            "kind": CHECKPOINT_KIND,
            "objective": self.config.pretext.objective,
            "model": self.config.model,
            "scope": self.config.scope,
            "steps": self.steps,
            "seed": self.seed,
            "data_manifest_sha256": self.data_manifest_sha256,
            "key_map": self.key_map,
            "head_keys": self.head_keys,
            "log": [float(v) for v in self.log],
            **{k: v for k, v in self.extra.items() if k not in ("stats",)},
        }
        out = save_checkpoint(path, state_dict=self.state_dict,
                              config=self.config.model_dump(mode="json"),
                              stats=self.extra.get("stats"), extra=extra)
        self.path = Path(out)
        return self.path


def load_pretrained(path: str | os.PathLike) -> PretrainResult:
    """Read a pre-training checkpoint written by :meth:`PretrainResult.save`.

    Raises
    ------
    CheckpointError
        Not a file, unsafe or unreadable, or a checkpoint of another kind (e.g. a trained
        µSplit model).
    """
    try:
        payload = load_checkpoint(path)
    except MusplitError:
        raise
    except Exception as e:  # noqa: BLE001
        # musplit.checkpoint.load_checkpoint lets some unpickler errors on non-checkpoint files
        # through (e.g. IndexError on a text file); they mean the same thing here.
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__})") \
            from None
    extra = payload.get("extra") or {}
    if extra.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a pre-training checkpoint (musplit pretrain "
                              "writes them)")
    try:
        config = PretrainConfig.model_validate(payload["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its pre-training config is invalid ({e})") from None
    state = payload["state_dict"]
    keep = ("kind", "objective", "model", "scope", "steps", "seed", "data_manifest_sha256",
            "key_map", "head_keys", "log")
    return PretrainResult(
        config=config,
        encoder_state={k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)},
        state_dict=state,
        key_map=dict(extra.get("key_map", {})),
        log=list(extra.get("log", [])),
        steps=int(extra.get("steps", 0)),
        seed=int(extra.get("seed", 0)),
        data_manifest_sha256=str(extra.get("data_manifest_sha256", "")),
        extra={**{k: v for k, v in extra.items() if k not in keep},
               "stats": payload.get("stats")},
        path=Path(path),
    )
