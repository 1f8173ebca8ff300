"""``musplit pretrain`` and ``musplit train --init-from`` through the command line."""

import json

import yaml

from musplit.cli import main
from musplit.pretrain.train import load_pretrained


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tiny_config(path, data_file):
    cfg = {
        "name": "pre-e2e",
        "data": {"path": str(data_file), "channels": [0, 1], "patch": 32, "pad": "zeros"},
        "model": {"kind": "hvae", "lc": "lean", "filters": 8, "z_dims": [4, 4], "scales": 3,
                  "patch": 32, "dropout": 0.0},
        "train": {"batch_size": 4, "max_steps": 3, "val_every_steps": 3},
        "predict": {"grid": 16, "batch_size": 32},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pretrain_then_train_init_from(tmp_path, capsys):
    data = tmp_path / "data"
    code, _, err = run(["generate", "critters", "--frames", "10", "--size", "64", "--out", data],
                       capsys)
    assert code == 0, err
    cfg = _tiny_config(tmp_path / "cfg.yaml", data / "critters.tif")
    pre = tmp_path / "pre"
    args = ["pretrain", "--usplit-config", cfg, "--data", data / "critters.tif",
            "--mix-channels", "--max-steps", "20", "--batch-size", "4", "--lr", "0.02",
            "--no-progress", "--out", pre]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "pre-trained usplit_encoder (pcolor, scope encoder) for 20 steps" in out
    res = load_pretrained(pre / "pretrained.ckpt")
    assert res.steps == 20 and len(res.log) == 20
    assert sum(res.log[-5:]) < sum(res.log[:5])
    assert (pre / "pretrain_config.yaml").is_file()
    assert (pre / "pretrain_log.csv").read_text().startswith("step,loss\n0,")
    # refuses to overwrite
    code, _, err = run(args, capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err

    runs = tmp_path / "run"
    code, out, err = run(["train", "--config", cfg, "--init-from", pre / "pretrained.ckpt",
                          "--out", runs], capsys)
    assert code == 0, err
    report = json.loads((runs / "init_report.json").read_text())
    assert report["missing"] == [] and report["objective"] == "pcolor"
    assert report["unused"] == res.head_keys and report["loaded"] == len(res.encoder_state)
    assert yaml.safe_load((runs / "config.yaml").read_text())["train"]["init_from"] == \
        str(pre / "pretrained.ckpt")
    # a file that is not a pre-training checkpoint: one line, exit 2
    (tmp_path / "junk.ckpt").write_text("junk")
    for bad in (tmp_path / "junk.ckpt", runs / "best.ckpt"):
        code, _, err = run(["train", "--config", cfg, "--init-from", bad, "--out",
                            tmp_path / "r2"], capsys)
        assert code == 2 and "checkpoint" in err and "Traceback" not in err


def test_user_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        (["pretrain", "--max-steps", "2", "--out", out], "exactly one of --data"),
        (["pretrain", "--synthetic", "nope", "--max-steps", "2", "--out", out],
         "unknown synthetic"),
        (["pretrain", "--model", "ccf_vit", "--synthetic", "sim_nuclei", "--mask-p", "0.7",
          "--max-steps", "2", "--out", out], "padded masks"),
        (["pretrain", "--data", tmp_path / "missing.tif", "--max-steps", "2", "--out", out], ""),
        (["pretrain", "--synthetic", "sim_nuclei", "--out", out], "--max-steps"),
    ]
    for args, msg in cases:
        code, _, err = run(args, capsys)
        assert code == 2, (args, err)
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pretrain_synthetic_vit(tmp_path, capsys):
    code, out, err = run(["pretrain", "--model", "ccf_vit", "--synthetic", "sim_nuclei",
                          "--frames", "2", "--size", "64", "--image-size", "64",
                          "--config", _vit_yaml(tmp_path / "vit.yaml"), "--max-steps", "2",
                          "--out", tmp_path / "v"], capsys)
    assert code == 0, err
    res = load_pretrained(tmp_path / "v" / "pretrained.ckpt")
    assert res.config.model == "ccf_vit" and res.config.image_size == 64 and res.steps == 2
    assert res.extra["data_source"].startswith("synthetic:sim_nuclei")


def _vit_yaml(path):
    path.write_text(yaml.safe_dump({
        "model": "ccf_vit", "batch_size": 2,
        "vit": {"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 16},
        "pretext": {"objective": "pcolor", "decoder_dim": 16, "decoder_depth": 1,
                    "decoder_heads": 2, "decoder_dim_head": 8, "decoder_mlp_dim": 16}}))
    return path
