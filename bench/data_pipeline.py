"""Speed and memory of the lateral-context data pipeline (issue 2, "Speed and memory").

Measures, on ONE core (``torch.set_num_threads(1)``, one process per configuration so that the
peak memories do not mix):

* SinosoidalCritters, 1000 frames of 256^2 (800 training frames), P = 64, S = 5: the one-off
  precomputation of :class:`musplit.data.dataset.TrainPatches` and the training-batch rate
  (B = 32, median over many batches) for pad zeros/reflect x alignment exact/floor, with the
  d4 augmentation, and through a ``DataLoader``; the peak RSS of each process;
* the PaviaATN geometry (2720^2 frames, 4 channels, 2 target channels used): a few real-size
  frames are built and measured and the memory is extrapolated to 49 training + 6 validation
  frames.

Writes ``bench/results/data_pipeline.json`` and ``bench/figures/data_pipeline.png`` and prints a
Markdown section for BENCHMARKS.md. Usage::

    .venv/bin/python bench/data_pipeline.py              # full run (~2-3 min on 1 core)
    .venv/bin/python bench/data_pipeline.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.data_pipeline")

ROOT = Path(__file__).resolve().parent
PAVIA = {"frames": 61, "train": 49, "val": 6, "size": 2720, "channels": 4, "targets": 2}
CONFIGS = [  # (label, pad, alignment, augment, through the DataLoader)
    ("exact / zeros", "zeros", "exact", None, False),
    ("exact / reflect", "reflect", "exact", None, False),
    ("floor / zeros", "zeros", "floor", None, False),
    ("floor / reflect", "reflect", "floor", None, False),
    ("exact / zeros + d4", "zeros", "exact", "d4", False),
    ("exact / zeros, DataLoader", "zeros", "exact", None, True),
]


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _time_parts(ds, idx) -> dict:
    """CPU time of the parts of one batch (fresh draw; the same work as ``__getitems__``)."""
    t0 = time.process_time()
    d = ds.draw(idx)
    t1 = time.process_time()
    ds._stacks[0].crops(d["frame"], d["corners"], transform=d["transform"])
    t2 = time.process_time()
    ds._target_crops(d["frame"], d["corners"], d["transform"])
    t3 = time.process_time()
    return {"draw corners": t1 - t0, "LC gather": t2 - t1, "target gather": t3 - t2}


def _summary(times: list[float], cpu: list[float], batch: int) -> dict:
    med, cpu_med = float(np.median(times)), float(np.median(cpu))
    return {"batch_ms_median": 1e3 * med, "batch_ms_p90": 1e3 * float(np.percentile(times, 90)),
            "patches_per_s": batch / med, "cpu_ms_median": 1e3 * cpu_med,
            "patches_per_cpu_s": batch / cpu_med}


def _time_interleaved(runners: dict, rounds: int, batch: int, seed: int) -> dict:
    """Per-batch times of several pipelines, interleaved batch by batch.

    The machine is shared, so its load drifts; interleaving exposes every configuration to the
    same drift, which keeps their ratios meaningful even when absolute times are noisy, and the
    CPU time of this (single-threaded) process is recorded next to the wall time: it is what
    one core spends, whatever the other jobs do. Each batch reads fresh random frames (cold
    caches, as in training).
    """
    rng = np.random.default_rng(seed)
    times: dict = {name: [] for name in runners}
    cpu: dict = {name: [] for name in runners}
    parts: dict = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (ds, fetch) in runners.items():
            idx = rng.integers(0, len(ds), batch)
            c0, t0 = time.process_time(), time.perf_counter()
            fetch(idx)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if fetch == ds.__getitems__:
                parts[name].append(_time_parts(ds, rng.integers(0, len(ds), batch)))
    out = {}
    for name in runners:
        out[name] = _summary(times[name], cpu[name], batch)
        if parts[name]:
            out[name]["breakdown_ms"] = {
                k: 1e3 * float(np.median([p[k] for p in parts[name]])) for k in parts[name][0]
            }
    return out


def _critters_data(cfg: dict):
    from musplit.data.normalize import compute_stats
    from musplit.data.splits import default_split
    from musplit.data.synthetic import generate_critters

    t0 = time.perf_counter()
    data = generate_critters(cfg["frames"], size=cfg["size"], connector=25, seed=0)
    gen_s = time.perf_counter() - t0
    split = default_split(len(data))
    t0 = time.perf_counter()
    stats = compute_stats(data, split.train)
    return data, split, stats, gen_s, time.perf_counter() - t0


def run_critters_memory(cfg: dict) -> dict:
    """Child: build one configuration; its precompute time, size and peak RSS."""
    from musplit.data.dataset import TrainPatches

    data, split, stats, gen_s, stats_s = _critters_data(cfg)
    rss_before = _current_rss_gb()
    c0, t0 = time.process_time(), time.perf_counter()
    ds = TrainPatches(data, stats, split.train, patch=cfg["patch"], scales=cfg["scales"],
                      pad=cfg["pad"], alignment=cfg["alignment"], seed=0)
    precompute_s = time.perf_counter() - t0
    precompute_cpu_s = time.process_time() - c0
    ds.__getitems__(list(range(cfg["batch"])))
    return {
        "generate_s": gen_s,
        "stats_s": stats_s,
        "precompute_s": precompute_s,
        "precompute_cpu_s": precompute_cpu_s,
        "precompute_ms_per_frame": 1e3 * precompute_cpu_s / ds.n_frames,
        "train_frames": ds.n_frames,
        "dataset_gb": ds.nbytes / 2**30,
        "rss_increase_gb": _current_rss_gb() - rss_before,
        "peak_rss_gb": _rss_gb(),
    }


class _LoaderFetch:
    """Next batch of a DataLoader (its own shuffled indices), restarting after each epoch."""

    def __init__(self, loader):
        self.loader, self.it = loader, iter(loader)

    def __call__(self, _idx):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def run_critters_speed(cfg: dict) -> dict:
    """Child: every configuration built once, then timed batch by batch, interleaved."""
    import copy

    from musplit.data.dataset import TrainPatches, make_loader

    data, split, stats, _, _ = _critters_data(cfg)
    built = {}
    for pad, alignment in {(c[1], c[2]) for c in CONFIGS}:
        built[pad, alignment] = TrainPatches(
            data, stats, split.train, patch=cfg["patch"], scales=cfg["scales"], pad=pad,
            alignment=alignment, seed=0)
    runners = {}
    for label, pad, alignment, augment, loader in CONFIGS:
        ds = copy.copy(built[pad, alignment])  # shares the precomputed stack
        ds.augment = augment
        if loader:
            runners[label] = (ds, _LoaderFetch(make_loader(ds, batch_size=cfg["batch"], seed=1)))
        else:
            runners[label] = (ds, ds.__getitems__)
    for _, fetch in runners.values():  # warm-up
        fetch(np.arange(cfg["batch"]))
    return _time_interleaved(runners, cfg["batches"], cfg["batch"], seed=1)


def run_pavia(cfg: dict) -> dict:
    """Child: a few real-size PaviaATN frames; measure, then extrapolate the memory."""
    from musplit.data.dataset import TrainPatches
    from musplit.data.normalize import compute_stats

    n, size = cfg["pavia_frames"], PAVIA["size"]
    rng = np.random.default_rng(0)
    # Content does not matter for speed or memory; 4 channels as in the file, 2 used.
    raw = (rng.random((n, size, size, PAVIA["channels"]), dtype=np.float32) * 1000.0)
    targets = raw[..., 2:4]  # the Actin/Tubulin task's channels (2, 3)
    stats = compute_stats(targets)
    out = {**cfg, "size": size}
    for alignment in ("exact", "floor"):
        rss_before = _current_rss_gb()
        c0 = time.process_time()
        ds = TrainPatches(targets, stats, patch=cfg["patch"], scales=cfg["scales"],
                          pad="reflect", alignment=alignment, seed=0)
        build_s = time.process_time() - c0  # CPU seconds (the machine is shared)
        rss_after = _current_rss_gb()
        per_frame = ds.nbytes / ds.n_frames
        res = {
            "precompute_s_per_frame": build_s / ds.n_frames,
            "bytes_per_frame": per_frame,
            "rss_increase_gb_measured": rss_after - rss_before,
            "dataset_gb_measured": ds.nbytes / 2**30,
            "train_gb_extrapolated": per_frame * PAVIA["train"] / 2**30,
            "train_val_gb_extrapolated": per_frame * (PAVIA["train"] + PAVIA["val"]) / 2**30,
        }
        if alignment == "exact":
            runners = {"pavia": (ds, ds.__getitems__)}
            ds.__getitems__(np.arange(cfg["batch"]))
            res.update(_time_interleaved(runners, cfg["batches"], cfg["batch"], seed=1)["pavia"])
        out[alignment] = res
        del ds
    out["raw_file_gb"] = (PAVIA["frames"] * size * size * PAVIA["channels"] * 4) / 2**30
    out["peak_rss_gb"] = _rss_gb()
    return out


def _child(kind: str, cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["critters"]
    labels = [r["label"] for r in runs] + ["PaviaATN 2720² exact / reflect"]
    rates = [r["patches_per_cpu_s"] for r in runs] + [
        results["pavia"]["exact"]["patches_per_cpu_s"]]
    walls = [r["patches_per_s"] for r in runs] + [results["pavia"]["exact"]["patches_per_s"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ypos = np.arange(len(labels))[::-1]
    a.barh(ypos, rates, color=["C0"] * len(runs) + ["C2"])
    a.plot(walls, ypos, "k|", ms=14, label="wall clock (shared, noisy machine)")
    a.axvline(3000, color="C3", ls="--", label="target 3,000 patches/s")
    a.set_yticks(ypos, labels)
    a.set_xlabel("patches per CPU second (B = 32, P = 64, S = 5, one thread)")
    for y, r in zip(ypos, rates, strict=True):
        a.text(r, y, f" {r:,.0f}", va="center", fontsize=8)
    a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    a.set_title("Training-batch construction (median batch)")

    parts = [r for r in runs if "breakdown_ms" in r]
    names = list(parts[0]["breakdown_ms"])
    left = np.zeros(len(parts))
    yb = np.arange(len(parts))[::-1]
    for k, name in enumerate(names):
        v = np.array([r["breakdown_ms"][name] for r in parts])
        b.barh(yb, v, left=left, color=f"C{k}", label=name)
        left += v
    rest = np.array([max(0.0, r["cpu_ms_median"] - s) for r, s in zip(parts, left, strict=True)])
    b.barh(yb, rest, left=left, color="0.7", label="normalise + tensors")
    b.set_yticks(yb, [r["label"] for r in parts])
    b.set_xlabel("CPU ms per batch of 32 (medians)")
    b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    b.set_title("Where a batch's time goes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _markdown(results: dict) -> str:
    runs, pav = results["critters"], results["pavia"]
    lines = [
        "## Data pipeline: lateral-context training batches (`bench/data_pipeline.py`)",
        "",
        f"One core (`torch.set_num_threads(1)`), {results['machine']}. "
        "Timings were taken on a 2-core machine shared with other jobs: wall times are noisy "
        "(a rerun on a quiet machine is expected to be faster, not slower); the CPU-time rate "
        "(process CPU seconds, single-threaded) is the steadier figure. Batch rates of all "
        "configurations were measured in one process, interleaved batch by batch.",
        "",
        f"SinosoidalCritters, {runs[0]['frames']} frames of {runs[0]['size']}², "
        f"{runs[0]['train_frames']} training frames, B = {runs[0]['batch']}, "
        f"P = {runs[0]['patch']}, S = {runs[0]['scales']}; median over {runs[0]['batches']} "
        "batches; precomputation done once when the dataset is built:",
        "",
        "| configuration | patches/s (CPU time) | patches/s (wall) "
        "| wall ms/batch (median, p90) | precompute: CPU s (wall s) | dataset (GiB) "
        "| peak RSS (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['label']} | {r['patches_per_cpu_s']:,.0f} | {r['patches_per_s']:,.0f} "
            f"| {r['batch_ms_median']:.2f}, {r['batch_ms_p90']:.2f} "
            f"| {r['precompute_cpu_s']:.1f} ({r['precompute_s']:.1f}); "
            f"{r['precompute_ms_per_frame']:.1f} ms/frame | {r['dataset_gb']:.2f} "
            f"| {r['peak_rss_gb']:.2f} |"
        )
    ex, fl = pav["exact"], pav["floor"]
    lines += [
        "",
        f"Generating the {runs[0]['frames']} frames took {runs[0]['generate_s']:.1f} s and "
        f"the statistics {runs[0]['stats_s']:.1f} s (not included above). Peak RSS includes "
        f"the generated data ({runs[0]['frames']} × {runs[0]['size']}² × 2 float32) and the "
        "interpreter with torch.",
        "",
        f"**PaviaATN geometry** (61 frames × 2720² × 4 channels float32 = "
        f"{pav['raw_file_gb']:.1f} GiB on disk; 2 target channels used; 49 training + 6 "
        f"validation frames), measured on {pav['pavia_frames']} real-size frames and "
        "extrapolated:",
        "",
        "| alignment | bytes / frame (MiB) | precompute / frame (CPU s) | 49 train frames (GiB) "
        "| + 6 val frames (GiB) |",
        "|---|---:|---:|---:|---:|",
        f"| exact / reflect | {ex['bytes_per_frame'] / 2**20:.0f} | "
        f"{ex['precompute_s_per_frame']:.2f} | {ex['train_gb_extrapolated']:.1f} | "
        f"{ex['train_val_gb_extrapolated']:.1f} |",
        f"| floor / reflect | {fl['bytes_per_frame'] / 2**20:.0f} | "
        f"{fl['precompute_s_per_frame']:.2f} | {fl['train_gb_extrapolated']:.1f} | "
        f"{fl['train_val_gb_extrapolated']:.1f} |",
        "",
        f"Batch rate on 2720² frames (exact / reflect): {ex['patches_per_cpu_s']:,.0f} "
        f"patches/s of CPU time ({ex['patches_per_s']:,.0f} wall). "
        "Per frame the dataset holds the clipped targets (2 × H × W) and the context stack of "
        "the input mix: scale 0 plus one undecimated filtered frame per coarser scale, "
        f"(H−1) × (W−1) each for reflect padding — 7 float32 frames, "
        f"{ex['bytes_per_frame'] / 2**20:.0f} MiB for 2720² (measured). "
        f"The {ex['train_val_gb_extrapolated']:.1f} GiB for training plus validation fit a "
        "24 GiB machine with room for the model: the input file is read lazily frame by frame "
        "(never whole), only the two target channels of the chosen frames are kept, and "
        "precomputation works on a few frames at a time (~50 MB of temporaries). Larger data "
        "can use `cache_frames=k` (levels computed on first use and kept for at most k "
        "frames, least recently used first).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--pavia-frames", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "data_pipeline.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "figures" / "data_pipeline.png")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(1)
        kind, cfg = args.child[0], json.loads(args.child[1])
        run = {"memory": run_critters_memory, "speed": run_critters_speed, "pavia": run_pavia}
        res = run[kind](cfg)
        sys.stdout.write(json.dumps(res) + "\n")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.frames, args.batches, args.pavia_frames = 60, 30, 1
    base = {"frames": args.frames, "size": args.size, "patch": 64, "scales": 5, "batch": 32,
            "batches": args.batches}
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                                f"{os.cpu_count()} logical CPUs", "critters": []}
    log.info("critters: batch rates, all configurations interleaved ...")
    speed = _child("speed", base)
    memory: dict = {}
    for label, pad, alignment, augment, loader in CONFIGS:
        if (pad, alignment) not in memory:
            log.info("critters: build %s / %s in a fresh process ...", alignment, pad)
            memory[pad, alignment] = _child("memory", {**base, "pad": pad,
                                                       "alignment": alignment})
        mem = memory[pad, alignment]
        r = {**base, "label": label, "pad": pad, "alignment": alignment, "augment": augment,
             "loader": loader, **mem, **speed[label]}
        log.info("  %.0f patches/s, precompute %.1f s, peak RSS %.2f GiB",
                 r["patches_per_s"], r["precompute_s"], r["peak_rss_gb"])
        results["critters"].append(r)
    log.info("PaviaATN geometry on %d real-size frames ...", args.pavia_frames)
    results["pavia"] = _child("pavia", {"pavia_frames": args.pavia_frames, "patch": 64,
                                        "scales": 5, "batch": 32, "batches": args.batches})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    _figure(results, args.figure)
    log.info("wrote %s and %s", args.out, args.figure)
    sys.stdout.write(_markdown(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
