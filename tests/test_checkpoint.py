import collections

import pytest
import torch

from musplit import __version__
from musplit.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint, weights_sha256
from musplit.config import preset
from musplit.errors import CheckpointError


def _sd():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.zeros(3),
            "bn.num_batches_tracked": torch.tensor(5)}


def test_round_trip_is_self_describing(tmp_path):
    cfg = preset("cpu-small").model_dump(mode="json")
    stats = {"clip_max": 1.0, "input_mean": 0.1, "input_std": 2.0, "target_mean": [0.0, 1.0],
             "target_std": [1.0, 2.0], "alpha": [0.5, 0.5]}
    p = save_checkpoint(tmp_path / "m.ckpt", state_dict=_sd(), config=cfg, stats=stats,
                        extra={"split": {"train": [1, 2]}})
    assert [x.name for x in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary left behind
    payload = load_checkpoint(p)
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["musplit_version"] == __version__
    assert payload["config"] == cfg and payload["stats"] == stats
    assert payload["extra"]["weights_sha256"] == weights_sha256(_sd())
    for k, v in _sd().items():
        assert torch.equal(payload["state_dict"][k], v)


def test_hash_depends_on_values():
    a = _sd()
    b = _sd()
    b["a.bias"][0] = 1.0
    assert weights_sha256(a) != weights_sha256(b)


class Evil:  # a custom class must never be unpickled from a checkpoint
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_and_broken_files_are_refused(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"format_version": 1, "musplit_version": "0", "config": {}, "state_dict": {},
                "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(evil)

    good = save_checkpoint(tmp_path / "g.ckpt", state_dict=_sd(), config={}, stats=None)
    data = good.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(cut)

    # Not a checkpoint at all (a text file): the legacy unpickler raises KeyError on it.
    text = tmp_path / "notes.ckpt"
    text.write_text("hello world\n")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(text)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")

    lightning_like = tmp_path / "ref.ckpt"
    torch.save({"state_dict": collections.OrderedDict(_sd()), "epoch": 3}, lightning_like)
    with pytest.raises(CheckpointError, match="import-official"):
        load_checkpoint(lightning_like)

    newer = tmp_path / "newer.ckpt"
    torch.save({"format_version": FORMAT_VERSION + 1, "musplit_version": "9.0",
                "config": {}, "state_dict": {}}, newer)
    with pytest.raises(CheckpointError, match="upgrade musplit"):
        load_checkpoint(newer)
