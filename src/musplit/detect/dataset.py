"""Synthetic datasets on disk: write (TIFF frames, JSON metadata, manifest) and verify.

docs/detection.md, "Determinism and storage". Every file is written under a temporary
name and renamed into place; the manifest records per-file and per-array checksums so that
:func:`verify_dataset` can tell a changed file from a changed generator.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from musplit import __version__
from musplit.checkpoints.format import file_sha256
from musplit.detect.presets import preset_config
from musplit.detect.simulator import GENERATOR_VERSION, NAMESPACES, _preset_id, generate_frames
from musplit.errors import InputError
from musplit.files import atomic_write
from musplit.pretrain.config import SynthDatasetConfig, SynthPresetConfig

__all__ = ["verify_dataset", "write_dataset"]


def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    import tifffile  # lazy: only writing a dataset needs it

    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, arr, photometric="minisblack", software=None, datetime=None)


def _write_json(path: Path, data) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _file_record(root: Path, rel: str, arr: np.ndarray) -> dict:
    return {"path": rel, "sha256": file_sha256(root / rel),
            "data_sha256": _sha256_bytes(np.ascontiguousarray(arr).tobytes()),
            "shape": list(arr.shape), "dtype": str(arr.dtype)}


def write_dataset(out_dir: str | os.PathLike, config: SynthDatasetConfig,
                  overwrite: bool = False) -> Path:
    """Generate ``config`` into ``out_dir`` and return the manifest path (docs/detection.md,
    "Determinism and storage").

    Layout: ``images/000000.tif`` (uint16 or uint8), ``labels/000000.tif`` (uint16),
    ``meta/000000.json`` (per-cell metadata) and ``manifest.json`` (generator version, preset
    config, seeds, and per-file sha256, data sha256, shape and dtype).
    """
    out = Path(out_dir)
    man_path = out / "manifest.json"
    if man_path.exists() and not overwrite:
        raise InputError(f"{man_path} exists; pass overwrite to replace the dataset")
    cfg = preset_config(config.preset, config.size, config.overrides)
    for sub in ("images", "labels", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    files = []
    for i, fr in enumerate(generate_frames(cfg, config.frames, config.seed,
                                           namespace=config.namespace, dtype=config.dtype)):
        stem = f"{i:06d}"
        _write_tiff(out / "images" / f"{stem}.tif", fr.image)
        _write_tiff(out / "labels" / f"{stem}.tif", fr.labels)
        _write_json(out / "meta" / f"{stem}.json",
                    {"index": i, "n_peak": fr.n_peak, "cells": fr.cells})
        files.append(_file_record(out, f"images/{stem}.tif", fr.image))
        files.append(_file_record(out, f"labels/{stem}.tif", fr.labels))
    manifest = {
        "generator": "musplit.pretrain.synth",
        "generator_version": GENERATOR_VERSION,
        "musplit_version": __version__,
        "dataset": config.model_dump(mode="json"),
        "preset": cfg.model_dump(mode="json"),
        "seed_scheme": "SeedSequence([seed, namespace_id, preset_id, frame_index])",
        "namespace_id": NAMESPACES.index(config.namespace),
        "preset_id": _preset_id(cfg.name),
        "files": files,
    }
    _write_json(man_path, manifest)
    return man_path


def verify_dataset(out_dir: str | os.PathLike) -> list[str]:
    """Regenerate a written dataset and compare checksums; returns the problems (empty = ok).

    Checks each file against its recorded sha256 (was it changed on disk?) and each regenerated
    array against the recorded data sha256 (does this generator still produce the same data?).
    """
    out = Path(out_dir)
    man_path = out / "manifest.json"
    if not man_path.is_file():
        raise InputError(f"{out} is not a synthetic dataset (no manifest.json)")
    try:
        manifest = json.loads(man_path.read_text())
        config = SynthDatasetConfig.model_validate(manifest["dataset"])
        cfg = SynthPresetConfig.model_validate(manifest["preset"])
        records = {r["path"]: r for r in manifest["files"]}
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"{man_path} is not a valid synth manifest ({e})") from None
    problems = []
    for rel, rec in records.items():
        p = out / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(p) != rec["sha256"]:
            problems.append(f"{rel}: file checksum differs from the manifest")
    for i, fr in enumerate(generate_frames(cfg, config.frames, config.seed,
                                           namespace=config.namespace, dtype=config.dtype)):
        stem = f"{i:06d}"
        for kind, arr in (("images", fr.image), ("labels", fr.labels)):
            rel = f"{kind}/{stem}.tif"
            rec = records.get(rel)
            if rec is None:
                problems.append(f"{rel}: not in the manifest")
                continue
            if _sha256_bytes(np.ascontiguousarray(arr).tobytes()) != rec["data_sha256"]:
                problems.append(f"{rel}: regenerated data differ from the manifest")
    return problems
