"""Reading real images and instance masks in the Cell Tracking Challenge layout.

Images and masks are paired by their frame number, never by sort order (docs/detection.md,
"Experiment protocol"). tifffile is imported when a folder is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from musplit.detect.frames import _resize_pair
from musplit.errors import InputError

__all__ = ["read_ctc"]


def _frame_key(stem: str, prefix: str) -> str | None:
    if not stem.startswith(prefix):
        return None
    rest = stem[len(prefix):]
    return rest if rest.isdigit() else None


def read_ctc(folder: str | os.PathLike, source: str = "auto", size: int | None = None,
             sequences: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read images and instance masks in the Cell Tracking Challenge layout.

    ``folder`` is either a dataset root holding sequences (``01/t000.tif`` with masks in
    ``01_GT/SEG/man_seg000.tif`` or ``01_ST/SEG/man_seg000.tif``) or one sequence folder
    (``.../01``, masks in its sibling ``01_GT/SEG``). Images and masks are paired by their frame
    number (never by sort order); frames without a mask are skipped, as CTC gold
    truth is sparse; a mask without its image is an error.

    Parameters
    ----------
    source : "gt" (``_GT/SEG``), "st" (``_ST/SEG``) or "auto" (GT where present, else ST).
    size : resize every frame to size × size (bilinear image, nearest labels); needed when
        sequences differ in shape.
    sequences : sequence names to read (default: every ``NN`` folder with masks).

    Returns
    -------
    images : (N, H, W) float32. labels : (N, H, W) int32.
    """
    import tifffile

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if source not in ("auto", "gt", "st"):
        raise InputError(f"source must be 'auto', 'gt' or 'st', got {source!r}")
    if (root.parent / f"{root.name}_GT").is_dir() or (root.parent / f"{root.name}_ST").is_dir():
        seq_dirs = [root]
        base = root.parent
    else:
        base = root
        seq_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if sequences is not None:
            missing = [s for s in sequences if not (root / s).is_dir()]
            if missing:
                raise InputError(f"{root}: sequence folder(s) {missing} not found")
            seq_dirs = [root / s for s in sequences]
        if not seq_dirs:
            raise InputError(f"{root}: no sequence folders (01, 02, ...) found; expected the Cell "
                             "Tracking Challenge layout 01/t000.tif + 01_GT/SEG/man_seg000.tif")
    images, labels = [], []
    used = 0
    for seq in seq_dirs:
        cands = {"gt": base / f"{seq.name}_GT" / "SEG", "st": base / f"{seq.name}_ST" / "SEG"}
        if source == "auto":
            seg = cands["gt"] if cands["gt"].is_dir() else cands["st"]
        else:
            seg = cands[source]
        if not seg.is_dir():
            if len(seq_dirs) == 1 or sequences is not None:
                raise InputError(f"{seq}: no mask folder {seg} (expected {seq.name}_GT/SEG or "
                                 f"{seq.name}_ST/SEG next to it)")
            continue
        img_files = {}
        for p in seq.iterdir():
            if p.suffix.lower() in (".tif", ".tiff"):
                k = _frame_key(p.stem, "t")
                if k is not None:
                    img_files[int(k)] = p
        mask_files = []
        for p in sorted(seg.iterdir()):
            if p.suffix.lower() not in (".tif", ".tiff"):
                continue
            k = _frame_key(p.stem, "man_seg")
            if k is None:
                if p.stem.startswith("man_seg_"):
                    raise InputError(f"{p}: per-slice 3-D annotations (man_seg_TTT_ZZZ) are not "
                                     "supported; give 2-D frames")
                continue
            mask_files.append((int(k), p))
        if not mask_files:
            raise InputError(f"{seg}: no mask files named man_segNNN.tif")
        for k, mp in mask_files:
            if k not in img_files:
                raise InputError(f"{mp}: no matching image t{k:03d}.tif in {seq}")
            try:
                img = tifffile.imread(img_files[k])
                lab = tifffile.imread(mp)
            except Exception as e:  # unreadable or not a TIFF: the user's file
                raise InputError(f"cannot read {img_files[k].name} / {mp.name}: {e}") from None
            img, lab = np.squeeze(img), np.squeeze(lab)
            if img.ndim != 2 or lab.ndim != 2:
                raise InputError(f"{img_files[k]}: expected 2-D frames, got image {img.shape} "
                                 f"and mask {lab.shape}")
            if img.shape != lab.shape:
                raise InputError(f"{img_files[k].name} has shape {img.shape} but its mask "
                                 f"{mp.name} has shape {lab.shape}")
            if not np.issubdtype(lab.dtype, np.integer):
                raise InputError(f"{mp}: instance masks must be integer images, got {lab.dtype}")
            if lab.min() < 0:
                raise InputError(f"{mp}: instance ids must be non-negative")
            if size is not None:
                img, lab = _resize_pair(img, lab, size)
            images.append(img.astype(np.float32))
            labels.append(lab.astype(np.int32))
            used += 1
    if not used:
        raise InputError(f"{root}: no image/mask pairs found")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(f"{root}: frames differ in shape {sorted(shapes)}; pass a size to "
                         "resize them")
    return np.stack(images), np.stack(labels)
