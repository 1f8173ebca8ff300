"""``musplit synth`` and ``musplit detect`` end to end on tiny data (spec/pcmc.md §14, §15).

Item 14 of the test plan, detection half: 128^2 frames, a ViT with dim 64 and depth 2,
initialised from a (PcolorMAE) encoder, fine-tuned 20 steps, then predict and evaluate.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
import yaml

from musplit.cli import main
from musplit.pretrain.config import ViTConfig
from musplit.pretrain.models import PcolorMAE, encoder_state_dict

torch.set_num_threads(1)

TINY = {"vit": {"vit": {"image_size": 128, "patch_size": 8, "dim": 64, "depth": 2, "heads": 4,
                        "dim_head": 16, "mlp_dim": 128},
                "neck_dim": 32, "mvit_patch": 4, "mvit_mlp_dim": 64},
        "lr": 0.001, "batch": 3}


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    for ns in ("detect-train", "detect-test"):
        assert main(["synth", "generate", "--preset", "sim_nuclei", "--frames", "3", "--size",
                     "128", "--namespace", ns, "--out", str(root / ns)]) == 0
    return root


def test_synth_generate_and_verify(data, capsys, tmp_path):
    ds = data / "detect-train"
    assert sorted(p.name for p in (ds / "images").iterdir()) == ["000000.tif", "000001.tif",
                                                                 "000002.tif"]
    lab = tifffile.imread(ds / "labels" / "000000.tif")
    assert lab.dtype == np.uint16 and lab.shape == (128, 128) and lab.max() >= 1
    rc, out, _ = run(["synth", "verify", ds], capsys)
    assert rc == 0 and "ok" in out
    # a changed file is reported, with exit status 2 and no traceback
    bad = tmp_path / "bad"
    assert main(["synth", "generate", "--frames", "1", "--size", "64", "--out", str(bad)]) == 0
    tifffile.imwrite(bad / "images" / "000000.tif", np.zeros((64, 64), np.uint16))
    rc, _, err = run(["synth", "verify", bad], capsys)
    assert rc == 2 and "images/000000.tif" in err and "Traceback" not in err
    rc, _, err = run(["synth", "generate", "--preset", "nope", "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "unknown preset" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(["synth", "generate", "--size", "64", "--out", bad], capsys)
    assert rc == 2 and "exists" in err


def test_detect_train_predict_evaluate_with_pretrained_init(data, capsys, tmp_path):
    cfg = tmp_path / "det.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    torch.manual_seed(0)
    mae = PcolorMAE(vit=ViTConfig(**TINY["vit"]["vit"]), decoder_dim=64, decoder_depth=1,
                    decoder_heads=4, decoder_dim_head=16, decoder_mlp_dim=128)
    init = tmp_path / "pretrained.pt"
    torch.save({"encoder_state_dict": encoder_state_dict(mae)}, init)
    run_dir = tmp_path / "run"
    rc, out, err = run(["detect", "train", "--data", data / "detect-train", "--val",
                        data / "detect-test", "--out", run_dir, "--config", cfg, "--max-steps", 20,
                        "--init-from", init, "--seed", 1], capsys)
    assert rc == 0, err
    assert (run_dir / "detector.ckpt").is_file() and "wrote" in out
    assert not list(run_dir.glob(".*tmp*"))  # atomic writes leave no temporaries
    log = json.loads((run_dir / "train_log.json").read_text())
    assert len(log["loss"]) == 20 and log["load_report"]["missing"] == []
    assert np.mean(log["loss"][-5:]) < np.mean(log["loss"][:5])
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 1

    rc, out, err = run(["detect", "predict", "--model", run_dir / "detector.ckpt",
                        data / "detect-test", "--out", tmp_path / "pred", "--threshold", 0.1],
                       capsys)
    assert rc == 0, err
    with open(tmp_path / "pred" / "boxes.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "x", "y", "w", "h", "score"]
    boxes = json.loads((tmp_path / "pred" / "boxes.json").read_text())
    assert [fr["frame"] for fr in boxes["frames"]] == ["000000.tif", "000001.tif", "000002.tif"]
    assert len(rows) - 1 == sum(len(fr["boxes"]) for fr in boxes["frames"])

    for flag, mode in ((), "clean"), (("--reference-mode",), "reference"):
        metrics = tmp_path / f"metrics_{mode}.json"
        rc, out, err = run(["detect", "evaluate", "--model", run_dir / "detector.ckpt",
                            "--data", data / "detect-test", "--out", metrics, *flag], capsys)
        assert rc == 0, err
        m = json.loads(metrics.read_text())
        assert m["mode"] == mode and 0.0 <= m["map"] <= 1.0 and "map_50" in m
        assert m["n_images"] == 3 and f"{mode} mode" in out
    assert json.loads((tmp_path / "metrics_reference.json").read_text())["max_dets"] == [1, 10,
                                                                                           100]
    rc, _, err = run(["detect", "eval", "--model", run_dir / "detector.ckpt", "--data",
                      data / "detect-test"], capsys)
    assert rc == 0, err


def test_detect_user_errors_are_one_line(data, capsys, tmp_path):
    cfg = tmp_path / "det.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "no_such_option": 1}))
    cases = [
        ["detect", "train", "--data", tmp_path / "missing", "--out", tmp_path / "r"],
        ["detect", "train", "--data", data / "detect-train", "--out", tmp_path / "r",
         "--config", cfg],
        ["detect", "predict", "--model", tmp_path / "none.ckpt", data / "detect-test", "--out",
         tmp_path / "p"],
        ["detect", "evaluate", "--model", data / "detect-test" / "manifest.json", "--data",
         data / "detect-test"],
    ]
    for argv in cases:
        rc, _, err = run(argv, capsys)
        assert rc == 2, argv
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # an init checkpoint that does not fit the model is refused before training
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**TINY, "steps": 1}))
    init = tmp_path / "other.pt"
    torch.save({"state_dict": {"stem.h_r.0.weight": torch.zeros(3)}}, init)
    rc, _, err = run(["detect", "train", "--data", data / "detect-train", "--out",
                      tmp_path / "r", "--config", good, "--init-from", init], capsys)
    assert rc == 2 and "do not match" in err
    # images without labels of the same name
    (tmp_path / "unpaired" / "images").mkdir(parents=True)
    (tmp_path / "unpaired" / "labels").mkdir()
    tifffile.imwrite(tmp_path / "unpaired" / "images" / "a.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "unpaired" / "labels" / "b.tif", np.zeros((8, 8), np.uint16))
    rc, _, err = run(["detect", "train", "--data", tmp_path / "unpaired", "--out",
                      tmp_path / "r", "--config", good], capsys)
    assert rc == 2 and "pair by name" in err
