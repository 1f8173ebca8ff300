"""Detection data for ``musplit detect ...``: dataset folders of images and instance masks,
and the TIFF frames to predict."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from musplit.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile  # lazy: musplit --help does not wait for it

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as e:  # not a TIFF, truncated: the user's file
        raise InputError(f"cannot read {path} as TIFF ({e})") from None


def _tiffs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in TIFF_SUFFIXES}


def read_pairs(folder: str | os.PathLike, size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images and instance masks of a dataset folder, paired by file stem, never by sort order
    (docs/pretraining.md, "Reference defects avoided").

    Layouts: ``images/NAME.tif`` + ``labels/NAME.tif`` (what ``musplit synth generate``
    writes), or the Cell Tracking Challenge layout (see :func:`musplit.detect.ctc.read_ctc`).
    Returns images (N, H, W) float32, labels (N, H, W) int32 and the frame names.
    """
    # musplit.detect loads scipy.
    from musplit.detect.ctc import read_ctc
    from musplit.detect.frames import _resize_pair

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if not (root / "images").is_dir():
        images, labels = read_ctc(root, size=size)
        return images, labels, [f"frame{i:04d}" for i in range(len(images))]
    if not (root / "labels").is_dir():
        raise InputError(f"{root}: has images/ but no labels/ folder with instance masks")
    imgs, labs = _tiffs(root / "images"), _tiffs(root / "labels")
    if not imgs:
        raise InputError(f"{root / 'images'}: no TIFF files")
    missing = sorted(set(imgs) - set(labs))
    extra = sorted(set(labs) - set(imgs))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no label image for {missing[:3]}")
        if extra:
            parts.append(f"no image for labels {extra[:3]}")
        raise InputError(f"{root}: images and labels do not pair by name: " + "; ".join(parts))
    out_i, out_l = [], []
    for name in sorted(imgs):
        im, lab = np.squeeze(_read_tiff(imgs[name])), np.squeeze(_read_tiff(labs[name]))
        if im.ndim != 2 or im.shape != lab.shape:
            raise InputError(f"{name}: image {im.shape} and labels {lab.shape} must be 2-D "
                             "frames of the same shape")
        if not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"{labs[name]}: instance masks must be integer images")
        if size is not None and im.shape != (size, size):
            im, lab = _resize_pair(im, lab, size)
        out_i.append(im.astype(np.float32))
        out_l.append(lab.astype(np.int32))
    if len({a.shape for a in out_i}) > 1:
        raise InputError(f"{root}: frames differ in shape; they are resized to the model size "
                         "only when one is given")
    return np.stack(out_i), np.stack(out_l), sorted(imgs)


def read_inputs(paths: tuple[Path, ...]) -> tuple[list[np.ndarray], list[str]]:
    """Frames to predict: TIFF files (2-D, or 3-D stacks of frames) or folders of TIFFs."""
    frames, names = [], []
    for p in paths:
        if p.is_dir():
            sub = p / "images" if (p / "images").is_dir() else p
            files = list(_tiffs(sub).values())
            if not files:
                raise InputError(f"{p}: no TIFF files")
        elif p.is_file():
            files = [p]
        else:
            raise InputError(f"{p}: no such file or folder")
        for f in files:
            a = np.squeeze(_read_tiff(f))
            if a.ndim == 2:
                frames.append(a)
                names.append(f.name)
            elif a.ndim == 3:
                for i, fr in enumerate(a):
                    frames.append(fr)
                    names.append(f"{f.name}[{i}]")
            else:
                raise InputError(f"{f}: expected a 2-D frame or a stack of frames, got "
                                 f"shape {a.shape}")
    return frames, names


__all__ = ["TIFF_SUFFIXES", "read_inputs", "read_pairs"]
