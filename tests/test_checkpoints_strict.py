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


# -- the two other users of the one report: Splitter.load and the encoder transfer ---------
def _checkpoint(tmp_path, edit):
    from musplit.checkpoints.format import save_checkpoint
    from musplit.config import Config
    from musplit.models import build

    config = Config.validated({"model": dict(kind="hvae", lc="lean", filters=8, z_dims=[4, 4],
                                             scales=2, patch=16, dropout=0.0),
                               "data": {"patch": 16}})
    state = build(config.model).state_dict()
    edit(state)
    return save_checkpoint(tmp_path / "m.ckpt", state_dict=state,
                           config=config.model_dump(mode="json"), stats=None)


def test_splitter_load_names_every_kind_of_mismatch(tmp_path):
    from musplit.splitter import Splitter

    def edit(state):
        first, second = list(state)[:2]
        edit.seen = first, second, tuple(state[second].shape)
        state.pop(first)
        state["extra.weight"] = torch.zeros(1)
        state[second] = torch.zeros(7)

    path = _checkpoint(tmp_path, edit)
    first, second, shape = edit.seen
    with pytest.raises(CheckpointError) as err:
        Splitter.load(path)
    assert str(err.value) == (
        f"checkpoint {path} does not match its model (missing {first}; unexpected "
        f"extra.weight; shape mismatch {second} (7,) vs expected {shape})")
    assert Splitter.load(_checkpoint(tmp_path, lambda state: None)).model is not None


def test_load_encoder_summarises_the_mismatch():
    from musplit.pretrain.transfer import load_encoder

    class Net(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(2, n), nn.Linear(n, 1))

    net = Net(3)
    state = {k: v.clone() for k, v in Net(4).encoder.state_dict().items()}
    state.pop("1.bias")
    state["9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_encoder(net, state)
    assert str(err.value) == (
        "encoder weights do not match the model: 1 missing (e.g. 1.bias); 1 unexpected "
        "(e.g. 9.weight); 3 shape mismatches (e.g. 0.bias: (4,) vs (3,))")
    report = load_encoder(net, state, strict=False)
    assert report.missing == ["1.bias"] and report.unexpected == ["9.weight"]
    assert report.shape_mismatch == ["0.bias", "0.weight", "1.weight"] and report.loaded == []
