"""Import reference µSplit checkpoints (docs/checkpoints.md, "Reference checkpoints").

A reference checkpoint is a PyTorch Lightning ``.ckpt`` whose ``state_dict`` uses the reference
module names. This module

- reads its tensors without running code (``torch.load(weights_only=True)``; unknown classes are
  replaced by inert stubs only when the caller consents),
- infers the variant from the keys and shapes (docs/checkpoints.md, "Variant inference"),
- renames every key with an explicit, two-way map (docs/checkpoints.md, "Checkpoint layout"),
refusing
  keys it does not know and shapes that do not fit,
- and writes a self-describing musplit checkpoint that :meth:`musplit.Splitter.load` opens.

The reference does not store its normalisation statistics (docs/checkpoints.md, "Checkpoint
layout"), so they are passed in (``stats``), typically recomputed from the training data by
the caller.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from musplit.checkpoints.format import file_sha256, save_checkpoint
from musplit.checkpoints.reference_files import load_reference_checkpoint, read_reference_config
from musplit.checkpoints.strict import load_strict
from musplit.config import Config, DataConfig
from musplit.config.model import ModelConfig
from musplit.data.normalize import NormStats
from musplit.errors import CheckpointError
from musplit.kinds import LADDER_KINDS
from musplit.models import build, count_parameters

__all__ = [
    "PAPER_PARAMETER_COUNTS",
    "import_official",
    "infer_model_config",
    "load_reference_checkpoint",
    "musplit_to_reference",
    "read_reference_config",
    "reference_to_musplit",
]

log = logging.getLogger(__name__)

#: Parameter counts of the paper's variants (docs/method.md, "Lateral Contextualisation"), by
#: (lc, unused merges kept).
PAPER_PARAMETER_COUNTS = {
    ("none", True): 2_991_748, ("none", False): 2_991_748,
    ("lean", True): 3_657_604, ("lean", False): 3_657_604,
    ("regular", True): 4_702_084, ("regular", False): 4_702_084,
    ("deep", True): 7_177_604, ("deep", False): 6_814_852,
}

# -- the key map (docs/checkpoints.md, "Checkpoint layout")
# ------------------------------------------
# (musplit prefix, reference prefix, is a residual block, offset of {j} in the reference)
# {i}: level, {k}: LC branch, {j}: extra block. A residual block's inner names are mapped by
# _RES_BN / _RES_NO_BN. Extra blocks (blocks_per_level > 1) follow the reference layout:
# bottom-up same-size blocks live in `net.{j}`, top-down ones after the upsampling block.
_Rule = tuple[str, str, bool, int]


def _branch(mus: str, ref: str) -> tuple[_Rule, _Rule]:
    """An input branch (:class:`~musplit.models.blocks.Stem`): its conv, then its res block."""
    return (mus + "conv.", ref + "0.", False, 0), (mus + "res.", ref + "2.res.", True, 0)


def _merge(mus: str, ref: str) -> tuple[_Rule, _Rule]:
    """A :class:`~musplit.models.blocks.Merge`: its 1x1 ``proj``, then its res block."""
    return (mus + "proj.", ref + "layer.0.", False, 0), (mus + "res.", ref + "layer.1.", True, 0)


_MODULES: tuple[_Rule, ...] = (
    *_branch("encoder.stem.", "first_bottom_up."),
    *_branch("encoder.lc_stems.{k}.", "lowres_first_bottom_ups.{k}."),
    ("encoder.levels.{i}.down.", "bottom_up_layers.{i}.net_downsized.0.pre_conv.", False, 0),
    ("encoder.levels.{i}.res.", "bottom_up_layers.{i}.net_downsized.0.res.", True, 0),
    ("encoder.levels.{i}.extra.{j}.", "bottom_up_layers.{i}.net.{j}.res.", True, 0),
    *_merge("encoder.levels.{i}.lc_merge.", "bottom_up_layers.{i}.lowres_merge."),
    ("decoder.levels.{i}.top_prior", "top_down_layers.{i}.top_prior_params", False, 0),
    *_merge("decoder.levels.{i}.q_merge.", "top_down_layers.{i}.merge."),
    ("decoder.levels.{i}.stochastic.post_conv.", "top_down_layers.{i}.stochastic.conv_in_q.",
     False, 0),
    ("decoder.levels.{i}.stochastic.prior_conv.", "top_down_layers.{i}.stochastic.conv_in_p.",
     False, 0),
    ("decoder.levels.{i}.stochastic.out_conv.", "top_down_layers.{i}.stochastic.conv_out.",
     False, 0),
    *_merge("decoder.levels.{i}.skip_merge.", "top_down_layers.{i}.skip_connection_merger."),
    ("decoder.levels.{i}.up.", "top_down_layers.{i}.deterministic_block.0.pre_conv.", False, 0),
    ("decoder.levels.{i}.up_res.", "top_down_layers.{i}.deterministic_block.0.res.", True, 0),
    ("decoder.levels.{i}.extra.{j}.", "top_down_layers.{i}.deterministic_block.{j}.res.",
     True, 1),
    ("decoder.final.", "final_top_down.0.res.", True, 0),
    ("decoder.final_extra.{j}.", "final_top_down.{j}.res.", True, 1),
    ("head.conv.", "likelihood.parameter_net.", False, 0),
)

# Residual block internals: 'bacdbacd' = [BN, ELU, conv, dropout] x 2 + gate (docs/checkpoints.md,
# "Reference key families"). Without batch norm the reference's Sequential has no BN entries and the
# indices shift.
_RES_BN = (("bn1.", "block.0."), ("conv1.", "block.2."), ("bn2.", "block.4."),
           ("conv2.", "block.6."), ("gate.conv.", "block.8.conv."))
_RES_NO_BN = (("conv1.", "block.1."), ("conv2.", "block.4."), ("gate.conv.", "block.6.conv."))

_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked", ""}


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template)
    for name in "ijk":
        out = out.replace(re.escape("{" + name + "}"), f"(?P<{name}>\\d+)")
    return re.compile("^" + out)


_MUS = [(_pattern(m), r, res, off) for m, r, res, off in _MODULES]
_REF = [(_pattern(r), m, res, off) for m, r, res, off in _MODULES]


def _translate(key: str, rules, res_table, to_reference: bool) -> str | None:
    for pattern, template, is_res, offset in rules:
        match = pattern.match(key)
        if match is None:
            continue
        groups = {k: int(v) for k, v in match.groupdict().items()}
        if "j" in groups:
            groups["j"] += offset if to_reference else -offset
            if groups["j"] < 0:
                continue
        rest = key[match.end():]
        if is_res:
            for mus, ref in res_table:
                src, dst = (mus, ref) if to_reference else (ref, mus)
                if rest.startswith(src):
                    rest = dst + rest[len(src):]
                    break
            else:
                return None
            leaf = rest.rsplit(".", 1)[-1]
        else:
            leaf = rest
        if leaf not in _LEAVES or (template.endswith(".") == (rest == "")):
            return None
        return template.format(**groups) + rest
    return None


def _map_keys(state_dict: Mapping[str, Any], to_reference: bool, batchnorm: bool
              ) -> OrderedDict[str, Any]:
    rules = _MUS if to_reference else _REF
    table = _RES_BN if batchnorm else _RES_NO_BN
    out: OrderedDict[str, Any] = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        new = _translate(key, rules, table, to_reference)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        side = "musplit" if to_reference else "reference µSplit"
        raise CheckpointError(
            f"{len(unknown)} key(s) are not part of the {side} LadderVAE layout: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    return out


def reference_to_musplit(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Rename a reference µSplit ``state_dict`` to musplit's canonical names (docs/checkpoints.md,
    "Checkpoint layout").

    Raises
    ------
    CheckpointError
        Naming the keys that belong to no known module.
    """
    batchnorm = any(k.endswith(".running_mean") for k in state_dict)
    return _map_keys(state_dict, to_reference=False, batchnorm=batchnorm)


def musplit_to_reference(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Rename a musplit LadderVAE ``state_dict`` to the reference layout (inverse map).

    Raises
    ------
    CheckpointError
        Naming the keys that belong to no known module.
    """
    batchnorm = any(".bn1." in k for k in state_dict)
    return _map_keys(state_dict, to_reference=True, batchnorm=batchnorm)


# -- variant inference (docs/checkpoints.md, "Variant inference") ----------------------------------
def _indices(state_dict: Mapping[str, Any], prefix: str) -> list[int]:
    pat = re.compile("^" + re.escape(prefix) + r"(\d+)\.")
    found = set()
    for key in state_dict:
        m = pat.match(key)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def _need(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise CheckpointError(f"not a reference µSplit LadderVAE checkpoint: no key {key}")
    return state_dict[key]


def infer_model_config(state_dict: Mapping[str, Tensor], *, kind: str, patch: int = 64
                       ) -> ModelConfig:
    """The :class:`ModelConfig` of a reference ``state_dict`` (docs/checkpoints.md, "Variant
    inference").

    Parameters
    ----------
    state_dict : mapping of str to Tensor
        In the reference layout.
    kind : str
        One of :data:`~musplit.kinds.LADDER_KINDS`: the weights cannot tell an HVAE from an HAE.
    patch : int
        Training patch size ``P`` (``data.image_size`` of the reference config); it fixes
        which variant a top-prior size means.

    Raises
    ------
    CheckpointError
        If a required key is missing, the levels are not contiguous, or the top prior does not
        fit ``patch``.
    """
    if kind not in LADDER_KINDS:
        raise CheckpointError(f"kind must be 'hvae' or 'hae', got {kind!r}")
    levels = _indices(state_dict, "top_down_layers.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(
            f"not a reference µSplit LadderVAE checkpoint: top-down levels {levels}"
        )
    n_levels = len(levels)
    lc = _indices(state_dict, "lowres_first_bottom_ups.")
    if lc != list(range(len(lc))):
        raise CheckpointError(f"LC branches are not numbered 0..{len(lc) - 1}: {lc}")
    scales = len(lc) + 1
    filters = int(_need(state_dict, "first_bottom_up.0.weight").shape[0])
    z_dims = [int(_need(state_dict, f"top_down_layers.{i}.stochastic.conv_out.weight").shape[1])
              for i in range(n_levels)]
    head = int(_need(state_dict, "likelihood.parameter_net.weight").shape[0])
    if head % 2 or head < 4:
        raise CheckpointError(
            f"the likelihood head has {head} output channels; only the per-pixel Gaussian head "
            "(means and log-variances of >= 2 channels) is supported"
        )
    dec_blocks = len(_indices(state_dict, "top_down_layers.0.deterministic_block."))
    enc_blocks = 1 + len(_indices(state_dict, "bottom_up_layers.0.net."))
    if dec_blocks != enc_blocks:
        raise CheckpointError(
            f"{enc_blocks} encoder and {dec_blocks} decoder blocks per level: musplit needs equal"
        )
    batchnorm = "first_bottom_up.2.res.block.0.running_mean" in state_dict
    gate = "block.8.conv.weight" if batchnorm else "block.6.conv.weight"
    gated = f"bottom_up_layers.0.net_downsized.0.res.{gate}" in state_dict
    prior = _need(state_dict, f"top_down_layers.{n_levels - 1}.top_prior_params")
    side = int(prior.shape[-1])
    if prior.ndim != 4 or prior.shape[-2] != side:
        raise CheckpointError(f"top prior has shape {tuple(prior.shape)}, expected square")

    lean_patch = side << n_levels
    retain_patch = side << (n_levels + 1 - scales)
    if scales == 1:
        variant = "none"
        ok = patch == lean_patch
    elif patch == retain_patch:
        variant = "deep" if n_levels > 4 else "regular"
        ok = True
    else:
        variant, ok = "lean", patch == lean_patch
    if not ok:
        hint = f"{lean_patch} (Vanilla/Lean-LC)"
        if scales > 1:
            hint += f" or {retain_patch} (Regular/Deep-LC)"
        raise CheckpointError(
            f"the top prior is {side}x{side}, which does not fit patch {patch}: with "
            f"{n_levels} levels and {scales} scales it fits patch {hint}; give the training "
            "patch size"
        )
    unused = scales > 1 and any(
        f"bottom_up_layers.{i}.lowres_merge.layer.0.weight" in state_dict
        for i in range(scales - 1, n_levels)
    )
    return ModelConfig(
        kind=kind, lc=variant, filters=filters, z_dims=z_dims, scales=scales,
        out_channels=head // 2, patch=patch, blocks_per_level=dec_blocks, batchnorm=batchnorm,
        gated=gated, latent_scaling="reference",
        parity_unused_modules=unused or scales == 1 or n_levels + 1 == scales,
    )


def _load_strict(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """``load_state_dict(strict=True)`` with errors that name keys in the reference layout."""
    own = model.state_dict()
    to_ref = dict(zip(own, musplit_to_reference(dict.fromkeys(own)), strict=True))

    def rename(keys: list[str]) -> list[str]:
        if all(k in to_ref for k in keys):
            return [to_ref[k] for k in keys]
        return list(musplit_to_reference(dict.fromkeys(keys)))

    load_strict(model, state_dict, what="the weights do not fit the inferred model",
                rename=rename)


def import_official(ckpt_path: str | os.PathLike, out_path: str | os.PathLike, *,
                    kind: str | None = None, stats=None, patch: int | None = None,
                    overwrite: bool = False, config_pkl: str | os.PathLike | None = None,
                    stub_unknown_classes: bool = False) -> Path:
    """Convert a reference µSplit Lightning checkpoint into a musplit checkpoint.

    Parameters
    ----------
    ckpt_path : path-like
        Reference ``*.ckpt`` (e.g. ``..._best.ckpt``).
    out_path : path-like
        The musplit checkpoint to write.
    kind : str, optional
        One of :data:`~musplit.kinds.LADDER_KINDS`. Needed unless ``config.pkl`` (next to the
        checkpoint, or ``config_pkl``) gives ``model.non_stochastic_version``; the two must
        agree when both are given.
    stats : NormStats or dict, optional
        Normalisation statistics of the training data (docs/checkpoints.md, "Checkpoint layout":
        the reference does not store them). Without them the checkpoint loads but
        cannot map predictions to intensities; a warning says so.
    patch : int, optional
        Training patch size; default ``data.image_size`` from ``config.pkl``, else 64.
    overwrite : bool
        Replace an existing ``out_path``.
    config_pkl : path-like, optional
        The reference run's ``config.pkl``; default: next to the checkpoint, if present.
    stub_unknown_classes : bool
        Consent to read a checkpoint that weights-only loading refuses, with inert stubs for
        the unknown classes (see :func:`load_reference_checkpoint`).

    Returns
    -------
    Path
        ``out_path``. Its ``extra["source"]`` records the source file, its SHA-256, epoch,
        global step and parameter count.

    Raises
    ------
    CheckpointError
        Unreadable input, unknown keys, shape mismatches, undecidable kind, or an existing
        output without ``overwrite``.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if out_path.exists() and not overwrite:
        raise CheckpointError(f"{out_path} exists; choose another output or allow overwriting")
    state_dict, meta = load_reference_checkpoint(ckpt_path,
                                                 stub_unknown_classes=stub_unknown_classes)
    pkl = Path(config_pkl) if config_pkl is not None else ckpt_path.parent / "config.pkl"
    ref_cfg = read_reference_config(pkl) if pkl.is_file() else {}

    pkl_kind = None
    if "non_stochastic_version" in ref_cfg:
        pkl_kind = "hae" if ref_cfg["non_stochastic_version"] else "hvae"
    if kind is None and pkl_kind is None:
        raise CheckpointError(
            "the weights of an HVAE and an HAE are identical and no config.pkl says which this "
            "is: give the kind (hvae or hae)"
        )
    if kind is not None and pkl_kind is not None and kind != pkl_kind:
        raise CheckpointError(
            f"kind {kind!r} contradicts {pkl} (model.non_stochastic_version = "
            f"{ref_cfg['non_stochastic_version']}, i.e. {pkl_kind!r})"
        )
    kind = kind or pkl_kind
    patch = patch or ref_cfg.get("image_size") or 64

    model_cfg = infer_model_config(state_dict, kind=kind, patch=patch)
    model = build(model_cfg)
    _load_strict(model, reference_to_musplit(state_dict))
    n_params = count_parameters(model)
    paper = (model_cfg.filters == 64 and set(model_cfg.z_dims) == {128}
             and model_cfg.scales in (1, 5) and model_cfg.blocks_per_level == 1
             and model_cfg.out_channels == 2 and model_cfg.patch == 64)
    expected = PAPER_PARAMETER_COUNTS.get((model_cfg.lc, model_cfg.parity_unused_modules))
    if paper and expected is not None and n_params != expected:
        raise CheckpointError(
            f"{n_params} parameters, but the paper's {model_cfg.lc} variant has {expected}"
        )
    if isinstance(stats, Mapping):
        stats = NormStats.from_dict(dict(stats))
    if stats is not None and stats.n_channels != model_cfg.out_channels:
        raise CheckpointError(
            f"statistics for {stats.n_channels} channels, model predicts "
            f"{model_cfg.out_channels}"
        )
    if stats is None:
        log.warning("no normalisation statistics given: %s cannot denormalise predictions "
                    "until they are added", out_path)

    config = Config(
        name=f"imported-{ckpt_path.stem}",
        data=DataConfig(patch=patch, scales=model_cfg.scales, lc_alignment="floor"),
        model=model_cfg,
    )
    source = {"path": str(ckpt_path), "sha256": file_sha256(ckpt_path), "parameters": n_params,
              "format": "reference µSplit (juglab/uSplit) Lightning checkpoint", **meta}
    written = save_checkpoint(
        out_path, state_dict=model.state_dict(), config=config.model_dump(mode="json"),
        stats=stats.to_dict() if stats is not None else None, extra={"source": source},
    )
    log.info("imported %s (%s, lc=%s, %d levels, %d scales, %d parameters, epoch %s) -> %s",
             ckpt_path, kind, model_cfg.lc, model_cfg.levels, model_cfg.scales, n_params,
             meta.get("epoch", "?"), written)
    return written
