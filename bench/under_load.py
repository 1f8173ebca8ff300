"""Speed on a busy machine (issue 21, item 1): training and prediction steps alone and with one
competing busy process pinned to one core, with the old OpenMP defaults and with musplit's.

Each measurement is a fresh process (``bench/train_step.py`` for a training step, this script's
``--child predict`` for a batch of prediction tiles), so that the OpenMP runtime starts with the
settings under test. *before*: the runtime's default wait policy (idle threads spin before they
sleep; ``MUSPLIT_OPENMP=default``); *after*: musplit's default (``OMP_WAIT_POLICY=PASSIVE``,
musplit.runtime). The competing process is a pure-Python busy loop pinned with
``os.sched_setaffinity`` to core 0, as another program a user runs would be. The forward conv peak
is measured alone in the same run, to tell how fast the machine was.

Writes bench/results/under_load.json and .md (a BENCHMARKS.md section)::

    .venv/bin/python bench/under_load.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
PY = sys.executable

#: (name, filters, batch): the cpu-small preset's model and the paper's, Lean-LC, patch 64.
MODELS = [("cpu-small Lean-LC", 32, 16), ("paper-size Lean-LC", 64, 32)]
#: (name, extra environment, threads) of the settings compared.
SETTINGS = [("before", {"MUSPLIT_OPENMP": "default"}, None),
            ("after", {}, None),
            ("after, 1 thread", {"MUSPLIT_THREADS": "1"}, 1)]


def _busy(core: int) -> None:  # pragma: no cover - runs in the competing process
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass
    while True:
        pass


def _child_predict(filters: int, batch: int, steps: int) -> dict:
    import musplit  # noqa: F401  (first: musplit's OpenMP defaults)
    # isort: split
    import torch

    from musplit.models import ModelConfig, build
    from musplit.runtime import apply_threads, cpu_settings

    apply_threads()
    torch.manual_seed(0)
    cfg = ModelConfig(kind="hvae", lc="lean", patch=64, filters=filters, z_dims=[filters] * 4)
    model = build(cfg).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, cfg.scales, 64, 64).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(steps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return {"step_s": round(statistics.median(times), 4), "threads": torch.get_num_threads(),
            "cpu": cpu_settings(), "step_times": [round(t, 4) for t in times]}


def _run(kind: str, filters: int, batch: int, steps: int, env_extra: dict,
         threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "MUSPLIT_OPENMP", "MUSPLIT_THREADS")}
    env.update(env_extra)
    if kind == "train":
        cmd = [PY, str(ROOT / "train_step.py"), "--variant", "lean", "--filters", str(filters),
               "--batch", str(batch), "--steps", str(steps)]
        if threads:
            cmd += ["--threads", str(threads)]
    else:
        cmd = [PY, str(Path(__file__).resolve()), "--child", "predict", "--filters",
               str(filters), "--batch", str(batch), "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _conv_peak() -> float:
    out = subprocess.run([PY, "-c", "import musplit, json, sys; sys.path.insert(0, 'bench'); "
                          "from train_step import machine_peaks; import torch; "
                          "print(json.dumps(machine_peaks(torch.float32)))"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["conv_gflops"]


def measure(train_steps: int, predict_steps: int, paper_steps: int) -> dict:
    rows = []
    peak_alone = _conv_peak()
    for load in ("alone", "one core busy"):
        busy = None
        if load != "alone":
            busy = mp.get_context("spawn").Process(target=_busy, args=(0,), daemon=True)
            busy.start()
            time.sleep(1.0)
        try:
            for model, filters, batch in MODELS:
                for kind in ("train", "predict"):
                    steps = (train_steps if filters == 32 else paper_steps) \
                        if kind == "train" else predict_steps
                    pbatch = 64 if kind == "predict" else batch
                    for name, env, threads in SETTINGS:
                        r = _run(kind, filters, pbatch, steps, env, threads)
                        rows.append({"load": load, "model": model, "kind": kind,
                                     "setting": name, "batch": pbatch, "step_s": r["step_s"],
                                     "threads": r["threads"],
                                     "openmp": r.get("openmp") or r.get("cpu", "")})
                        print(f"{load:14s} {model:20s} {kind:7s} {name:16s} "
                              f"{r['step_s']:8.3f} s", flush=True)
        finally:
            if busy is not None:
                busy.terminate()
                busy.join()
    return {"rows": rows, "conv_peak_gflops": peak_alone, "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_at_end": round(os.getloadavg()[0], 2)}


def render(res: dict) -> str:
    rows = res["rows"]

    def get(load, model, kind, setting):
        (r,) = [r for r in rows if (r["load"], r["model"], r["kind"], r["setting"]) ==
                (load, model, kind, setting)]
        return r["step_s"]

    lines = ["## A busy machine (issue 21, item 1)", "",
             f"Measured {res['date']} on {res['cores']} cores; forward 3×3-conv peak "
             f"{res['conv_peak_gflops']:.0f} GFLOP/s alone in the same run "
             "(`bench/under_load.py`). Seconds per step, median of the timed steps, each in a "
             "fresh process; *one core busy*: a pure-Python busy loop pinned to core 0 for the "
             "whole row. *before*: the OpenMP runtime's default wait policy (idle threads spin "
             "before sleeping); *after*: musplit's default, `OMP_WAIT_POLICY=PASSIVE` "
             "(musplit.runtime), 2 threads; slowdown = busy / alone (2.0 is what losing half the "
             "CPU costs in proportion).", "",
             "| model | step | setting | alone (s) | one core busy (s) | slowdown |",
             "|---|---|---|---|---|---|"]
    for model, _, _ in MODELS:
        for kind in ("train", "predict"):
            for name, _, _ in SETTINGS:
                a = get("alone", model, kind, name)
                b = get("one core busy", model, kind, name)
                what = "training step" if kind == "train" else "prediction, 64 tiles"
                lines.append(f"| {model} | {what} | {name} | {a:.3f} | {b:.3f} | "
                             f"{b / a:.1f}× |")
    cost = [get("alone", m, k, "after") / get("alone", m, k, "before") - 1
            for m, _, _ in MODELS for k in ("train", "predict")]
    gain = [1 - get("one core busy", m, k, "after") / get("one core busy", m, k, "before")
            for m, _, _ in MODELS for k in ("train", "predict")]
    pairs = [(m, k) for m, _, _ in MODELS for k in ("train", "predict")]
    worst = max(get("one core busy", m, k, "after") / get("alone", m, k, "after")
                for m, k in pairs)
    one = [get("alone", m, k, "after, 1 thread") / get("alone", m, k, "after") for m, k in pairs]
    lines += ["", f"With one core busy, sleeping threads make the steps {100 * min(gain):.0f}-"
              f"{100 * max(gain):.0f} % faster and the slowdown at most {worst:.1f}× "
              "(proportional to the CPU lost); on an idle machine they cost "
              f"{100 * min(cost):+.0f} to {100 * max(cost):+.0f} % (a wake-up at each parallel "
              "region; within the run-to-run noise for the paper-size model). One thread is "
              f"as fast as two with a core busy but {min(one):.1f}-{max(one):.1f}× slower "
              "alone, so the default stays one thread per core."]
    lines += ["", "Why: PyTorch's CPU kernels run on an OpenMP pool, and a thread that finishes "
              "its share of a parallel region spins before it sleeps. When another program holds "
              "a core, the thread that shares it with that program lags, and the spinning ones "
              "take the CPU time it needs, thousands of times per step. With passive waiting the "
              "idle threads sleep at once. `OMP_WAIT_POLICY` is read when the runtime loads, so "
              "musplit sets it on import (before torch); a value the user set is kept, and "
              "`MUSPLIT_OPENMP=default` restores the runtime's default. `MUSPLIT_THREADS=N` "
              "sets the thread count (default: PyTorch's, capped at the cores the process may "
              "use); data loading stays in the main process (`train.num_workers: 0`), so no "
              "loader workers compete with the compute threads."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["predict"], help=argparse.SUPPRESS)
    ap.add_argument("--filters", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--paper-steps", type=int, default=3)
    ap.add_argument("--predict-steps", type=int, default=5)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child_predict(args.filters, args.batch, args.steps)))
        return 0
    RESULTS.mkdir(exist_ok=True)
    if not args.render:
        res = measure(args.train_steps, args.predict_steps, args.paper_steps)
        (RESULTS / "under_load.json").write_text(json.dumps(res, indent=1))
    res = json.loads((RESULTS / "under_load.json").read_text())
    (RESULTS / "under_load.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
