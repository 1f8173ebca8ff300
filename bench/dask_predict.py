"""Prediction of many images on Dask against the single-process path (issue 20, items 2-3).

One run, the same images and model for every row (a randomly initialised Lean-LC HVAE of 32
filters: speed does not depend on the weights), so the ratios are measured under the same load:

* **single process**: today's streaming path, ``Splitter.predict_to_zarr`` image after image,
  torch on every core;
* **Dask, 1 and 2 local workers**: ``predict_many(workers=N)``, the path of
  ``musplit predict MODEL INPUT... --out DIR --workers N`` (a ``LocalCluster`` on 127.0.0.1,
  one thread per worker, torch on ``cores // N`` threads each); wall time with and without
  the cluster's start (worker processes importing torch and loading the model);
* **a killed worker**: two workers of a ``LocalCluster``, one killed (SIGKILL) once a third of
  the blocks are done; Dask reschedules its blocks, and the output is compared with the
  single process's;
* **peak memory per worker**: each worker's peak resident memory as the blocks record it;
* **a dry-run plan** for 100 images of 8192 x 8192 (``plan_many`` on 100 empty Zarr arrays:
  blocks, tasks, output size) with the expected time per worker from the rate measured above.

Writes ``bench/results/dask_predict.json`` and ``dask_predict.md`` (a BENCHMARKS.md section,
``bench/run_all.py --only dask``). About two minutes on 2 cores::

    .venv/bin/python bench/dask_predict.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def make_checkpoint(path: Path, filters: int) -> Path:
    import torch

    from musplit.checkpoint import save_checkpoint
    from musplit.config import Config
    from musplit.data.normalize import NormStats
    from musplit.models import build

    cfg = Config.validated({
        "model": {"kind": "hvae", "lc": "lean", "filters": filters, "z_dims": [32] * 4,
                  "scales": 5, "patch": 64},
        "data": {"patch": 64, "scales": 5, "pad": "reflect"},
        "predict": {"grid": 32, "batch_size": 64}})
    torch.manual_seed(0)
    model = build(cfg.model).eval()
    stats = NormStats(clip_max=60.0, input_mean=10.0, input_std=6.0, target_mean=[10.0, 10.0],
                      target_std=[6.0, 6.0], alpha=[0.5, 0.5])
    return save_checkpoint(path, state_dict=model.state_dict(),
                           config=cfg.model_dump(mode="json"), stats=stats.to_dict())


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    from musplit.data import generate_critters
    from musplit.data.io import write_tiff

    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        mix = generate_critters(1, size, 25, seed=100 + i).mean(-1, keepdims=True)
        write_tiff(folder / f"img{i:02d}.tif", mix * 2, "SYXC")
        paths.append(folder / f"img{i:02d}.tif")
    return paths


def read_stores(folder: Path) -> dict[str, np.ndarray]:
    import zarr

    return {p.name: np.asarray(zarr.open_group(str(p), mode="r")["0"][...])
            for p in sorted(folder.glob("*.zarr"))}


def compare(a: dict, b: dict) -> dict:
    """Bit-for-bit equality and the largest difference of two sets of stores."""
    same = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    diff = max((float(np.abs(a[k] - b[k]).max()) for k in a if k in b), default=float("nan"))
    return {"identical": bool(same), "max_abs_diff": diff}


def processes(out: Path) -> list[dict]:
    """Per worker process over all images: blocks, tiles, compute seconds, peak RSS."""
    import zarr

    by: dict[int, dict] = {}
    for p in sorted(out.glob("*.zarr")):
        if p.name.endswith("_std.zarr"):
            continue
        for r in zarr.open_group(str(p), mode="r").attrs["musplit"]["processes"]:
            q = by.setdefault(r["pid"], {"pid": r["pid"], "blocks": 0, "tiles": 0,
                                         "seconds": 0.0, "peak_rss_mib": 0.0})
            q["blocks"] += r["blocks"]
            q["tiles"] += r["tiles"]
            q["seconds"] += r["seconds"]
            q["peak_rss_mib"] = max(q["peak_rss_mib"], r["peak_rss_mib"])
    return sorted(by.values(), key=lambda q: q["pid"])


def timed_lines():
    """A ``say`` that keeps each status line with the time it came."""
    lines: list[tuple[float, str]] = []
    return lines, lambda line: lines.append((time.perf_counter(), line))


def run_single(ckpt, paths, out: Path, threads: int, args) -> dict:
    import torch

    from musplit import Splitter

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    s = Splitter.load(ckpt)
    for p in paths:
        s.predict_to_zarr(str(p), out / f"{p.stem}.zarr", samples=args.samples,
                          block=args.block)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(old)
    return {"mode": f"single process, torch on {threads} thread(s)", "workers": 0,
            "torch_threads": threads, "seconds": seconds}


def run_dask(ckpt, paths, out: Path, workers: int, args) -> dict:
    from musplit.predict.distributed import predict_many

    lines, say = timed_lines()
    t0 = time.perf_counter()
    predict_many(ckpt, paths, out, workers=workers, samples=args.samples, block=args.block,
                 say=say)
    t1 = time.perf_counter()
    started = next(t for t, line in lines if line.startswith("Dask:"))
    procs = processes(out)
    return {"mode": f"Dask, {workers} worker(s) of {max(1, args.threads // workers)} "
                    "torch thread(s)", "workers": workers,
            "torch_threads": max(1, args.threads // workers), "seconds": t1 - t0,
            "seconds_after_start": t1 - started, "cluster_start_s": started - t0,
            "processes": procs}


def run_fault(ckpt, paths, out: Path, args) -> dict:
    from distributed import Client, LocalCluster

    from musplit.predict.distributed import predict_many

    killed: list[dict] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)

        def kill(done, total):
            if not killed and done >= total // 3:
                busy = [w for w, keys in client.processing().items() if keys] or list(pids)
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append({"after_blocks": done, "of_blocks": total,
                               "pid": pids[busy[0]], "was_busy": bool(client.processing()
                                                                       .get(busy[0]))})

        t0 = time.perf_counter()
        predict_many(ckpt, paths, out, scheduler=cluster.scheduler_address,
                     samples=args.samples, block=args.block, progress=kill)
        seconds = time.perf_counter() - t0
    return {"mode": "Dask, 2 workers, one killed", "workers": 2, "torch_threads": 1,
            "seconds": seconds,
            "killed": killed[0] if killed else None, "processes": processes(out)}


def dry_run(ckpt, folder: Path, n: int, size: int, block: int) -> dict:
    import zarr

    from musplit.predict.distributed import plan_many

    folder.mkdir(parents=True)
    for i in range(n):  # metadata only: no chunk is written, the arrays read as 0
        zarr.create_array(str(folder / f"big{i:03d}.zarr"), shape=(size, size),
                          chunks=(1024, 1024), dtype="float32", fill_value=0,
                          dimension_names=["y", "x"])
    plan = plan_many(ckpt, [folder], block=block)
    return {"images": len(plan.images), "size": size, "block": plan.block, "halo": plan.halo,
            "blocks": plan.blocks, "tasks": plan.blocks, "tiles": plan.tiles,
            "output_bytes": plan.output_bytes, "per_image_blocks": plan.images[0]["blocks"],
            "plan": plan}


def paper_rate() -> float | None:
    """Tiles per second of the paper-size Lean-LC (G = 32, one sample, 2 threads) from the
    stored prediction benchmark, when there is one."""
    path = RESULTS / "predict.json"
    if not path.exists():
        return None
    for r in json.loads(path.read_text()):
        if r.get("variant") == "lean" and r.get("grid") == 32 and r.get("samples") == 1 \
                and not r.get("stub") and not r.get("to_zarr") and r.get("megapixels_per_s"):
            return r["megapixels_per_s"] * 1e6 / 32**2
    return None


def stream_2048() -> dict | None:
    """The stored streaming run of the same model width with 2048² blocks (its whole-process
    peak is what one worker needs at the default block size), when there is one."""
    path = RESULTS / "predict.json"
    if not path.exists():
        return None
    return next((r for r in json.loads(path.read_text()) if r.get("to_zarr")
                 and not r.get("stub") and r.get("filters") == 32), None)


def _equal(eq: dict | None) -> str:
    if eq is None:
        return "—"
    return "bit for bit" if eq["identical"] else f"no: max abs diff {eq['max_abs_diff']:.2g}"


def section(res: dict) -> str:
    a = res["args"]
    rows = res["runs"]
    base = rows[0]["seconds"]
    out = [
        "## Many images on Dask (issue 20)", "",
        f"`bench/dask_predict.py`, one run: {a['images']} images of {a['size']}² "
        f"(SinosoidalCritters mixes) through a randomly initialised Lean-LC HVAE of "
        f"{a['filters']} filters ({res['params']:,} parameters), P = 64, G = 32, "
        f"{a['samples']} sample(s), blocks of {a['block']}² ({res['blocks']} blocks, "
        f"{res['tiles']} tiles). Single process: `Splitter.predict_to_zarr` image after "
        "image (today's streaming path); Dask: `predict_many(workers=N)`, the path of "
        "`musplit predict MODEL INPUT... --out DIR --workers N` (a LocalCluster on 127.0.0.1, "
        f"one task at a time per worker, torch on {a['threads']} // N threads each). Same "
        "images, same machine, same few minutes, so the ratios are the figures to read "
        f"(the machine has {a['threads']} cores, shared with other work: load average "
        f"{res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end).{_date(res)}", "",
        "| path | wall s | speed vs the first row | wall s once the cluster is up | "
        "cluster start s | tiles/s computing (sum over workers) | output equals the single process "
        "of the same torch threads |",
        "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        after, start = r.get("seconds_after_start"), r.get("cluster_start_s")
        rate = _rate(res, r["workers"], r["torch_threads"])
        out.append(f"| {r['mode']} | {r['seconds']:.1f} | {base / r['seconds']:.2f}× | "
                   f"{'—' if after is None else f'{after:.1f}'} | "
                   f"{'—' if start is None else f'{start:.1f}'} | {rate:.1f} | "
                   f"{_equal(r.get('equal'))} |")
    td = res["threads_diff"]
    out += ["", "The wall time of a Dask run includes what a worker does once: start its "
            "process, import torch and load the model (the first block's wait). On images "
            "this small that dominates; on many or large images the compute rate is what "
            "counts. On this shared machine torch's two threads compete with the other jobs "
            "for the two cores, which makes every 2-thread row erratic (compare the two "
            "single-process rows); the 1-thread rows are the steadier comparison: two workers "
            f"of one thread computed {_rate(res, 2):.1f} tiles/s together, one process of one "
            f"thread {_rate(res, 0, 1):.1f}: two cores leave nothing for a second worker to "
            "gain here; what more workers buy needs more cores than this machine has. "
            "Outputs are bit for bit equal whenever the processes run torch on the same "
            "number of threads (the last column); across thread counts they need not be "
            "(oneDNN may add a convolution's terms in another order); here the single "
            f"process on 1 and on {a['threads']} threads: {_equal(td)}.", ""]
    fault = res["fault"]
    k = fault["killed"]
    out += [f"**A killed worker.** Two workers; after {k['after_blocks']} of "
            f"{k['of_blocks']} blocks one worker process (busy with a block: "
            f"{'yes' if k['was_busy'] else 'no'}) was killed with SIGKILL. Dask rescheduled "
            f"its blocks on the other worker and the restarted one, and the run finished in "
            f"{fault['seconds']:.1f} s; output against the single process on one thread: "
            f"{_equal(fault['equal'])}.", "",
            "**Peak memory per worker** (resident: Python, torch, the model, one block with "
            "its context), as each block records it:", "",
            "| run | worker | blocks | tiles | compute s | tiles/s | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in [x for x in rows if x.get("processes")] + [fault]:
        for i, p in enumerate(r["processes"]):
            out.append(f"| {r['mode']} | {i + 1} | {p['blocks']} | {p['tiles']} | "
                       f"{p['seconds']:.1f} | {p['tiles'] / max(p['seconds'], 1e-9):.1f} | "
                       f"{p['peak_rss_mib']:.0f} |")
    d = res["dry_run"]
    big = res.get("stream_2048")
    mem = (f" With 2048² blocks the same model's streaming run peaked at "
           f"{big['peak_rss_gb']:.2f} GB for the whole process on a {big['size']}² frame "
           "(the tiled-prediction section): that is what a worker needs at the default "
           "block size, whatever the image's size." if big else "")
    out += ["", "A worker reads its block and the context around it and nothing else of the "
            "image, so its memory is set by the block." + mem, "",
            f"**Dry run: {d['images']} images of {d['size']} × {d['size']}** "
            "(`plan_many`, as `musplit predict MODEL INPUT... --out DIR --plan`, on "
            f"{d['images']} empty Zarr arrays; nothing predicted): {d['per_image_blocks']} "
            f"blocks of {d['block']}² (+{d['halo']} px of context each side) per image, "
            f"{d['tasks']:,} tasks, {d['tiles']:,} tiles of 32 px, output "
            f"{d['output_bytes'] / 2**30:.0f} GiB of float32 means (as much again with "
            "--std). Expected time at the compute rates measured above (blocks are "
            "independent: the time divides by the number of workers while there are more "
            "blocks than workers):", "",
            "| model and worker | tiles/s per worker | 1 worker | 2 workers | 16 workers | "
            "64 workers |", "|---|---:|---:|---:|---:|---:|"]
    for name, rate in res["rates"]:
        secs = [d["tiles"] / rate / n for n in (1, 2, 16, 64)]
        out.append(f"| {name} | {rate:.1f} | " + " | ".join(f"{x / 3600:.1f} h" for x in secs)
                   + " |")
    return "\n".join(out)


def _rate(res: dict, workers: int, threads: int | None = None) -> float:
    """Tiles per second of the run with ``workers`` workers, summed over them (0: the single
    process of ``threads`` torch threads, all tiles over its wall time)."""
    r = next(x for x in res["runs"] if x["workers"] == workers
             and (threads is None or x["torch_threads"] == threads))
    if not r.get("processes"):
        return res["tiles"] / r["seconds"]
    return sum(p["tiles"] / max(p["seconds"], 1e-9) for p in r["processes"])


def _date(res: dict) -> str:
    return f" Measured {res['date']}." if res.get("date") else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads of the single process (the cores a run may use)")
    ap.add_argument("--plan-images", type=int, default=100)
    ap.add_argument("--plan-size", type=int, default=8192)
    ap.add_argument("--render", action="store_true",
                    help="only rebuild dask_predict.md from the stored dask_predict.json")
    args = ap.parse_args()
    if args.render:
        res = json.loads((RESULTS / "dask_predict.json").read_text())
        (RESULTS / "dask_predict.md").write_text(section(res) + "\n")
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="musplit-dask-bench-"))
    load = [os.getloadavg()[0]]
    try:
        ckpt = make_checkpoint(tmp / "model.ckpt", args.filters)
        paths = make_images(tmp / "in", args.images, args.size)
        runs, refs = [], {}
        for threads in sorted({args.threads, 1}, reverse=True):
            print(f"single process, {threads} thread(s) ...", flush=True)
            runs.append(run_single(ckpt, paths, tmp / f"single{threads}", threads, args))
            refs[threads] = read_stores(tmp / f"single{threads}")
        for n in (1, 2):
            print(f"Dask, {n} worker(s) ...", flush=True)
            r = run_dask(ckpt, paths, tmp / f"dask{n}", n, args)
            r["equal"] = compare(read_stores(tmp / f"dask{n}"), refs[r["torch_threads"]])
            runs.append(r)
        print("Dask, 2 workers, one killed ...", flush=True)
        fault = run_fault(ckpt, paths, tmp / "fault", args)
        fault["equal"] = compare(read_stores(tmp / "fault"), refs[1])
        threads_diff = compare(refs[1], refs[args.threads])
        print("dry run ...", flush=True)
        d = dry_run(ckpt, tmp / "big", args.plan_images, args.plan_size, 2048)
        d.pop("plan")
        from musplit import Splitter

        s = Splitter.load(ckpt)
        one, two = (next(r for r in runs if r["workers"] == n) for n in (1, 2))
        rate_1 = sum(p["tiles"] for p in one["processes"]) / sum(
            p["seconds"] for p in one["processes"])
        rate_2 = sum(p["tiles"] for p in two["processes"]) / sum(
            p["seconds"] for p in two["processes"])
        rates = [(f"{args.filters} filters (this bench), a worker of {args.threads} threads",
                  rate_1),
                 (f"{args.filters} filters (this bench), a worker of "
                  f"{max(1, args.threads // 2)} thread(s), 2 on this machine",
                  rate_2)]
        pr = paper_rate()
        if pr:
            rates.append(("paper-size Lean-LC (tiled-prediction table), 2 threads", pr))
        from musplit.data.tiling import make_tiling

        tiling = make_tiling(s.config, "inner", 32)
        res = {"args": vars(args), "params": sum(p.numel() for p in s.model.parameters()),
               "blocks": args.images * (-(-args.size // args.block)) ** 2,
               "tiles": args.images * (-(-args.size // tiling.grid)) ** 2,
               "runs": runs, "fault": fault, "dry_run": d, "rates": rates,
               "threads_diff": threads_diff, "stream_2048": stream_2048(),
               "date": time.strftime("%Y-%m-%d"),
               "load": load + [os.getloadavg()[0]]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dask_predict.json").write_text(json.dumps(res, indent=1, default=float))
    (RESULTS / "dask_predict.md").write_text(section(res) + "\n")
    print(section(res))


if __name__ == "__main__":
    main()
