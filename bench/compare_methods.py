"""Every method of the paper's Table 1 trained for the same CPU budget on SinosoidalCritters.

Each method (the LadderVAE variants, HVAE and HAE, and the baselines: U-Net at the frame size,
U-Net + Regular-LC, Context-Aware U-Net, BRAVE-NET, and the unsupervised Double-DIP) gets
``--budget-seconds`` of training through the one pipeline (``musplit.train`` with the same
config, data and Splitter as any run), then its last checkpoint predicts the first
``--test-frames`` test frames with the default tiling (inner padding, G = P/2) and is scored
as the paper does: range-invariant PSNR and SSIM per channel in normalised target space
(docs/evaluation.md, "Metrics"). Double-DIP has no training: the same budget is spent fitting
one random crop of each of those test frames (docs/evaluation.md, "Double-DIP"; layer order
resolved per crop by musplit.doubledip.split_crops, the pipeline of ``musplit double-dip``).

Per method it also records the parameters, the median seconds per training step (forward,
backward and optimiser step; data loading and validation excluded), the steps done within the
budget, and the **peak training memory**: the peak RSS increase of a fresh process over its
idle size while it runs two training steps of the model on a random batch of the training
shape (the CPU stand-in for the paper's GPU-memory column).

Results go to ``bench/results/compare_methods.json`` and ``.md``, and replace the section
"## Method comparison (issue 5)" of BENCHMARKS.md (``bench/run_all.py --only compare`` runs
this script and keeps that section when it rebuilds the file). Each method runs in its own
process (``--in-process`` runs them here: faster, but the memory figures then mix).

    .venv/bin/python bench/compare_methods.py --budget-seconds 120          # ~45 min
    .venv/bin/python bench/compare_methods.py --methods unet,hvae-regular --budget-seconds 30
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from musplit.config import Config
from musplit.doubledip import MULTIPLE, SkipGenerator, random_crops, separate, split_crops
from musplit.evaluation import evaluate_arrays
from musplit.losses import deep_supervision_mse, split_elbo
from musplit.models import build, count_parameters
from musplit.models.config import LADDER_KINDS
from musplit.splitter import Splitter
from musplit.training import prepare_data, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_all  # noqa: E402  (shared helpers of bench/)
from run_all import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
SECTION = "## Method comparison (issue 5)"

#: name -> (label, model overrides, patch kind). "large" patches are the whole frame (the
#: paper's plain U-Net at P = 256); "-" is Double-DIP, which does not train.
METHODS: dict[str, tuple[str, dict, str]] = {
    "double-dip": ("Double-DIP", {}, "-"),
    "bravenet": ("BRAVE-NET", {"kind": "bravenet"}, "patch"),
    "ca-unet": ("Context-Aware U-Net", {"kind": "ca_unet"}, "patch"),
    "unet": ("U-Net", {"kind": "unet"}, "large"),
    "unet-lc": ("U-Net + Regular-LC", {"kind": "unet", "lc": "regular"}, "patch"),
    "hae-vanilla": ("HAE Vanilla", {"kind": "hae", "lc": "none"}, "patch"),
    "hae-lean": ("HAE Lean-LC", {"kind": "hae", "lc": "lean"}, "patch"),
    "hae-regular": ("HAE Regular-LC", {"kind": "hae", "lc": "regular"}, "patch"),
    "hae-deep": ("HAE Deep-LC", {"kind": "hae", "lc": "deep"}, "patch"),
    "hvae-vanilla": ("HVAE Vanilla", {"kind": "hvae", "lc": "none"}, "patch"),
    "hvae-lean": ("HVAE Lean-LC", {"kind": "hvae", "lc": "lean"}, "patch"),
    "hvae-regular": ("HVAE Regular-LC", {"kind": "hvae", "lc": "regular"}, "patch"),
    "hvae-deep": ("HVAE Deep-LC", {"kind": "hvae", "lc": "deep"}, "patch"),
}

#: Model widths per --size: "paper" is the reference (parameter counts as in the paper),
#: "small" halves every width (LadderVAE: the cpu-small preset's 32 filters and latents),
#: "tiny" is for tests.
SIZES = {
    "paper": {"ladder": {}, "baseline": {}},
    "small": {"ladder": {"filters": 32, "z": 32}, "baseline": {"filters": 16}},
    "tiny": {"ladder": {"filters": 8, "z": 4, "levels": 2, "scales": 3},
             "baseline": {"filters": 4, "depth": 3}},
}

log = logging.getLogger("bench.compare_methods")


def model_overrides(name: str, size: str) -> dict:
    """The ModelConfig fields of method ``name`` at ``size``."""
    _, model, _ = METHODS[name]
    model = dict(model)
    if model["kind"] in LADDER_KINDS:
        s = SIZES[size]["ladder"]
        if s:
            levels = 2 * s.get("levels", 4) if model["lc"] == "deep" else s.get("levels", 4)
            model.update(filters=s["filters"], z_dims=[s["z"]] * levels)
            if "scales" in s and model["lc"] != "none":
                model["scales"] = s["scales"]
        return model
    model.update(SIZES[size]["baseline"])
    if model.get("lc") == "regular" and "depth" in model:
        model["scales"] = min(5, model["depth"])
    return model


def make_config(name: str, args):
    """The run config of one method: the same data, batch and optimiser for every method."""
    patch = args.frame_size if METHODS[name][2] == "large" else args.patch
    model = {"patch": patch, **model_overrides(name, args.size)}
    return Config.validated({
        "name": f"compare-{name}",
        "data": {"synthetic": {"frames": args.frames, "size": args.frame_size,
                               "connector": args.connector, "seed": args.seed,
                               "pairing": args.pairing},
                 "pad": "zeros", "patch": patch},
        "model": model,
        # Stopped by the budget; validation once per epoch (not within short budgets).
        "train": {"batch_size": args.batch_size, "max_steps": 10**9, "seed": args.seed,
                  "lr_patience": 15, "early_stopping_patience": 100,
                  "nll_beta": args.nll_beta},
        "predict": {"batch_size": 64},
    }, source=f"method {name}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_step_memory(config, steps: int = 2) -> float:
    """GB of peak RSS above the process's size while training on one random batch.

    Meaningful in a fresh process (ru_maxrss is a high-water mark of the whole process).
    """
    m = config.model
    model = build(m).train()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    b, p = config.train.batch_size, m.patch
    x = torch.randn(b, m.scales, p, p)
    y = torch.randn(b, m.out_channels, p, p)
    before = _rss_bytes()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if m.kind in LADDER_KINDS:
            loss, _ = split_elbo(out.params, y, out.kl, out.kl_elements)
        else:
            loss, _ = deep_supervision_mse(out.params[:, : m.out_channels], y, out.aux)
        loss.backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del model, opt, out, loss
    return max(peak - before, 0) / 1e9


def _budget_callback(seconds: float, threads: int):
    class Budget(L.Callback):
        """Stop after ``seconds`` × ``threads`` of process CPU time; time every step.

        The budget counts CPU time, not wall time, so that a busy machine gives every method
        the same work rather than the same minutes; on an idle machine with ``threads`` cores
        it is ``seconds`` of wall time. Steps are timed both ways (data loading excluded).
        """

        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.c0 = self.t = self.c = 0.0

        def on_train_start(self, trainer, module):
            self.c0 = time.process_time()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            now, cpu = time.perf_counter(), time.process_time()
            self.times.append(now - self.t)
            self.cpu_times.append((cpu - self.c) / threads)
            if cpu - self.c0 >= seconds * threads:
                trainer.should_stop = True

    return Budget()


def _test_frames(config, n: int):
    data, stats = prepare_data(config)
    frames = list(data.split.test[:n])
    return data.targets[frames], stats, frames


def run_trained(name: str, args, work: Path) -> dict:
    """Train method ``name`` for the budget, then predict and score the test frames."""
    config = make_config(name, args)
    memory = peak_step_memory(config) if args.memory else None
    budget = _budget_callback(args.budget_seconds, args.threads)
    run = work / name
    t0 = time.perf_counter()
    train(config, run, progress=False, callbacks=[budget], overwrite=True, accelerator="cpu")
    wall = time.perf_counter() - t0
    splitter = Splitter.load(run / "last.ckpt")
    targets, _, frames = _test_frames(config, args.test_frames)
    stats = splitter.stats
    t1 = time.perf_counter()
    pred = splitter.predict(stats.mix(stats.clip(targets)), batch_size=64)
    predict_s = time.perf_counter() - t1
    res = evaluate_arrays(targets, pred.mean, stats=stats)
    steps = len(budget.times)
    return {
        "method": name,
        "label": METHODS[name][0],
        "patch": config.model.patch,
        "params": count_parameters(build(config.model)),
        "steps": steps,
        "step_s": statistics.median(budget.times) if steps else None,
        "step_cpu_s": statistics.median(budget.cpu_times) if steps else None,
        "peak_step_memory_gb": memory,
        "train_wall_s": wall,
        "predict_s": predict_s,
        "grid": pred.meta["grid"],
        "test_frames": [int(f) for f in frames],
        **_scores(res),
        "threads": torch.get_num_threads(),
    }


def run_double_dip(args) -> dict:
    """Double-DIP on one random crop of each test frame, the budget shared between crops."""
    config = make_config("hvae-lean", args)  # only for its data and statistics
    targets, stats, frames = _test_frames(config, args.test_frames)
    crop = min(256, args.frame_size) // MULTIPLE * MULTIPLE
    corners = random_crops(len(frames), args.frame_size, args.frame_size, crop, 1, args.seed)
    mix = stats.mix(stats.clip(targets))
    probe = 4
    c0 = time.process_time()  # the same CPU-time budget as the trained methods
    separate(mix[0, :crop, :crop], iterations=probe, device="cpu")
    per_it = (time.process_time() - c0) / args.threads / probe
    iterations = max(1, int(args.budget_seconds / len(frames) / per_it))
    t0 = time.perf_counter()
    found = split_crops(mix, corners, crop, targets=targets, seed=args.seed,
                        iterations=iterations, device="cpu")
    wall = time.perf_counter() - t0
    res = evaluate_arrays(found.targets, found.layers, stats=stats)
    return {
        "method": "double-dip",
        "label": METHODS["double-dip"][0],
        "patch": crop,
        "params": 2 * count_parameters(SkipGenerator()),
        "steps": iterations * len(frames),
        "step_s": per_it,
        "step_cpu_s": per_it,
        "peak_step_memory_gb": None,
        "train_wall_s": wall,
        "predict_s": None,
        "grid": None,
        "iterations_per_crop": iterations,
        "test_frames": [int(f) for f in frames],
        **_scores(res),
        "threads": torch.get_num_threads(),
    }


def _scores(res: dict) -> dict:
    s = res["summary"]
    return {
        "ri_psnr": [s["ri_psnr"][c]["mean"] for c in res["channels"]],
        "ssim": [s["ssim"][c]["mean"] for c in res["channels"]],
        "ri_psnr_mean": s["ri_psnr"]["mean"]["mean"],
        "ssim_mean": s["ssim"]["mean"]["mean"],
        "microssim": [s["microssim"][c]["mean"] for c in res["channels"]]
        if "microssim" in s else None,
        "microssim_mean": s["microssim"]["mean"]["mean"] if "microssim" in s else None,
    }


def run_one(name: str, args, work: Path) -> dict:
    torch.set_num_threads(args.threads)
    row = run_double_dip(args) if name == "double-dip" else run_trained(name, args, work)
    row["budget_s"] = args.budget_seconds
    row["size"] = args.size
    return row


# -- the table -----------------------------------------------------------------------------
def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def markdown(rows: list[dict], meta: dict) -> str:
    out = [
        SECTION,
        "",
        f"`bench/compare_methods.py`: every method trained for the same budget of "
        f"**{meta['budget_s']:g} s** ({meta['budget_s'] * meta['threads']:g} s of process "
        f"CPU time over {meta['threads']} threads, so a busy machine gives every method the "
        f"same work; {meta['budget_s']:g} s wall on an idle machine) on "
        f"SinosoidalCritters N{meta['connector']}, pairing `{meta.get('pairing', 'paper')}` "
        f"({meta['frames']} frames of "
        f"{meta['frame_size']}², zero padding), batch {meta['batch_size']}, LadderVAE "
        f"likelihood β = {meta.get('nll_beta', 0):g} (baselines: MSE), patch "
        f"{meta['patch']} (the U-Net: the whole frame, as the paper's P = 256 U-Net), model "
        f"widths `{meta['size']}` ({meta['size_note']}). The model after the budget (last "
        f"checkpoint) predicts {meta['test_frames']} test frame(s) with inner padding "
        "(G = P/2); range-invariant PSNR (dB) and SSIM per channel in normalised target space, "
        "as Table 1, and MicroSSIM (the microssim package, fitted per channel on the test "
        "frames, as MicroSplit reports it; – where it was not measured). Double-DIP spends "
        "the same budget on one random crop per test frame "
        "(the recipe's learning rate; its iteration count is shown, of the recipe's 8000). "
        "Peak memory: the RSS a fresh process gains over two training steps on a random batch "
        "(CPU; the paper's column is GPU memory). s/step: median forward + backward + Adamax "
        "step, in CPU seconds per thread (wall seconds on an idle machine). "
        "These budgets are far from convergence (the paper trains for days): the table "
        "compares what each method learns per CPU second, not the paper's final numbers.",
        "",
        "| method | P | params | s/step | steps | peak GB | RI-PSNR ch1 | RI-PSNR ch2 | "
        "RI-PSNR mean | SSIM ch1 | SSIM ch2 | SSIM mean | MicroSSIM ch1 | MicroSSIM ch2 | "
        "MicroSSIM mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        steps = f"{r['steps']:,}"
        if r["method"] == "double-dip":
            steps += f" ({r['iterations_per_crop']:,}/crop)"
        micro = r.get("microssim") or [None, None]
        out.append(
            f"| {r['label']} | {r['patch']} | {r['params']:,} | "
            f"{_f(r.get('step_cpu_s', r['step_s']), '.3f')} | "
            f"{steps} | {_f(r['peak_step_memory_gb'], '.2f')} | "
            f"{r['ri_psnr'][0]:.2f} | {r['ri_psnr'][1]:.2f} | {r['ri_psnr_mean']:.2f} | "
            f"{r['ssim'][0]:.3f} | {r['ssim'][1]:.3f} | {r['ssim_mean']:.3f} | "
            f"{_f(micro[0], '.3f')} | {_f(micro[1], '.3f')} | "
            f"{_f(r.get('microssim_mean'), '.3f')} |")
    load = meta.get("load_avg_15min")
    out += ["", f"Machine: {meta['machine']}"
            + (f" (15-minute load average at the end: {load})." if load is not None else ".")]
    return "\n".join(out)


def replace_section(text: str, section: str, heading: str = SECTION) -> str:
    """``text`` with this benchmark's section replaced by ``section`` (or appended)."""
    return run_all.replace_section(text, section, heading)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=120.0,
                    help="training budget per method (default 120)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--size", choices=sorted(SIZES), default="small",
                    help="model widths: paper (reference), small (halved, default), tiny")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--frame-size", type=int, default=256)
    ap.add_argument("--connector", type=int, default=25)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--pairing", default="shared-low",
                    help="critters pairing (default shared-low, learnable in minutes; "
                         "'paper' needs the paper's ~1M steps)")
    ap.add_argument("--nll-beta", type=float, default=1.0,
                    help="β of the LadderVAE likelihood (default 1, as cpu-small; 0 = paper)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--test-frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=ROOT / "results",
                    help="folder for compare_methods.json and .md")
    ap.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md",
                    help="Markdown file whose method-comparison section is replaced")
    ap.add_argument("--no-benchmarks", action="store_true", help="leave BENCHMARKS.md alone")
    ap.add_argument("--in-process", action="store_true",
                    help="run every method in this process (memory figures then mix)")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the peak-memory probe")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    if args.one:  # a child: one method, one JSON line
        row = run_one(args.one, args, args.work)
        sys.stdout.write(json.dumps(row) + "\n")
        return 0

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    for n in names:  # refuse an impossible setting before spending any budget
        if n != "double-dip":
            make_config(n, args)
    work = Path(tempfile.mkdtemp(prefix="musplit-compare-"))
    rows = []
    try:
        for n in names:
            print(f"{n}: {args.budget_seconds:g} s ...", file=sys.stderr, flush=True)
            if args.in_process:
                rows.append(run_one(n, args, work))
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", n, "--work",
                   str(work), *(argv if argv is not None else sys.argv[1:])]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise RuntimeError(f"{n} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size_note = {"paper": "the reference settings", "small": "every width halved",
                 "tiny": "test size"}[args.size]
    meta = {"budget_s": args.budget_seconds, "threads": args.threads, "frames": args.frames,
            "frame_size": args.frame_size, "connector": args.connector,
            "pairing": args.pairing, "nll_beta": args.nll_beta,
            "batch_size": args.batch_size, "patch": args.patch, "size": args.size,
            "size_note": size_note, "test_frames": args.test_frames, "machine": machine(),
            "load_avg_15min": round(os.getloadavg()[2], 2)}
    args.results.mkdir(parents=True, exist_ok=True)
    _write(args.results / "compare_methods.json", json.dumps({"meta": meta, "rows": rows},
                                                             indent=1))
    table = markdown(rows, meta)
    _write(args.results / "compare_methods.md", table + "\n")
    if not args.no_benchmarks:
        text = args.benchmarks.read_text() if args.benchmarks.exists() else "# Benchmarks\n"
        _write(args.benchmarks, replace_section(text, table))
    print(table)
    return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
