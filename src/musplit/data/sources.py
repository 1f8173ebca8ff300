"""From a :class:`~musplit.config.DataConfig` to target arrays, and back to disk.

This is the one place that knows the dataset layouts (built-in synthetic data, one
multi-channel file, one file per channel) and which split rule each uses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musplit.data.splits import Split, default_split, hagen_split, load_split
from musplit.errors import InputError

CRITTERS_FILE = "critters.tif"


@dataclass
class TargetData:
    """The target channels of a dataset and how they are split.

    Attributes
    ----------
    targets : array-like, shape (N, H, W, T)
        float32 target channels (possibly a lazy or memory-mapped array).
    channel_names : list of str
    split : Split
    source : str
        Where the data came from, for messages and provenance.
    """

    targets: np.ndarray
    channel_names: list[str]
    split: Split
    source: str


def write_critters(out_dir: str | os.PathLike, data: np.ndarray, *, fmt: str = "tiff",
                   overwrite: bool = False, params: dict | None = None) -> list[Path]:
    """Write SinosoidalCritters frames, their split and a manifest into ``out_dir``.

    Parameters
    ----------
    data : ndarray, shape (N, H, W, 2)
    fmt : {"tiff", "zarr"}

    Returns
    -------
    list of Path
        The image file, ``split.json`` and ``manifest.json``.
    """
    from musplit.data.io import write_tiff, write_zarr
    from musplit.data.splits import save_split

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["ch1", "ch2"]
    if fmt == "tiff":
        img = write_tiff(out_dir / CRITTERS_FILE, data, axes="SYXC", channel_names=names,
                         overwrite=overwrite)
    elif fmt == "zarr":
        img = write_zarr(out_dir / "critters.zarr", data, axes="SYXC", channel_names=names,
                         overwrite=overwrite)
    else:
        raise InputError(f"unknown format '{fmt}' (tiff or zarr)")
    split = save_split(default_split(data.shape[0]), out_dir / "split.json")
    manifest = {
        "dataset": "SinosoidalCritters",
        "params": params or {},
        "shape": list(data.shape),
        "axes": "SYXC",
        "channel_names": names,
        "sha256": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest(),
    }
    man = out_dir / "manifest.json"
    tmp = man.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, man)
    return [Path(img), split, man]


def load_targets(data_cfg) -> TargetData:
    """Load the target channels a :class:`~musplit.config.DataConfig` describes.

    Synthetic data is generated in memory; files are opened lazily where the format allows
    (the frames are read when statistics and context stacks are built).
    """
    from musplit.data.io import load_channel_files, open_image

    if data_cfg.synthetic is not None:
        from musplit.data.synthetic import generate_critters

        s = data_cfg.synthetic
        targets = generate_critters(s.frames, size=s.size, connector=s.connector, seed=s.seed,
                                    pairing=s.pairing)
        names = data_cfg.channel_names or ["ch1", "ch2"]
        source = f"critters(frames={s.frames}, size={s.size}, connector={s.connector}" + (
            f", pairing={s.pairing})" if s.pairing != "paper" else ")")
        rule = "default"
    elif data_cfg.channel_paths is not None:
        targets = load_channel_files(data_cfg.channel_paths, axes=data_cfg.axes)
        names = data_cfg.channel_names or [Path(p).stem for p in data_cfg.channel_paths]
        source = ", ".join(data_cfg.channel_paths)
        rule = "hagen"
    elif data_cfg.path is not None:
        src = open_image(data_cfg.path, axes=data_cfg.axes)
        channels = data_cfg.channels if data_cfg.channels is not None else [0, 1]
        targets = src.read(channels=channels)
        known = getattr(src, "channel_names", None)
        names = data_cfg.channel_names or (
            [known[c] for c in channels] if known else [f"ch{c}" for c in channels]
        )
        source = str(data_cfg.path)
        rule = "default"
    else:
        raise InputError("no training data: give a file (--data) or use synthetic data")

    n = targets.shape[0]
    choice = data_cfg.split
    if choice == "default":
        split = default_split(n) if rule == "default" else hagen_split(n)
    elif choice == "hagen":
        split = hagen_split(n)
    else:
        split = load_split(choice)
    split.validate(n, source=f"split for {source}")
    if len(names) != targets.shape[-1]:
        raise InputError(f"{len(names)} channel names for {targets.shape[-1]} channels")
    return TargetData(targets=targets, channel_names=list(names), split=split, source=source)
