"""From a :class:`~musplit.config.DataConfig` to target arrays, and back to disk.

This is the one place that knows the dataset layouts (built-in synthetic data, one
multi-channel file, one file per channel) and which split rule each uses.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musplit.data.frames import frame_shapes
from musplit.data.splits import (
    Split,
    default_split,
    hagen_split,
    load_split,
    save_split,
    spatial_split,
)
from musplit.errors import InputError
from musplit.files import ZARR_MARKERS, atomic_write
from musplit.kinds import MAX_CHANNELS, MIN_CHANNELS

log = logging.getLogger(__name__)

# musplit.data.io (zarr, tifffile: about 0.5 s) and musplit.data.synthetic (scipy) are imported
# in the functions that need them, so reading files never imports scipy and generating data
# never imports zarr.

CRITTERS_FILE = "critters.tif"


@dataclass
class TargetData:
    """The target channels of a dataset and how they are split.

    Attributes
    ----------
    targets : array-like, shape (N, H, W, T), or list of (H_i, W_i, T) arrays
        float32 target channels (possibly a lazy or memory-mapped array); a list when the
        frames differ in size.
    channel_names : list of str
    split : Split
    source : str
        Where the data came from, for messages and provenance.
    notes : list of str
        What the user should know about the split (e.g. a channel without signal in the
        validation region).
    """

    targets: np.ndarray | list
    channel_names: list[str]
    split: Split
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(H, W)`` of every frame."""
        return frame_shapes(self.targets)


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
    return write_dataset(out_dir, {Path(CRITTERS_FILE).stem: data}, dataset="SinosoidalCritters",
                         channel_names=["ch1", "ch2"], fmt=fmt, overwrite=overwrite,
                         params=params)


def write_dataset(out_dir: str | os.PathLike, stacks: dict[str, np.ndarray], *, dataset: str,
                  channel_names: list[str], fmt: str = "tiff", overwrite: bool = False,
                  params: dict | None = None) -> list[Path]:
    """Write synthetic stacks (``{file stem: (N, H, W, C) array}``, all of one shape) with axes
    and channel names, the frame split and a manifest (parameters, shape, checksums) into
    ``out_dir``; returns the written paths, the split and the manifest last."""
    from musplit.data.io import write_tiff, write_zarr

    if fmt not in ("tiff", "zarr"):
        raise InputError(f"unknown format '{fmt}' (tiff or zarr)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sums = [], {}
    for stem, data in stacks.items():
        if fmt == "tiff":
            img = write_tiff(out_dir / f"{stem}.tif", data, axes="SYXC",
                             channel_names=channel_names, overwrite=overwrite)
        else:
            img = write_zarr(out_dir / f"{stem}.zarr", data, axes="SYXC",
                             channel_names=channel_names, overwrite=overwrite)
        written.append(Path(img))
        sums[Path(img).name] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    first = next(iter(stacks.values()))
    split = save_split(default_split(first.shape[0]), out_dir / "split.json")
    manifest = {
        "dataset": dataset,
        "params": params or {},
        "shape": list(first.shape),
        "axes": "SYXC",
        "channel_names": list(channel_names),
        "sha256": sums[written[0].name] if len(sums) == 1 else sums,
    }
    man = out_dir / "manifest.json"
    with atomic_write(man) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return [*written, split, man]


_IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".npy", ".npz", ".zarr")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")


def resolve_paths(spec: str | Sequence[str], what: str = "--data") -> list[Path]:
    """The image files a data path names: a file, a folder (its image files, natural order),
    a glob pattern, or a list of any of these."""
    from musplit.data.io import _natural_key

    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[Path] = []
    for item in items:
        text = str(item)
        p = Path(text).expanduser()
        if any(ch in text for ch in "*?[") and not p.exists():
            found = sorted((Path(g) for g in globmod.glob(str(p))),
                           key=lambda q: _natural_key(q.name))
            found = [q for q in found if _is_image(q)]
            if not found:
                raise InputError(f"{what} {text}: no image files match this pattern")
            out += found
        elif p.is_dir() and p.suffix.lower() != ".zarr" and not any(
                (p / m).exists() for m in ZARR_MARKERS):
            found = sorted((q for q in p.iterdir() if _is_image(q)),
                           key=lambda q: _natural_key(q.name))
            if not found:
                raise InputError(f"{what} {p} is a folder without image files "
                                 f"({', '.join(_IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(p)
    return out


def _frames_of(arrays: list[np.ndarray]):
    """One (N, H, W, T) array when every frame has the same size, else a list of frames."""
    if len({a.shape[1:3] for a in arrays}) == 1:
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return [f for a in arrays for f in a]


def _check_frames(parts: list[tuple[str, np.ndarray]], patch: int) -> None:
    """A frame smaller than the patch is refused, naming its file."""
    for name, arr in parts:
        h, w = arr.shape[1:3]
        if h < patch or w < patch:
            raise InputError(f"{name}: its frames are {h}x{w}, smaller than the training patch "
                             f"{patch}x{patch}; use a smaller --patch or larger images")


def _all_channels(path, n: int) -> list[int]:
    """All ``n`` channels of a file given without ``data.channels``, when musplit can split
    that many structures."""
    if n < MIN_CHANNELS:
        raise InputError(f"{path}: it holds {n} channel(s); training needs the structures "
                         f"imaged separately, {MIN_CHANNELS} to {MAX_CHANNELS} channels (one "
                         "file with a channel axis, or --channel-files with one file each)")
    if n > MAX_CHANNELS:
        raise InputError(f"{path}: it holds {n} channels and musplit splits {MIN_CHANNELS} to "
                         f"{MAX_CHANNELS} structures: pick them with --channels, e.g. "
                         f"--channels {','.join(str(c) for c in range(min(n, 3)))}")
    return list(range(n))


def _read_multichannel(data_cfg) -> tuple:
    """Frames of one or more multi-channel files (one or more frames each)."""
    from musplit.data.io import open_image

    paths = resolve_paths(data_cfg.path)
    channels = data_cfg.channels
    parts, counts, known = [], [], None
    for p in paths:
        src = open_image(p, axes=data_cfg.axes)
        try:
            counts.append((p, src.n_channels))
            if len({c for _, c in counts}) > 1:
                listing = ", ".join(f"{q.name} has {c}" for q, c in counts)
                raise InputError(f"the files of {data_cfg.path} have different channel counts "
                                 f"({listing}); give files with the same channels")
            if channels is None:  # every channel of the file, one structure each
                channels = _all_channels(p, src.n_channels)
            parts.append((str(p), src.read(channels=channels)))
            if known is None:
                known = getattr(src, "channel_names", None)
        finally:
            src.close()
    names = data_cfg.channel_names or (
        [known[c] for c in channels] if known else [f"ch{c}" for c in channels]
    )
    source = str(paths[0]) if len(paths) == 1 else (
        f"{len(paths)} files ({paths[0].name} ... {paths[-1].name})")
    return parts, names, source


def _read_channel_files(data_cfg) -> tuple:
    """One file (or folder entry) per channel; each may hold several frames."""
    from musplit.data.io import load_channel_files

    paths = resolve_paths(data_cfg.channel_paths, "--channel-files")
    if len(paths) < 2:
        raise InputError(f"one file per channel needs at least two files, got {len(paths)} "
                         f"({', '.join(str(p) for p in paths)})")
    arr = load_channel_files(paths, axes=data_cfg.axes)
    names = data_cfg.channel_names or [p.name.split(".")[0] for p in paths]
    return [(" + ".join(str(p) for p in paths), arr)], names, ", ".join(str(p) for p in paths)


def load_targets(data_cfg) -> TargetData:
    """Load the target channels a :class:`~musplit.config.DataConfig` describes.

    Synthetic data is generated in memory; files are read as float32 frames. Files whose
    frames differ in size give a list of frames (see :func:`musplit.data.dataset.frame_shapes`).

    The split: ``data.split = "default"`` is the reference's frame rule, or a spatial split
    (:func:`~musplit.data.splits.spatial_split`) when there are too few frames for a
    validation frame; ``"spatial"`` always holds out regions; ``"hagen"`` or a ``split.json``
    file as given.
    """
    if data_cfg.synthetic is not None:
        from musplit.data.synthetic import generate_critters

        s = data_cfg.synthetic
        targets = generate_critters(s.frames, size=s.size, connector=s.connector, seed=s.seed,
                                    pairing=s.pairing)
        names = data_cfg.channel_names or ["ch1", "ch2"]
        source = f"critters(frames={s.frames}, size={s.size}, connector={s.connector}" + (
            f", pairing={s.pairing})" if s.pairing != "paper" else ")")
        rule = "default"
    elif data_cfg.channel_paths is not None or data_cfg.path is not None:
        if data_cfg.channel_paths is not None:
            parts, names, source = _read_channel_files(data_cfg)
            rule = "hagen"
        else:
            parts, names, source = _read_multichannel(data_cfg)
            rule = "default"
        _check_frames(parts, data_cfg.patch)
        targets = _frames_of([a for _, a in parts])
    else:
        raise InputError("no training data: give a file (--data) or use synthetic data")

    shapes = frame_shapes(targets)
    n = len(shapes)
    n_ch = targets[0].shape[-1] if isinstance(targets, list) else targets.shape[-1]
    if len(names) != n_ch:
        raise InputError(f"{len(names)} channel names for {n_ch} channels")
    choice = data_cfg.split
    notes: list[str] = []
    if choice in ("default", "spatial"):
        split = default_split(n) if rule == "default" else hagen_split(n)
        if choice == "spatial" or not split.val:
            try:
                split, notes = spatial_split(
                    shapes, data_cfg.patch, frames=lambda i: targets[i],
                    val_fraction=data_cfg.val_fraction, test_fraction=data_cfg.test_fraction,
                    channel_names=names)
            except InputError as e:  # name the data, and what would do
                more = ""
                if choice != "spatial":
                    more = ("more frames, " if rule != "default" else
                            f"more frames ({n} given; from 5 on, whole frames are held out), ")
                raise InputError(f"{source}: {e}; give {more}larger frames or a smaller "
                                 "--patch") from None
    elif choice == "hagen":
        split = hagen_split(n)
    else:
        split = load_split(choice)
    split.validate(n, source=f"split for {source}", shapes=shapes)
    for note in notes:
        log.warning("%s: %s", source, note)
    return TargetData(targets=targets, channel_names=list(names), split=split, source=source,
                      notes=notes)
