"""Train / validation / test splits: by frame (docs/data.md, "Splits") or by region
(docs/data.md, "Spatial split").

A *frame split* assigns whole frames to train, validation and test, as the reference does for
datasets of many frames. Users often have one large frame or a few: then validation and test are
held out as rectangular *regions* of frames (a *spatial split*, :func:`spatial_split`). No
training patch overlaps a held-out region; the lateral context of a training patch may reach
into one, exactly as the context of a predicted tile reaches across tile borders at prediction
time (the held-out pixels are never a training target). Both kinds are stored in the same
``split.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musplit.errors import InputError
from musplit.files import atomic_write


@dataclass(frozen=True)
class Region:
    """A rectangle ``rows y[0]:y[1]``, ``columns x[0]:x[1]`` of frame ``frame``."""

    frame: int
    y: tuple[int, int]
    x: tuple[int, int]

    @property
    def height(self) -> int:
        return self.y[1] - self.y[0]

    @property
    def width(self) -> int:
        return self.x[1] - self.x[0]

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(*self.y), slice(*self.x)

    def overlaps(self, other: Region) -> bool:
        return (self.frame == other.frame and self.y[0] < other.y[1] and other.y[0] < self.y[1]
                and self.x[0] < other.x[1] and other.x[0] < self.x[1])

    def to_dict(self) -> dict:
        return {"frame": self.frame, "y": list(self.y), "x": list(self.x)}

    @classmethod
    def from_dict(cls, d: dict) -> Region:
        try:
            y0, y1 = (int(v) for v in d["y"])
            x0, x1 = (int(v) for v in d["x"])
            return cls(int(d["frame"]), (y0, y1), (x0, x1))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                f"a region needs 'frame', 'y': [start, stop] and 'x': [start, stop] ({e})"
            ) from None

    def describe(self, shape: tuple[int, int] | None = None) -> str:
        rows = f"rows {self.y[0]}-{self.y[1]}"
        cols = f"columns {self.x[0]}-{self.x[1]}"
        if shape is not None and self.x == (0, shape[1]):
            cols = "all columns"
        elif shape is not None and self.y == (0, shape[0]):
            rows = "all rows"
        return f"frame {self.frame} {rows}, {cols}"


@dataclass(frozen=True)
class Split:
    """Frame indices of the three splits, and held-out regions (spatial split).

    ``train`` lists the frames training patches are drawn from; ``val``/``test`` whole frames
    held out; ``val_regions``/``test_regions`` rectangles held out of (training) frames.
    """

    train: list[int]
    val: list[int]
    test: list[int]
    val_regions: tuple[Region, ...] = field(default=())
    test_regions: tuple[Region, ...] = field(default=())

    @property
    def kind(self) -> str:
        """``"spatial"`` when regions are held out, else ``"frames"``."""
        return "spatial" if (self.val_regions or self.test_regions) else "frames"

    @property
    def has_val(self) -> bool:
        return bool(self.val or self.val_regions)

    @property
    def held_out(self) -> tuple[Region, ...]:
        """Every held-out region (validation and test)."""
        return tuple(self.val_regions) + tuple(self.test_regions)

    def to_dict(self) -> dict:
        d = {"train": list(self.train), "val": list(self.val), "test": list(self.test)}
        if self.kind == "spatial":
            d["kind"] = "spatial"
            d["regions"] = {"val": [r.to_dict() for r in self.val_regions],
                            "test": [r.to_dict() for r in self.test_regions]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        try:
            lists = (sorted(int(i) for i in d[k]) for k in ("train", "val", "test"))
            regions = d.get("regions") or {}
            if not isinstance(regions, dict):
                raise TypeError("'regions' must map 'val'/'test' to lists of regions")
            val_r = tuple(Region.from_dict(r) for r in regions.get("val", []))
            test_r = tuple(Region.from_dict(r) for r in regions.get("test", []))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"a split needs integer lists 'train', 'val', 'test' ({e})") from None
        return cls(*lists, val_regions=val_r, test_regions=test_r)

    def validate(self, n_frames: int, source: str = "split",
                 shapes: Sequence[tuple[int, int]] | None = None) -> Split:
        """Check indices (and regions, against the frame ``shapes`` when given)."""
        for name, idx in (("train", self.train), ("val", self.val), ("test", self.test)):
            bad = [i for i in idx if not 0 <= i < n_frames]
            if bad:
                raise InputError(
                    f"{source}: {name} frame {bad[0]} does not exist (the data has {n_frames})"
                )
        if not self.train:
            raise InputError(f"{source}: the training split is empty")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            common = set(getattr(self, a)) & set(getattr(self, b))
            if common:
                raise InputError(f"{source}: {a} and {b} share frame {min(common)}")
        held = self.held_out
        for r in held:
            if not 0 <= r.frame < n_frames:
                raise InputError(f"{source}: region of frame {r.frame}: the frame does not exist "
                                 f"(the data has {n_frames})")
            if r.frame in self.val or r.frame in self.test:
                raise InputError(f"{source}: frame {r.frame} is held out whole and has a region")
            if r.height <= 0 or r.width <= 0 or r.y[0] < 0 or r.x[0] < 0:
                raise InputError(f"{source}: region {r.to_dict()} is empty or negative")
            if shapes is not None and (r.y[1] > shapes[r.frame][0] or r.x[1] > shapes[r.frame][1]):
                h, w = shapes[r.frame]
                raise InputError(f"{source}: region {r.to_dict()} lies outside frame {r.frame} "
                                 f"({h}x{w})")
        for i, a in enumerate(held):
            for b in held[i + 1:]:
                if a.overlaps(b):
                    raise InputError(f"{source}: held-out regions {a.to_dict()} and "
                                     f"{b.to_dict()} overlap")
        return self

    def describe(self, shapes: Sequence[tuple[int, int]] | None = None) -> str:
        """One line for logs and reports: which split, and what is held out."""
        if self.kind == "frames":
            return (f"frame split: {len(self.train)} training, {len(self.val)} validation, "
                    f"{len(self.test)} test frames")

        def regions(rs):
            return "; ".join(r.describe(None if shapes is None else shapes[r.frame]) for r in rs)

        parts = [f"validation {regions(self.val_regions)}"] if self.val_regions else []
        if self.test_regions:
            parts.append(f"test {regions(self.test_regions)}")
        return ("spatial split (too few frames for a frame split): " + ", ".join(parts)
                + "; no training patch overlaps a held-out region")


def default_split(n_frames: int, fraction: float = 0.2) -> Split:
    """The reference's rule for single-file datasets: 80/10/10 with val/test chunks.

    The first ``n = floor(fraction*N)`` frames are cut into chunks of
    ``c = max(1, min(3, floor(n/2)))`` that alternate val, test, val, ...; the leftover goes to
    test if the last chunk went to val, otherwise it is halved (test first). Train is every
    frame from ``n`` on. N = 61 gives val {0,1,2,6,7,8}, test {3,4,5,9,10,11}.
    """
    if n_frames < 1:
        raise InputError("cannot split an empty dataset")
    n = int(n_frames * fraction)
    val: list[int] = []
    test: list[int] = []
    if n > 0:
        c = max(1, min(3, n // 2))
        n_chunks = n // c
        for j in range(n_chunks):
            (val if j % 2 == 0 else test).extend(range(j * c, (j + 1) * c))
        rest = list(range(n_chunks * c, n))
        last_to_val = n_chunks > 0 and (n_chunks - 1) % 2 == 0
        if last_to_val:
            test.extend(rest)
        else:
            half = len(rest) // 2
            test.extend(rest[:half])
            val.extend(rest[half:])
    train = list(range(n, n_frames))
    return Split(train=train, val=sorted(val), test=sorted(test))


def hagen_split(n_frames: int) -> Split:
    """Two-file (Hagen et al.) rule: test = first 10 %, val = next 10 %, train = the rest."""
    k = int(0.1 * n_frames)
    return Split(train=list(range(2 * k, n_frames)), val=list(range(k, 2 * k)),
                 test=list(range(k)))


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write the split as JSON (temporary name, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(split.to_dict(), indent=1))
    return path


def load_split(path: str | os.PathLike) -> Split:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file {path} does not exist")
    try:
        return Split.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise InputError(f"split file {path} is not valid JSON ({e.msg})") from None


def _signal_fractions(frame: np.ndarray, axis: int, length: int, starts: Sequence[int]):
    """For each band ``[s, s + length)`` along ``axis`` of ``frame`` (H, W, T): the fraction of
    its pixels above each channel's signal threshold, shape (len(starts), T).

    A channel's threshold is its median plus a fifth of the way to its 99.9th percentile: above
    the (often constant) background floor of real data, below the bright structures.
    """
    t = frame.shape[-1]
    flat = frame.reshape(-1, t)
    med = np.median(flat, axis=0)
    top = np.quantile(flat, 0.999, axis=0)
    above = frame > (med + 0.2 * (top - med))  # (H, W, T)
    prof = above.sum(axis=1 - axis)  # (L, T): signal pixels per row (axis 0) or column
    csum = np.concatenate([np.zeros((1, t)), np.cumsum(prof, axis=0)])
    other = frame.shape[1 - axis]
    return np.stack([(csum[s + length] - csum[s]) / (length * other) for s in starts])


def spatial_split(
    shapes: Sequence[tuple[int, int]],
    patch: int,
    frames=None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    channel_names: Sequence[str] | None = None,
) -> tuple[Split, list[str]]:
    """Hold out validation and test as bands of frames (for data with too few frames).

    Each band spans a frame's full width (or full height, for frames wider than tall), is a
    multiple of the patch size ``P`` long and starts on the ``P`` grid. The validation band
    takes about ``val_fraction`` of all pixels, the test band ``test_fraction`` (0 for none),
    both in the largest frame when it has room (at least one patch of training rows must stay),
    the test band otherwise in the next largest. Among the possible positions, the validation
    band is the one whose least-covered channel holds the most signal (pixels above the
    channel's background), so that its metrics mean something in every channel; then the test
    band likewise.

    Parameters
    ----------
    shapes : sequence of (int, int)
        ``(H, W)`` of every frame.
    patch : int
    frames : callable, optional
        ``frames(i)`` -> frame ``i`` as ``(H, W, T)``, to place the bands where the signal is;
        without it the bands are the last rows of the frame.
    val_fraction, test_fraction : float

    Returns
    -------
    split : Split
        Every frame trains; the bands are ``val_regions`` / ``test_regions``.
    warnings : list of str
        Messages for the user (e.g. a channel without signal in the validation band).
    """
    if not shapes:
        raise InputError("cannot split an empty dataset")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1:
        raise InputError(f"val/test fractions must be in (0, 1) and [0, 1), got "
                         f"{val_fraction}, {test_fraction}")
    p = int(patch)
    area = sum(h * w for h, w in shapes)
    order = sorted(range(len(shapes)), key=lambda i: (-shapes[i][0] * shapes[i][1], i))
    notes: list[str] = []

    def geometry(i):
        h, w = shapes[i]
        return (0, h, w) if h >= w else (1, w, h)  # (axis, length along it, other side)

    def band_len(i, fraction):
        _, length, other = geometry(i)
        return max(p, math.ceil(fraction * area / other / p) * p)

    host = order[0]
    _, length, _ = geometry(host)
    if length < 2 * p:
        h, w = shapes[host]
        raise InputError(
            f"the largest frame ({h}x{w}) is too small to hold out a validation region: a "
            f"spatial split needs at least 2 patches ({2 * p} px) along its longer side"
        )
    lv = min(band_len(host, val_fraction), max(p, (length - p) // p * p))
    lt = band_len(host, test_fraction) if test_fraction > 0 else 0
    test_host = host
    if lt and lv + lt + p > length:
        second = next((i for i in order[1:] if geometry(i)[1] >= 2 * p), None)
        if second is not None:
            test_host = second
            _, l2, _ = geometry(second)
            lt = min(band_len(second, test_fraction), (l2 - p) // p * p)
        elif length >= 3 * p:
            lv = lt = max(p, (length - p) // (2 * p) * p)
        else:
            notes.append(f"no test region: the frame ({shapes[host][0]}x{shapes[host][1]}) "
                         f"has room for a validation region only")
            lt = 0

    cache: dict[int, np.ndarray] = {}

    def scores(i, blen, starts):
        if frames is None:
            return np.asarray(starts, dtype=float)[:, None]  # prefer the last positions
        if i not in cache:
            cache[i] = np.asarray(frames(i), dtype=np.float32)
        return _signal_fractions(cache[i], geometry(i)[0], blen, starts)

    def region(i, start, blen):
        axis, _, _ = geometry(i)
        h, w = shapes[i]
        if axis == 0:
            return Region(i, (start, start + blen), (0, w))
        return Region(i, (0, h), (start, start + blen))

    def training_room(i, taken):
        """Longest run along the cut axis of frame i left after the bands ``taken``."""
        _, length_i, _ = geometry(i)
        free = np.ones(length_i, dtype=bool)
        for s, bl in taken:
            free[s:s + bl] = False
        best = run = 0
        for f in free:
            run = run + 1 if f else 0
            best = max(best, run)
        return best

    def place(i, blen, taken):
        _, length_i, _ = geometry(i)
        starts = [s for s in range(0, length_i - blen + 1, p)
                  if all(s + blen <= t0 or t0 + tl <= s for t0, tl in taken)
                  and training_room(i, taken + [(s, blen)]) >= p]
        if not starts:
            return None, None
        sc = scores(i, blen, starts)
        least, total = sc.min(axis=1), sc.sum(axis=1)
        best = max(range(len(starts)), key=lambda k: (least[k], total[k], starts[k]))
        return starts[best], sc[best]

    start_v, sig_v = place(host, lv, [])
    if start_v is None:
        raise InputError("no room for a validation region that leaves a training patch")
    val_r = region(host, start_v, lv)
    test_r = None
    if lt:
        taken = [(start_v, lv)] if test_host == host else []
        start_t, _ = place(test_host, lt, taken)
        if start_t is None:
            notes.append("no test region: no room left beside the validation region")
        else:
            test_r = region(test_host, start_t, lt)
    if frames is not None and sig_v is not None:
        for k, frac in enumerate(sig_v):
            if frac <= 0:
                name = channel_names[k] if channel_names else f"channel {k}"
                notes.append(f"the validation region ({val_r.describe(shapes[host])}) holds no "
                             f"signal in {name}: its metrics for that channel are skipped")
    split = Split(train=list(range(len(shapes))), val=[], test=[], val_regions=(val_r,),
                  test_regions=(test_r,) if test_r is not None else ())
    return split.validate(len(shapes), "spatial split", shapes=shapes), notes
