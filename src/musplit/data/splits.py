"""Train / validation / test splits by frame (spec/usplit.md section 5.2)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from musplit.errors import InputError


@dataclass(frozen=True)
class Split:
    """Frame indices of the three splits."""

    train: list[int]
    val: list[int]
    test: list[int]

    def to_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        try:
            return cls(*(sorted(int(i) for i in d[k]) for k in ("train", "val", "test")))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"a split needs integer lists 'train', 'val', 'test' ({e})") from None

    def validate(self, n_frames: int, source: str = "split") -> Split:
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
        return self


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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(split.to_dict(), indent=1))
    os.replace(tmp, path)
    return path


def load_split(path: str | os.PathLike) -> Split:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file {path} does not exist")
    try:
        return Split.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise InputError(f"split file {path} is not valid JSON ({e.msg})") from None
