"""Pseudo-colorize masked cells (PCMC, issue 7): pre-training objectives compared on detection
and on µSplit splitting, everything scaled from one CPU budget (spec/pcmc.md §12, §13.7).

**Detection** (§12, scaled down). One small detector for every initialisation: CCFViT (the
spec's primary variant) at ``--image-size`` (128²) with a tiny ViT (patch 8, dim 64, depth 2)
and a tiny MobileViT neck. Each objective, pcolor (PCMC), pcolor without masks (ablation A1),
MAE-like, edge and SimCLR, pre-trains that ViT for the same number of steps on the same
unlabelled pool (frames of every synthetic preset but the held-out one, labels unused) with
the same seed. Random init skips pre-training. Every initialisation is then fine-tuned on the
held-out preset (default ``sim_nuclei``) with 1 %, 10 % and 100 % of its labelled training
frames (nested subsets, one seed, the same steps for every fraction) and scored on its test
frames: clean-mode COCO ``map`` and ``map_50`` (§9.6). Frames are generated at
``--frame-size`` and resized to the model's size by the package, as CTC frames are.

**Splitting** (§13.7, scaled down). The demo's µSplit model (``cpu-small``: HVAE Lean-LC, 16
filters, 4 × 16 latents, β-NLL β = 1, patch 64, batch 16) on SinosoidalCritters N25 with the
"shared-low" pairing. Its encoder is pre-trained with pcolor (and MAE-like when the budget
allows, or with ``--split-objectives``) on an unlabelled pool of superimposed frames, then
``musplit.train`` fine-tunes it (``train.init_from``) with N ∈ {1, 4} labelled frames; random
init gets identical steps, data and seed. The last checkpoint predicts the test frames, scored
as ``bench/reproduce.py`` does: range-invariant PSNR (and SSIM) in normalised target space.

The step counts come from ``--budget-minutes`` (default 20) through a cost model of this
2-core machine (seconds per step measured for each phase, see ``COSTS``); ``--*-steps``
override them. Results go to ``bench/results/pcmc.json`` and ``pcmc.md``, and replace the
section "## Pseudo-colorize masked cells (issue 7)" of BENCHMARKS.md in place.

    .venv/bin/python bench/pcmc.py                       # ~20 min on 2 cores
    .venv/bin/python bench/pcmc.py --budget-minutes 1 --no-benchmarks   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_all  # noqa: E402  (shared helpers of bench/)
from run_all import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
SECTION = "## Pseudo-colorize masked cells (issue 7)"

#: Initialisations of the detection experiment: key -> (label, pretext settings or None).
INITS: dict[str, tuple[str, dict | None]] = {
    "pcolor": ("PCMC (pcolor)", {"objective": "pcolor"}),
    "pcolor-nomask": ("PCMC without masks (A1)", {"objective": "pcolor",
                                                  "mask": {"kind": "none"}}),
    "mae": ("MAE-like", {"objective": "mae"}),
    "edge": ("Edge", {"objective": "edge"}),
    "simclr": ("SimCLR", {"objective": "simclr"}),
    "random": ("Random init", None),
}
FRACTIONS = (0.01, 0.1, 1.0)
SPLIT_LABELS = {"pcolor": "PCMC (pcolor)", "mae": "MAE-like", "masked_gray": "Masked gray",
                "edge": "Edge", "simclr": "SimCLR", "random": "Random init"}
PRESET_EXCLUDED_BY_DEFAULT = "sim_nuclei"

#: Wall seconds on this 2-core machine (shared, so measured under load), per optimiser step
#: at the default sizes, or per run for the fixed parts. The plan divides the budget with them.
COSTS = {
    "det_pretrain_step": {"pcolor": 0.1, "pcolor-nomask": 0.2, "mae": 0.15, "edge": 0.25,
                          "simclr": 0.33},           # ViT-tiny at 128², batch 16
    "det_finetune_step": 0.2,                      # CCFViT-tiny at 128², batch 8
    "det_run": 1.2,                                # Lightning start + evaluation per fine-tune
    "split_pretrain_step": {"pcolor": 0.9, "mae": 1.05, "masked_gray": 0.9, "edge": 0.95,
                            "simclr": 1.2},        # µSplit encoder, patch 64, batch 16
    "split_finetune_step": 0.7,                    # musplit.train, patch 64, batch 16
    "split_run": 6.5,                              # start, validation, prediction of test frames
    "pretrain_run": 1.0,                           # model build, pool normalisation
    "fixed": 20.0,                                 # imports, data generation
}
#: How the budget left after the fixed costs is divided.
SHARES = {"detection": 0.55, "det_pretrain": 0.4, "split_pretrain": 0.3}

log = logging.getLogger("bench.pcmc")


# -- the plan ------------------------------------------------------------------------------
def split_objectives(args) -> list[str]:
    if args.split_objectives:
        return [o.strip() for o in args.split_objectives.split(",") if o.strip()]
    return ["pcolor", "mae"] if args.budget_minutes >= 40 else ["pcolor"]


def plan(args) -> dict:
    """Steps of every phase from the budget (``--*-steps`` override) and the estimated time."""
    c = COSTS
    inits = list(INITS)
    pre = [k for k in inits if INITS[k][1] is not None]
    sobj = split_objectives(args)
    ns = parse_ints(args.split_n)
    n_ft = len(inits) * len(FRACTIONS)
    n_split = (len(sobj) + 1) * len(ns)
    overhead = (c["fixed"] + (len(pre) + len(sobj)) * c["pretrain_run"] + n_ft * c["det_run"]
                + n_split * c["split_run"])
    usable = max(args.budget_minutes * 60.0 - overhead, 1.0)
    det = usable * SHARES["detection"]
    split = usable - det
    pt_cost = sum(c["det_pretrain_step"][k] for k in pre)
    spt_cost = sum(c["split_pretrain_step"].get(o, 1.0) for o in sobj)
    steps = {
        "det_pretrain": args.pretrain_steps or max(
            1, int(det * SHARES["det_pretrain"] / pt_cost)),
        "det_finetune": args.finetune_steps or max(
            1, int(det * (1 - SHARES["det_pretrain"]) / (n_ft * c["det_finetune_step"]))),
        "split_pretrain": args.split_pretrain_steps or max(
            1, int(split * SHARES["split_pretrain"] / spt_cost)),
        "split_finetune": args.split_steps or max(
            1, int(split * (1 - SHARES["split_pretrain"]) / (n_split
                                                             * c["split_finetune_step"]))),
    }
    est = (overhead + steps["det_pretrain"] * pt_cost
           + steps["det_finetune"] * n_ft * c["det_finetune_step"]
           + steps["split_pretrain"] * spt_cost
           + steps["split_finetune"] * n_split * c["split_finetune_step"])
    return {**steps, "split_objectives": sobj, "split_n": ns, "estimated_s": round(est),
            "overhead_s": round(overhead)}


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


# -- detection -----------------------------------------------------------------------------
def vit_settings(args) -> dict:
    """The one detector architecture: tiny ViT + tiny CCFViT neck, and the pretext decoder."""
    from musplit.pretrain.config import CCFViTConfig, ViTConfig

    vit = ViTConfig(image_size=args.image_size, patch_size=8, dim=64, depth=2, heads=4,
                    dim_head=16, mlp_dim=128)
    grid = args.image_size // 8
    ccf = CCFViTConfig(vit=vit, neck_dim=32, mvit_patch=4 if grid % 4 == 0 else 1,
                       mvit_mlp_dim=64)
    decoder = {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4,
               "decoder_dim_head": 16, "decoder_mlp_dim": 128}
    return {"vit": vit, "ccf": ccf, "decoder": decoder}


def detection_data(args) -> dict:
    """Unlabelled pool (every preset but the held-out one), labelled train and test frames."""
    from musplit.pretrain import synth

    pool_presets = [p for p in synth.PRESETS if p != args.held_out]
    pool = np.concatenate([synth.generate(p, args.pool_frames, args.seed, size=args.frame_size,
                                          namespace="pretrain")[0] for p in pool_presets])
    tr_i, tr_l = synth.generate(args.held_out, args.train_frames, args.seed,
                                size=args.frame_size, namespace="detect-train")
    te_i, te_l = synth.generate(args.held_out, args.test_frames, args.seed,
                                size=args.frame_size, namespace="detect-test")
    return {"pool": pool, "pool_presets": pool_presets, "train": (tr_i, tr_l),
            "test": (te_i, te_l)}


def pretrain_detector(name: str, pool: np.ndarray, steps: int, args, arch: dict):
    """Pre-train the ViT with initialisation ``name``; (encoder state or None, record)."""
    from musplit.pretrain.pretext_config import PretrainConfig
    from musplit.pretrain.train import pretrain

    pretext = INITS[name][1]
    if pretext is None:
        return None, {"init": name, "steps": 0}
    cfg = PretrainConfig(model="ccf_vit", image_size=args.image_size, vit=arch["vit"],
                         pretext={**pretext, **arch["decoder"]}, batch_size=args.pretrain_batch,
                         lr=args.pretrain_lr, warmup=0.05, seed=args.seed)
    t0 = time.perf_counter()
    res = pretrain(cfg, pool, steps=steps, seed=args.seed)
    return res.encoder_state, {
        "init": name, "objective": cfg.pretext.objective, "mask": cfg.pretext.mask.kind,
        "steps": res.steps, "seconds": round(time.perf_counter() - t0, 2),
        **_loss_ends(res.log), "skipped_steps": res.extra.get("skipped_steps", 0),
        "data_manifest_sha256": res.data_manifest_sha256}


def _loss_ends(history: list[float]) -> dict:
    h = [v for v in history if math.isfinite(v)]
    if not h:
        return {"loss_first": None, "loss_last": None}
    k = max(1, min(10, len(h) // 4))
    return {"loss_first": float(np.mean(h[:k])), "loss_last": float(np.mean(h[-k:]))}


def run_detection(args, steps: dict, echo) -> dict:
    import torch

    from musplit.pretrain.config import DetectionConfig
    from musplit.pretrain.detection import evaluate_detector, train_detector

    arch = vit_settings(args)
    t0 = time.perf_counter()
    data = detection_data(args)
    gen_s = time.perf_counter() - t0
    tr_i, tr_l = data["train"]
    te_i, te_l = data["test"]
    dcfg = DetectionConfig(model="ccf_vit", vit=arch["ccf"], steps=steps["det_finetune"],
                           batch=args.finetune_batch, lr=args.finetune_lr, seed=args.seed)
    pretrain_rows, rows = [], []
    for name in INITS:
        state, rec = pretrain_detector(name, data["pool"], steps["det_pretrain"], args, arch)
        rec["label"] = INITS[name][0]
        pretrain_rows.append(rec)
        if rec["steps"]:
            echo(f"  pretrain {name}: {rec['steps']} steps, loss {rec['loss_first']:.4g} -> "
                 f"{rec['loss_last']:.4g} ({rec['seconds']:.0f} s)")
        for frac in FRACTIONS:
            t1 = time.perf_counter()
            model, hist = train_detector(tr_i, tr_l, dcfg, encoder_state=state,
                                         label_fraction=frac, accelerator="cpu")
            ft_s = time.perf_counter() - t1
            res = evaluate_detector(model, te_i, te_l)
            row = {"init": name, "label": INITS[name][0], "fraction": frac,
                   "n_labelled": len(hist["subset"]), "subset": hist["subset"],
                   "steps": hist["steps"], "map": float(res["map"]),
                   "map_50": float(res["map_50"]), "map_75": float(res["map_75"]),
                   "f1_50": float(res["f1_50"]), "n_gt": res["n_gt"], "n_pred": res["n_pred"],
                   **{f"ft_{k}": v for k, v in _loss_ends(hist["loss"]).items()},
                   "loaded": (hist["load_report"] or {}).get("loaded", 0),
                   "seconds": round(time.perf_counter() - t1, 2), "finetune_s": round(ft_s, 2)}
            rows.append(row)
            echo(f"  {name} @ {frac:.0%} ({row['n_labelled']} frames): map {row['map']:.3f}, "
                 f"map_50 {row['map_50']:.3f} ({row['seconds']:.0f} s)")
            del model
        del state
    return {
        "model": "ccf_vit",
        "architecture": {"vit": arch["vit"].model_dump(mode="json"),
                         "ccf_vit": arch["ccf"].model_dump(mode="json"),
                         "pretext_decoder": arch["decoder"]},
        "held_out": args.held_out, "pool_presets": data["pool_presets"],
        "pool_frames": int(len(data["pool"])), "train_frames": int(len(tr_i)),
        "test_frames": int(len(te_i)), "frame_size": args.frame_size,
        "image_size": args.image_size, "fractions": list(FRACTIONS),
        "pretrain_steps": steps["det_pretrain"], "finetune_steps": steps["det_finetune"],
        "pretrain_batch": args.pretrain_batch, "finetune_batch": args.finetune_batch,
        "pretrain_lr": args.pretrain_lr, "finetune_lr": args.finetune_lr,
        "generation_s": round(gen_s, 2), "threads": torch.get_num_threads(),
        "pretrain": pretrain_rows, "rows": rows, "ordering": detection_ordering(rows),
    }


def _cell(rows: list[dict], init: str, frac: float) -> dict | None:
    for r in rows:
        if r["init"] == init and r["fraction"] == frac:
            return r
    return None


def _compare(vals: dict, a: str, b: str, op: str) -> dict | None:
    """The claim "a op b" (op ">=" or ">") on the values, or None if either is missing."""
    if a not in vals or b not in vals:
        return None
    ok = vals[a] >= vals[b] if op == ">=" else vals[a] > vals[b]
    return {"claim": f"{INITS[a][0]} {'≥' if op == '>=' else '>'} {INITS[b][0]}",
            "held": bool(ok), "diff": vals[a] - vals[b]}


def detection_ordering(rows: list[dict], metric: str = "map") -> list[dict]:
    """Per label fraction: the observed ranking and the paper's expected comparisons (H1, H3)."""
    out = []
    gaps = []
    for frac in FRACTIONS:
        vals = {k: _cell(rows, k, frac)[metric] for k in INITS if _cell(rows, k, frac)}
        if not vals:
            continue
        ranked = sorted(vals, key=lambda k: -vals[k])
        checks = [c for a, b, op in [*(("pcolor", o, ">=") for o in ("mae", "edge", "simclr")),
                                     *((o, "random", ">") for o in ("mae", "edge", "simclr"))]
                  if (c := _compare(vals, a, b, op))]
        main = [c["held"] for c in checks]
        a1 = _compare(vals, "pcolor", "pcolor-nomask", ">")
        if a1:
            checks.append(a1)
        gap = vals["pcolor"] - vals["random"] if {"pcolor", "random"} <= set(vals) else None
        gaps.append(gap)
        out.append({"fraction": frac, "metric": metric, "ranking": ranked,
                    "values": vals, "checks": checks,
                    "paper_ordering_held": bool(main) and all(main),
                    "gap_pcolor_random": gap})
    valid = [g for g in gaps if g is not None]
    if len(valid) == len(gaps) and len(valid) > 1:
        shrink = all(valid[i] >= valid[i + 1] for i in range(len(valid) - 1))
        for o in out:
            o["gap_shrinks_with_labels"] = shrink
    return out


# -- splitting -----------------------------------------------------------------------------
def split_config(args, steps: int, split_path: Path, name: str, init_from: Path | None):
    """The demo's µSplit settings (src/musplit/demo.py ``demo_config``) on a fixed split."""
    from musplit.config import preset

    total = split_total(args)
    patch = args.split_patch
    return preset(
        "cpu-small", name=name,
        data={"synthetic": {"frames": total, "size": args.split_frame_size, "connector": 25,
                            "seed": args.seed, "pairing": "shared-low"},
              "pad": "zeros", "patch": patch, "split": str(split_path)},
        model={"filters": args.split_filters, "z_dims": [args.split_latent] * 4,
               "patch": patch},
        train={"max_steps": steps, "batch_size": 16, "val_every_steps": steps,
               "early_stopping_patience": 1000, "lr_patience": 3, "seed": args.seed,
               "init_from": None if init_from is None else str(init_from)},
        predict={"grid": min(32, patch // 2), "batch_size": 128},
    )


def split_total(args) -> int:
    return args.split_test_frames + 1 + max(parse_ints(args.split_n)) + args.split_pool_frames


def split_indices(args) -> dict:
    """Disjoint frame indices: test, validation (1 frame), labelled (nested), unlabelled pool."""
    t = args.split_test_frames
    nmax = max(parse_ints(args.split_n))
    test = list(range(t))
    val = [t]
    labelled = list(range(t + 1, t + 1 + nmax))
    pool = list(range(t + 1 + nmax, split_total(args)))
    return {"test": test, "val": val, "labelled": labelled, "pool": pool}


def run_splitting(args, steps: dict, work: Path, echo) -> dict:
    import torch

    from musplit.data.synthetic import generate_critters
    from musplit.evaluation import evaluate_arrays
    from musplit.pretrain.pretext_config import PretrainConfig
    from musplit.pretrain.train import pretrain
    from musplit.splitter import Splitter
    from musplit.training import prepare_data, train

    idx = split_indices(args)
    targets = generate_critters(split_total(args), args.split_frame_size, 25, args.seed,
                                pairing="shared-low")
    pool = targets[idx["pool"]].mean(axis=-1)  # superimposed (channel average), no labels
    objectives = steps["split_objectives"]
    model_cfg = split_config(args, 1, work / "none.json", "probe", None).model
    inits: dict[str, Path | None] = {"random": None}
    pretrain_rows = []
    for obj in objectives:
        cfg = PretrainConfig(model="usplit_encoder", usplit=model_cfg,
                             pretext={"objective": obj}, batch_size=16,
                             lr=args.split_pretrain_lr, warmup=0.05, pad="zeros",
                             seed=args.seed)
        t0 = time.perf_counter()
        res = pretrain(cfg, pool, steps=steps["split_pretrain"], seed=args.seed)
        path = res.save(work / f"split-pre-{obj}.ckpt")
        rec = {"objective": obj, "label": SPLIT_LABELS.get(obj, obj), "steps": res.steps,
               "seconds": round(time.perf_counter() - t0, 2), **_loss_ends(res.log),
               "mask": cfg.pretext.mask.kind, "pool_frames": len(pool)}
        pretrain_rows.append(rec)
        echo(f"  µSplit pretrain {obj}: {rec['steps']} steps, loss {rec['loss_first']:.4g} -> "
             f"{rec['loss_last']:.4g} ({rec['seconds']:.0f} s)")
        inits[obj] = path
    rows = []
    for n in steps["split_n"]:
        split_path = work / f"split-n{n}.json"
        split_path.write_text(json.dumps({"train": idx["labelled"][:n], "val": idx["val"],
                                          "test": idx["test"]}))
        for init, ckpt in [*((k, v) for k, v in inits.items() if k != "random"),
                           ("random", None)]:
            cfg = split_config(args, steps["split_finetune"], split_path, f"pcmc-{init}-n{n}",
                               ckpt)
            run = work / f"split-{init}-n{n}"
            t0 = time.perf_counter()
            train(cfg, run, progress=False, overwrite=True, accelerator="cpu")
            train_s = time.perf_counter() - t0
            splitter = Splitter.load(run / "last.ckpt")
            data, _ = prepare_data(cfg)
            gt = data.targets[idx["test"]]
            stats = splitter.stats
            pred = splitter.predict(stats.mix(stats.clip(gt)), batch_size=128)
            res = evaluate_arrays(gt, pred.mean, stats=stats)
            s = res["summary"]
            row = {"init": init, "label": SPLIT_LABELS.get(init, init), "n": n,
                   "train_frames": idx["labelled"][:n], "steps": steps["split_finetune"],
                   "psnr": float(s["ri_psnr"]["mean"]["mean"]),
                   "psnr_sem": float(s["ri_psnr"]["mean"]["sem"]),
                   "psnr_channels": [float(s["ri_psnr"][c]["mean"]) for c in res["channels"]],
                   "ssim": float(s["ssim"]["mean"]["mean"]),
                   "train_s": round(train_s, 2), "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            echo(f"  µSplit {init}, N = {n}: RI-PSNR {row['psnr']:.2f} ± {row['psnr_sem']:.2f} "
                 f"dB ({row['seconds']:.0f} s)")
    return {
        "model": {"preset": "cpu-small", "kind": model_cfg.kind, "lc": model_cfg.lc,
                  "filters": model_cfg.filters, "z_dims": list(model_cfg.z_dims),
                  "patch": model_cfg.patch, "nll_beta": 1.0, "batch_size": 16},
        "data": {"connector": 25, "pairing": "shared-low", "frame_size": args.split_frame_size,
                 "seed": args.seed, **{k: len(v) for k, v in idx.items()}},
        "indices": idx, "pretrain_steps": steps["split_pretrain"],
        "finetune_steps": steps["split_finetune"], "pretrain_lr": args.split_pretrain_lr,
        "objectives": objectives, "threads": torch.get_num_threads(),
        "pretrain": pretrain_rows, "rows": rows, "ordering": split_ordering(rows, objectives),
    }


def split_ordering(rows: list[dict], objectives: list[str]) -> list[dict]:
    """Per N: each pre-training vs random init, with a verdict against twice the SEM."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        by = {r["init"]: r for r in rows if r["n"] == n}
        ranked = sorted(by, key=lambda k: -by[k]["psnr"])
        checks = []
        for obj in objectives:
            if obj in by and "random" in by:
                a, b = by[obj], by["random"]
                diff = a["psnr"] - b["psnr"]
                noise = 2 * math.hypot(a["psnr_sem"], b["psnr_sem"])
                verdict = ("held" if diff > noise else "not held" if diff < -noise else
                           "inconclusive")
                checks.append({"claim": f"{SPLIT_LABELS.get(obj, obj)} > Random init",
                               "diff_db": diff, "noise_db": noise, "verdict": verdict})
        out.append({"n": n, "ranking": ranked, "checks": checks})
    return out


# -- reporting -----------------------------------------------------------------------------
def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _pct(f: float) -> str:
    return f"{f * 100:g} %"


def _ranking(items: list[tuple[str, float]], fmt: str) -> str:
    """"A 0.41 > B 0.40 = C 0.40": equal where the shown values are equal."""
    out = ""
    for i, (name, v) in enumerate(items):
        if i:
            out += " = " if format(v, fmt) == format(items[i - 1][1], fmt) else " > "
        out += f"{name} {format(v, fmt)}"
    return out


def markdown(result: dict) -> str:
    m, det, spl = result["meta"], result.get("detection"), result.get("splitting")
    p = m["plan"]
    out = [SECTION, "",
           f"`bench/pcmc.py`: self-supervised pre-training objectives compared on cell "
           f"detection and on µSplit splitting (spec/pcmc.md §12, §13.7), scaled to a budget "
           f"of **{m['budget_minutes']:g} min** on {m['threads']} thread(s) (estimated "
           f"{p['estimated_s'] / 60:.1f} min, took {m['wall_s'] / 60:.1f} min). One seed "
           "throughout: differences are single draws, not significant by §12.4's rule.", ""]
    if det:
        a = det["architecture"]
        v = a["vit"]
        out += [
            "### Detection", "",
            f"Model: CCFViT (ViT primary variant) at {det['image_size']}², ViT patch "
            f"{v['patch_size']}, dim {v['dim']}, depth {v['depth']}, {v['heads']} heads × "
            f"{v['dim_head']}, MLP {v['mlp_dim']}; MobileViT neck dim "
            f"{a['ccf_vit']['neck_dim']}; pretext decoder dim "
            f"{a['pretext_decoder']['decoder_dim']}, depth "
            f"{a['pretext_decoder']['decoder_depth']}. The same model, data, steps and seed for "
            f"every objective. Pre-training: **{det['pretrain_steps']} steps** at batch "
            f"{det['pretrain_batch']} (AdamW, lr {det['pretrain_lr']:g} at batch 16, 5 % "
            f"warm-up, cosine) on {det['pool_frames']} unlabelled frames of "
            f"{', '.join(f'`{x}`' for x in det['pool_presets'])} (generated at "
            f"{det['frame_size']}², resized to {det['image_size']}²). Fine-tuning on the "
            f"held-out `{det['held_out']}`: **{det['finetune_steps']} steps** at batch "
            f"{det['finetune_batch']} (AdamW {det['finetune_lr']:g}, cosine) for every label "
            f"fraction of its {det['train_frames']} training frames (nested subsets), scored on "
            f"{det['test_frames']} test frames: clean-mode COCO mAP / mAP50 of the last "
            "model. Masks: pcolor ViT tokens r = 0.33, MAE-like tokens r = 0.75 (gray target), "
            "A1 none; edge and SimCLR unmasked.", "",
            "| initialisation | " + " | ".join(
                f"mAP {_pct(f)}" for f in det["fractions"]) + " | " + " | ".join(
                f"mAP50 {_pct(f)}" for f in det["fractions"]) + " |",
            "|---|" + "---:|" * (2 * len(det["fractions"])),
        ]
        for k in INITS:
            cells = [_cell(det["rows"], k, f) for f in det["fractions"]]
            if not any(cells):
                continue
            out.append(f"| {INITS[k][0]} | " + " | ".join(
                _f(c and c["map"]) for c in cells) + " | " + " | ".join(
                _f(c and c["map_50"]) for c in cells) + " |")
        n_lab = {r["fraction"]: r["n_labelled"] for r in det["rows"]}
        out += ["", "Labelled frames per fraction: " + ", ".join(
            f"{_pct(f)} = {n_lab.get(f, '–')}" for f in det["fractions"]) + ".", ""]
        out += ["Pretext losses (mean of the first / last steps):", "",
                "| objective | steps | loss first | loss last | s |", "|---|---:|---:|---:|---:|"]
        for r in det["pretrain"]:
            if r["steps"]:
                out.append(f"| {r['label']} | {r['steps']} | {_f(r['loss_first'], '.4g')} | "
                           f"{_f(r['loss_last'], '.4g')} | {r['seconds']:.0f} |")
        out += ["", "Observed ordering (mAP) against the paper's PCMC ≥ {MAE-like, edge, "
                "SimCLR} > random init:", ""]
        for o in det["ordering"]:
            vals = o["values"]
            rank = _ranking([(INITS[k][0], vals[k]) for k in o["ranking"]], ".3f")
            failed = [c["claim"] for c in o["checks"]
                      if not c["held"] and "A1" not in c["claim"]]
            a1 = [c for c in o["checks"] if "A1" in c["claim"]]
            verdict = ("**held**" if o["paper_ordering_held"] else
                       "**not held** (fails: " + "; ".join(failed) + ")")
            line = f"- {_pct(o['fraction'])} labels: {rank}. Paper's ordering {verdict}."
            if a1:
                line += (f" Masking helps (PCMC > A1): {'yes' if a1[0]['held'] else 'no'} "
                         f"({a1[0]['diff']:+.3f}).")
            if o.get("gap_pcolor_random") is not None:
                line += f" PCMC − random: {o['gap_pcolor_random']:+.3f}."
            out.append(line)
        shrink = [o.get("gap_shrinks_with_labels") for o in det["ordering"]]
        if shrink and shrink[0] is not None:
            out.append(f"- Gap PCMC − random largest with few labels and shrinking as labels "
                       f"grow (H2): {'held' if shrink[0] else 'not held'}.")
        rnd = _cell(det["rows"], "random", 1.0)
        if rnd:
            out.append(f"- Sanity check: random init with 100 % labels reaches mAP50 "
                       f"{rnd['map_50']:.3f} (§12.6's floor, 0.8, is for the full 4000-step "
                       "budget at 384²).")
        if m.get("figure"):
            out += ["", f"![mAP against label fraction]({m['figure']})"]
        out.append("")
    if spl:
        mm, d = spl["model"], spl["data"]
        out += [
            "### Splitting with few labelled frames", "",
            f"µSplit `{mm['preset']}` as in the demo: {mm['kind'].upper()} "
            f"{mm['lc'].capitalize()}-LC, {mm['filters']} filters, "
            f"{len(mm['z_dims'])} × {mm['z_dims'][0]} latents, patch "
            f"{mm['patch']}, batch {mm['batch_size']}, β-NLL β = {mm['nll_beta']:g}, on "
            f"SinosoidalCritters N{d['connector']} (pairing `{d['pairing']}`, "
            f"{d['frame_size']}² frames). Encoder pre-training: **{spl['pretrain_steps']} "
            f"steps** (AdamW {spl['pretrain_lr']:g}, 5 % warm-up, cosine; padded masks P = 6, "
            f"p = 0.5 for pcolor) on {d['pool']} unlabelled superimposed frames. Fine-tuning: "
            f"`musplit.train` with `train.init_from`, **{spl['finetune_steps']} steps** for "
            f"every initialisation (same data, seed and steps), {d['val']} validation frame; "
            f"the last checkpoint predicts {d['test']} test frames; range-invariant PSNR (dB, "
            "mean over channels ± SEM over frames) / SSIM.", "",
            "| initialisation | " + " | ".join(f"N = {n}" for n in sorted(
                {r["n"] for r in spl["rows"]})) + " |",
            "|---|" + "---:|" * len({r["n"] for r in spl["rows"]}),
        ]
        ns = sorted({r["n"] for r in spl["rows"]})
        for init in [*spl["objectives"], "random"]:
            cells = [next((r for r in spl["rows"] if r["init"] == init and r["n"] == n), None)
                     for n in ns]
            out.append(f"| {SPLIT_LABELS.get(init, init)} | " + " | ".join(
                "–" if c is None else f"{c['psnr']:.2f} ± {c['psnr_sem']:.2f} / "
                f"{c['ssim']:.3f}" for c in cells) + " |")
        if spl["pretrain"]:
            out += ["", "Pretext losses: " + "; ".join(
                f"{r['label']} {_f(r['loss_first'], '.4g')} → {_f(r['loss_last'], '.4g')}"
                for r in spl["pretrain"]) + "."]
        out += ["", "Observed against the expectation that pre-training helps at N ≤ 4 "
                "(verdict: difference beyond twice the combined SEM over test frames):", ""]
        for o in spl["ordering"]:
            by = {r["init"]: r for r in spl["rows"] if r["n"] == o["n"]}
            rank = _ranking([(SPLIT_LABELS.get(k, k), by[k]["psnr"]) for k in o["ranking"]],
                            ".2f")
            checks = "; ".join(f"{c['claim']}: **{c['verdict']}** ({c['diff_db']:+.2f} dB, "
                               f"noise {c['noise_db']:.2f})" for c in o["checks"])
            out.append(f"- N = {o['n']}: {rank}. {checks}.")
        out.append("")
    out += [f"Machine: {m['machine']}."]
    return "\n".join(out)


def replace_section(text: str, section: str, heading: str = SECTION) -> str:
    """``text`` with this benchmark's section replaced by ``section`` (or appended)."""
    return run_all.replace_section(text, section, heading)


def figure(det: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    fr = det["fractions"]
    for k in INITS:
        cells = [_cell(det["rows"], k, f) for f in fr]
        if not all(cells):
            continue
        for ax, metric in zip(axes, ("map", "map_50"), strict=True):
            ax.plot([100 * f for f in fr], [c[metric] for c in cells], marker="o",
                    label=INITS[k][0], ls="--" if k in ("random", "pcolor-nomask") else "-")
    for ax, title in zip(axes, ("mAP", "mAP50"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("labelled training frames (%)")
        ax.set_title(f"{title}, held-out {det['held_out']}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _quiet() -> None:
    for pattern in (r".*does not have many workers.*", r".*smaller than the logging interval.*",
                    r".*GPU available but not used.*", r".*dataloader is not resumable.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "musplit", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


# -- main ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-minutes", type=float, default=20.0,
                    help="total wall budget the step counts are planned from (default 20)")
    ap.add_argument("--parts", default="detection,splitting",
                    help="comma-separated subset of: detection, splitting")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("detection")
    g.add_argument("--held-out", default=PRESET_EXCLUDED_BY_DEFAULT,
                   help="fine-tuning preset, excluded from the pre-training pool")
    g.add_argument("--image-size", type=int, default=128, help="the detector's input side")
    g.add_argument("--frame-size", type=int, default=256, help="side of the generated frames")
    g.add_argument("--pool-frames", type=int, default=32,
                   help="unlabelled pre-training frames per pool preset")
    g.add_argument("--train-frames", type=int, default=100,
                   help="labelled training frames of the held-out preset (100 %%)")
    g.add_argument("--test-frames", type=int, default=24)
    g.add_argument("--pretrain-batch", type=int, default=16)
    g.add_argument("--finetune-batch", type=int, default=8)
    g.add_argument("--pretrain-lr", type=float, default=1e-3,
                   help="AdamW lr at batch 16 (the spec's 1e-4 is for 75 epochs)")
    g.add_argument("--finetune-lr", type=float, default=1e-3,
                   help="AdamW lr (the spec's 1e-4 is for 4000 steps)")
    g.add_argument("--pretrain-steps", type=int, default=None, help="override the plan")
    g.add_argument("--finetune-steps", type=int, default=None, help="override the plan")
    g = ap.add_argument_group("splitting")
    g.add_argument("--split-objectives", default=None,
                   help="encoder pre-training objectives (default pcolor, plus mae from a "
                        "40-minute budget)")
    g.add_argument("--split-n", default="1,4", help="labelled training frames N")
    g.add_argument("--split-frame-size", type=int, default=256)
    g.add_argument("--split-pool-frames", type=int, default=64)
    g.add_argument("--split-test-frames", type=int, default=4)
    g.add_argument("--split-filters", type=int, default=16)
    g.add_argument("--split-latent", type=int, default=16)
    g.add_argument("--split-patch", type=int, default=64)
    g.add_argument("--split-pretrain-lr", type=float, default=1e-3)
    g.add_argument("--split-pretrain-steps", type=int, default=None, help="override the plan")
    g.add_argument("--split-steps", type=int, default=None, help="override the plan")
    g = ap.add_argument_group("output")
    g.add_argument("--results", type=Path, default=ROOT / "results",
                   help="folder for pcmc.json and pcmc.md")
    g.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md",
                   help="Markdown file whose PCMC section is replaced")
    g.add_argument("--no-benchmarks", action="store_true", help="leave BENCHMARKS.md alone")
    g.add_argument("--figure", type=Path, default=ROOT / "figures" / "pcmc_map.png")
    g.add_argument("--no-figure", action="store_true")
    g.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"detection", "splitting"}:
        ap.error(f"--parts takes detection and/or splitting, got {args.parts!r}")
    if args.held_out not in _preset_names():
        ap.error(f"unknown preset {args.held_out!r}; choose from {', '.join(_preset_names())}")
    import torch

    torch.set_num_threads(args.threads)
    _quiet()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def echo(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    steps = plan(args)
    echo(f"plan for {args.budget_minutes:g} min: {json.dumps(steps)}")
    result: dict = {}
    if "detection" in parts:
        echo("detection ...")
        result["detection"] = run_detection(args, steps, echo)
    if "splitting" in parts:
        echo("splitting ...")
        work = Path(tempfile.mkdtemp(prefix="musplit-pcmc-"))
        try:
            result["splitting"] = run_splitting(args, steps, work, echo)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    fig = None
    if "detection" in result and not args.no_figure:
        path = figure(result["detection"], args.figure)
        try:
            fig = path.resolve().relative_to(args.benchmarks.resolve().parent).as_posix()
        except ValueError:
            fig = str(path)
    result = {"meta": {"budget_minutes": args.budget_minutes, "threads": args.threads,
                       "seed": args.seed, "plan": steps, "costs": COSTS, "shares": SHARES,
                       "wall_s": round(wall, 1), "machine": machine(), "figure": fig,
                       "argv": list(argv if argv is not None else sys.argv[1:])},
              **result}
    args.results.mkdir(parents=True, exist_ok=True)
    _write(args.results / "pcmc.json", json.dumps(_finite(result), indent=1,
                                                  default=_json_default, allow_nan=False))
    table = markdown(result)
    _write(args.results / "pcmc.md", table + "\n")
    if not args.no_benchmarks:
        text = args.benchmarks.read_text() if args.benchmarks.exists() else "# Benchmarks\n"
        _write(args.benchmarks, replace_section(text, table))
    print(table)
    return 0


def _preset_names() -> list[str]:
    from musplit.pretrain.synth import PRESETS

    return list(PRESETS)


def _finite(o):
    """NaN and infinities (e.g. the SEM of a single test frame) as JSON null."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    if isinstance(o, float | np.floating) and not math.isfinite(o):
        return None
    return o


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


if __name__ == "__main__":
    raise SystemExit(main())
