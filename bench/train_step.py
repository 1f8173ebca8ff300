"""Seconds per training step of the µSplit LadderVAE at the paper's setting (issue 3).

One step = forward + split ELBO + backward + Adamax(lr 1e-3) step, batch 32, patch 64, on random
data. Prints ONE JSON line:

    {"variant": ..., "kind": ..., "precision": ..., "batch": ..., "params": ...,
     "step_s": <median over the timed steps>, "peak_rss_gb": <ru_maxrss of this process>, ...}

Run each variant in a fresh process so that peak memories do not mix, e.g.

    .venv/bin/python bench/train_step.py --variant regular --kind hvae --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import resource
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from musplit.losses import split_elbo
from musplit.models import ModelConfig, build, count_parameters

log = logging.getLogger("bench.train_step")


def tune_glibc_malloc() -> bool:
    """Make glibc reuse freed memory instead of returning it to the system.

    Activations of 32-128 MB are above glibc's largest mmap threshold (32 MB), so by default
    each one is a fresh mmap whose pages are faulted in (and zeroed) on first touch, then
    unmapped when freed; on a VM this costs about as much as the arithmetic around it. With
    mmap disabled and a large trim threshold the heap keeps and recycles that memory, at the
    price of a somewhat higher peak RSS. jemalloc/tcmalloc via LD_PRELOAD do the same.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["none", "lean", "regular", "deep"], default="lean")
    ap.add_argument("--kind", choices=["hvae", "hae"], default="hvae")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels_last memory format (default on)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="glibc only: keep freed memory for reuse (no mmap, no trimming)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.tune_malloc:
        tune_glibc_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg = ModelConfig(kind=args.kind, lc=args.variant, patch=args.patch)
    model = build(cfg).to(device).train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, cfg.scales, args.patch, args.patch, device=device)
    y = torch.randn(args.batch, cfg.out_channels, args.patch, args.patch, device=device)
    x = x.contiguous(memory_format=fmt)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if args.precision == "bf16" else nullcontext())

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
        loss, _ = split_elbo(out.params, y, out.kl, out.kl_elements)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "variant": args.variant,
        "kind": args.kind,
        "precision": args.precision,
        "batch": args.batch,
        "params": count_parameters(model),
        "step_s": round(statistics.median(times), 3),
        "peak_rss_gb": round(rss / 1024**2, 2),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "device": device.type,
        "tune_malloc": args.tune_malloc,
        "torch": torch.__version__,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
