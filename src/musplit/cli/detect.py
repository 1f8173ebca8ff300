"""``musplit synth ...`` and ``musplit detect ...``: synthetic cells and the PCMC cell detector
(docs/detection.md).

Attached to the group in :mod:`musplit.cli.app`. User mistakes raise
:class:`musplit.errors.MusplitError` subclasses, which ``musplit.cli.main`` prints as one line
with exit status 2.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click
import numpy as np

from musplit.cli.aliases import renamed
from musplit.cli.detect_data import read_inputs, read_pairs
from musplit.cli.outputs import write_json, write_text
from musplit.errors import InputError

# Lazy-import policy (musplit.cli): modules that load torch, lightning, pydantic configs,
# tifffile/zarr or scipy are imported inside the commands, so that ``musplit --help`` starts fast.


def _load_config(path: Path | None) -> dict:
    from musplit.config import read_yaml_mapping  # pydantic, torch

    return {} if path is None else read_yaml_mapping(path)


# -- synth ---------------------------------------------------------------------------------
@click.group()
def synth() -> None:
    """Synthetic fluorescence cells with exact instance masks (six presets)."""


@synth.command("generate")
@click.option("--preset", default="sim_nuclei", show_default=True,
              help="sim_nuclei, dense_small_nuclei, hetero_lowsnr_nuclei, "
                   "large_elongated_cells, single_cell_filopodia or cyto_halo_cells.")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--namespace", default="detect-train", show_default=True,
              help="pretrain, detect-train/-val/-test, split-pool/-train/-val/-test.")
@click.option("--size", type=click.IntRange(min=32), default=None,
              help="Frame side (default: the preset's 384).")
@click.option("--dtype", type=click.Choice(["uint16", "uint8"]), default="uint16",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Output folder (images/, labels/, meta/, manifest.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset.")
def synth_generate(preset, frames, seed, namespace, size, dtype, out_dir, overwrite):
    """Render frames and instance masks as TIFFs with a checksummed manifest."""
    from musplit.detect.dataset import write_dataset  # scipy
    from musplit.pretrain.config import SynthDatasetConfig, validated  # pydantic

    cfg = validated(SynthDatasetConfig, {"preset": preset, "frames": frames, "seed": seed,
                                         "namespace": namespace, "size": size, "dtype": dtype},
                    source="synth generate")
    man = write_dataset(out_dir, cfg, overwrite=overwrite)
    click.echo(f"wrote {frames} frames of {preset} to {out_dir} (manifest {man.name})")


@synth.command("verify")
@click.argument("folder", type=click.Path(path_type=Path))
def synth_verify(folder):
    """Regenerate a dataset written by synth generate and compare checksums."""
    from musplit.detect.dataset import verify_dataset  # scipy

    problems = verify_dataset(folder)
    if problems:
        for p in problems[:20]:
            click.echo(p, err=True)
        raise InputError(f"{folder}: {len(problems)} file(s) differ from the manifest")
    click.echo(f"{folder}: ok")


# -- detect --------------------------------------------------------------------------------
@click.group()
def detect() -> None:
    """Centroid-heatmap cell detector (CCFViT / CellCentroidFormer): train, predict, evaluate."""


@detect.command("train")
@renamed("--steps", "--max-steps", type=click.IntRange(min=1))
@renamed("--batch", "--batch-size", type=click.IntRange(min=1))
@renamed("--init", "--init-from", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Training frames: images/ + labels/ (as synth generate writes) or a Cell "
                   "Tracking Challenge folder.")
@click.option("--val", "val_dir", type=click.Path(path_type=Path), default=None,
              help="Frames scored (clean mode) after training, for monitoring (default: none).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Run folder: detector.ckpt, train_log.json, config.json.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="DetectionConfig as YAML/JSON (model sizes, loss, optimiser, decoding; "
                   "default: the built-in one).")
@click.option("--model", type=click.Choice(["ccf_vit", "ccf_cnn"]), default=None,
              help="Detector architecture (default: the config's, ccf_vit).")
@click.option("--init-from", "init_path", type=click.Path(path_type=Path), default=None,
              help="Checkpoint with pre-trained encoder weights (strict load; default: none, "
                   "train from scratch).")
@click.option("--init-scope", type=click.Choice(["auto", "encoder", "all"]), default="auto",
              show_default=True, help="'all': a CNN pretext model minus its final convs.")
@click.option("--max-steps", "steps", type=click.IntRange(min=1), default=None,
              help="Training steps (default: the config's, 4000).")
@click.option("--batch-size", "batch", type=click.IntRange(min=1), default=None,
              help="Batch size (default: the config's, 8).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate (default: the config's, 1e-4).")
@click.option("--label-fraction", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed (default: the config's, 0).")
@click.option("--backbone-frozen", is_flag=True, default=None,
              help="Stem and backbone frozen (linear-probe-like protocol).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
def detect_train(data_dir, val_dir, out_dir, config_path, model, init_path, init_scope, steps,
                 batch, lr, label_fraction, seed, backbone_frozen, overwrite):
    """Fine-tune a detector on frames with instance masks."""
    from musplit.detect.checkpoint import save_detector  # torch
    from musplit.detect.evaluate import evaluate_detector
    from musplit.detect.train import train_detector
    from musplit.pretrain.config import DetectionConfig, validated  # pydantic

    data = _load_config(config_path)
    for k, v in (("model", model), ("steps", steps), ("batch", batch), ("lr", lr),
                 ("seed", seed), ("backbone_frozen", backbone_frozen)):
        if v is not None:
            data[k] = v
    cfg = validated(DetectionConfig, data, source=str(config_path or "detect train"))
    ckpt = out_dir / "detector.ckpt"
    if ckpt.exists() and not overwrite:
        raise InputError(f"{ckpt} exists; pass --overwrite to replace it")
    images, labels, _ = read_pairs(data_dir, size=cfg.image_size)
    model_, log = train_detector(images, labels, cfg, init=init_path, init_scope=init_scope,
                                 label_fraction=label_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"data": str(data_dir), "init": str(init_path) if init_path else None,
              "label_fraction": label_fraction, "subset": log["subset"],
              "load_report": log["load_report"], "final_loss": log["loss"][-1],
              "steps": cfg.steps}
    if val_dir is not None:
        vi, vl, _ = read_pairs(val_dir, size=cfg.image_size)
        record["val"] = evaluate_detector(model_, vi, vl, cfg=cfg)
    write_json(out_dir / "train_log.json", log)
    write_json(out_dir / "config.json", cfg.model_dump(mode="json"))
    save_detector(ckpt, model_, cfg, extra=record)
    click.echo(f"trained {cfg.model} for {cfg.steps} steps on {len(log['subset'])} frames "
               f"(final loss {log['loss'][-1]:.4g}); wrote {ckpt}")


@detect.command("predict")
@click.option("--model", "ckpt", type=click.Path(path_type=Path), required=True,
              help="Detector checkpoint from musplit detect train.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder for boxes.csv and boxes.json.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decoding threshold (default: the checkpoint's, 0.75).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
def detect_predict(ckpt, inputs, out_dir, threshold, batch_size):
    """Detect cells in TIFF frames (files, stacks or folders); boxes in input pixels."""
    from musplit.detect.checkpoint import load_detector  # torch
    from musplit.detect.evaluate import predict

    model, cfg, _ = load_detector(ckpt)
    frames, names = read_inputs(inputs)
    rows, per_frame = [], []
    for frame, name in zip(frames, names, strict=True):
        if frame.ndim != 2:
            raise InputError(f"{name}: expected a 2-D frame")
        res = predict(model, frame[None], cfg, threshold=threshold, batch_size=batch_size)[0]
        sy, sx = frame.shape[0] / cfg.image_size, frame.shape[1] / cfg.image_size
        boxes = res["boxes"] * np.array([sx, sy, sx, sy])
        entry = {"frame": name, "shape": list(frame.shape), "boxes": boxes.tolist(),
                 "scores": res["scores"].tolist()}
        per_frame.append(entry)
        for b, s in zip(boxes, res["scores"], strict=True):
            rows.append([name, *(round(float(v), 3) for v in b), round(float(s), 5)])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["frame", "x", "y", "w", "h", "score"])
    w.writerows(rows)
    write_text(out_dir / "boxes.csv", buf.getvalue())
    write_json(out_dir / "boxes.json", {"checkpoint": str(ckpt), "box_format": "xywh",
                                         "mode": cfg.mode, "frames": per_frame})
    click.echo(f"{len(rows)} cells in {len(frames)} frame(s); wrote {out_dir / 'boxes.csv'}")


def _evaluate(ckpt, data_dir, out, reference, batch_size):
    from musplit.detect.checkpoint import load_detector  # torch
    from musplit.detect.evaluate import evaluate_detector

    model, cfg, _ = load_detector(ckpt)
    images, labels, _ = read_pairs(data_dir, size=cfg.image_size)
    res = evaluate_detector(model, images, labels, reference_mode=reference, cfg=cfg,
                            batch_size=batch_size)
    res.update({"checkpoint": str(ckpt), "data": str(data_dir)})
    if out is not None:
        write_json(out, res)
    click.echo(" ".join(f"{k}={res[k]:.4f}" for k in ("map", "map_50", "map_75", "f1_50")) +
               f" ({res['mode']} mode, {res['n_images']} frames, {res['n_gt']} cells)")


_EVAL_OPTIONS = [
    click.option("--model", "ckpt", type=click.Path(path_type=Path), required=True),
    click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
                 help="Test frames with instance masks (same layouts as detect train)."),
    click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Write the metrics as JSON (default: print them only)."),
    click.option("--reference-mode", "--reference", "reference", is_flag=True,
                 help="Reference-compatible evaluation (GT decoded from target maps, scores "
                      "1, max_dets 1/10/100) instead of the clean protocol."),
    click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True),
]


def _with_eval_options(f):
    for opt in reversed(_EVAL_OPTIONS):
        f = opt(f)
    return f


@detect.command("evaluate")
@_with_eval_options
def detect_evaluate(ckpt, data_dir, out, reference, batch_size):
    """COCO box mAP, F1 at IoU 0.5 and heatmap IoU on frames with instance masks."""
    _evaluate(ckpt, data_dir, out, reference, batch_size)


@detect.command("eval")
@_with_eval_options
def detect_eval(ckpt, data_dir, out, reference, batch_size):
    """Same as detect evaluate (the shorter name)."""
    _evaluate(ckpt, data_dir, out, reference, batch_size)


__all__ = ["detect", "synth"]
