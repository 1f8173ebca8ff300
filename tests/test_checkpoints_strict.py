"""Strict loading with one mismatch report, and the one atomic write (musplit.checkpoints)."""

import pytest
import torch
from torch import nn

from musplit.checkpoints.format import _atomic_write
from musplit.checkpoints.strict import (
    compare_state,
    load_strict,
    mismatch_report,
    mismatch_summary,
)
from musplit.errors import CheckpointError


def _state():
    return {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1, 2)}


def test_compare_state_finds_every_kind_of_mismatch():
    own = _state()
    given = {"b": torch.zeros(4), "c": torch.zeros(1, 2), "z": torch.zeros(1)}
    m = compare_state(own, given)
    assert m and m.missing == ["a"] and m.unexpected == ["z"] and m.shapes == [("b", (4,), (3,))]
    assert not compare_state(own, dict(own))
    # wanted keys only: the rest of `own` is neither missing nor compared
    m = compare_state(own, {"a": torch.zeros(2), "c": torch.zeros(2)}, ["a"])
    assert not m.missing and m.unexpected == ["c"] and not m.shapes
    assert compare_state(own, {"y": own["a"], "x": own["a"]}, sort=True).unexpected == ["x", "y"]


def test_reports():
    own = _state()
    m = compare_state(own, {"b": torch.zeros(4), "c": torch.zeros(1, 2), "z": torch.zeros(1)})
    assert mismatch_report(m) == "missing a; unexpected z; shape mismatch b (4,) vs expected (3,)"
    assert mismatch_report(m, rename=lambda ks: [k.upper() for k in ks]) == \
        "missing A; unexpected Z; shape mismatch B (4,) vs expected (3,)"
    assert mismatch_summary(m) == ("1 missing (e.g. a); 1 unexpected (e.g. z); "
                                   "1 shape mismatches (e.g. b: (4,) vs (3,))")


def test_load_strict():
    model = nn.Linear(2, 3)
    good = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    load_strict(model, good, what="nope")
    assert torch.equal(model.weight, torch.ones(3, 2))
    with pytest.raises(CheckpointError, match=r"^nope: missing bias$"):
        load_strict(model, {"weight": good["weight"]}, what="nope")


def test_atomic_write_leaves_nothing_behind(tmp_path):
    out = _atomic_write(tmp_path / "sub" / "r.json", lambda p: p.write_text("{}"))
    assert out.read_text() == "{}"

    def fail(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        _atomic_write(tmp_path / "sub" / "r.json", fail)
    assert out.read_text() == "{}"
    assert sorted(x.name for x in (tmp_path / "sub").iterdir()) == ["r.json"]
