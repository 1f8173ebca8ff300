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
import json
import logging
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext

import musplit  # noqa: F401  (first: the CLI's OpenMP defaults, musplit.runtime)

# isort: split
import torch

from musplit import native
from musplit.losses import split_elbo
from musplit.models import ModelConfig, build, count_parameters

log = logging.getLogger("bench.train_step")


def tune_glibc_malloc() -> bool:
    """The allocator setting the musplit CLI applies (see musplit.runtime.tune_allocator)."""
    from musplit.runtime import tune_allocator

    return tune_allocator()


def _best_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (oneDNN primitive creation, page faults)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_peaks(dtype: torch.dtype, repeat: int = 5) -> dict:
    """This machine's attainable FLOP/s, measured now, with the step's threads and dtype.

    ``matmul``: a 2048³ matrix product. ``conv``: the µSplit workhorse, a channels_last 3×3
    convolution with 64 input and output channels on a batch of 32 64×64 maps, forward only
    (``conv``) and forward + backward (``conv_train``).
    The best of ``repeat`` runs is taken: the peak is what the hardware can do, not the average.
    """
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    mm = 2 * n**3 / _best_seconds(lambda: a @ b, repeat)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype=dtype,
                                                    memory_format=torch.channels_last)
    x = torch.randn(32, 64, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
    fwd_flops = 2 * 32 * 64 * 64 * 64 * 64 * 9
    with torch.no_grad():
        t_fwd = _best_seconds(lambda: conv(x), repeat)
    # The same convolution's backward (input and weight gradients, 2x the forward FLOPs) as
    # a training step runs it: forward + backward is the most a step's convolutions can reach.
    go = torch.randn_like(x)
    w = conv.weight
    t_bwd = _best_seconds(lambda: torch.ops.aten.convolution_backward(
        go, x, w, [64], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True]), repeat)
    return {"matmul_gflops": round(mm / 1e9, 1), "conv_gflops": round(fwd_flops / t_fwd / 1e9, 1),
            "conv_train_gflops": round(3 * fwd_flops / (t_fwd + t_bwd) / 1e9, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["none", "lean", "regular", "deep"], default="lean")
    ap.add_argument("--kind", choices=["hvae", "hae"], default="hvae")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--filters", type=int, default=None,
                    help="channels per layer (default: the paper's 64; cpu-small: 32)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels_last memory format (default on)")
    ap.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True,
                    help="glibc only: keep freed memory for reuse, as the musplit CLI does "
                         "(default on)")
    ap.add_argument("--flops", action="store_true",
                    help="count the step's FLOPs and measure this machine's peak in this run")
    ap.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                    help="use musplit.native's compiled elementwise kernels where they build "
                         "(default on, as the CLI does)")
    ap.add_argument("--compare-eager", type=int, default=0, metavar="N",
                    help="after the timed steps, N more pairs of steps alternating eager "
                         "PyTorch and the native kernels in this process: their speed ratio "
                         "is then free of the VM's drift")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if not args.native:
        os.environ["MUSPLIT_NATIVE"] = "0"
    if args.tune_malloc:
        tune_glibc_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg = ModelConfig(kind=args.kind, lc=args.variant, patch=args.patch,
                      **({"filters": args.filters, "z_dims": [args.filters] * 4}
                         if args.filters else {}))
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
    extra = {}
    if args.compare_eager and native.available():
        paired = {"0": [], "1": []}
        for _ in range(args.compare_eager):
            for flag in ("0", "1"):  # MUSPLIT_NATIVE is read at every kernel call
                os.environ["MUSPLIT_NATIVE"] = flag
                paired[flag].append(step())
        os.environ["MUSPLIT_NATIVE"] = "1"
        eager_s, native_s = statistics.median(paired["0"]), statistics.median(paired["1"])
        extra.update({"eager_step_s": round(eager_s, 3), "native_step_s": round(native_s, 3),
                      "native_speedup": round(eager_s / native_s, 3),
                      "compare_pairs": args.compare_eager})
    if args.flops:  # after the timed steps, so that it cannot raise the memory peak
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        peaks = machine_peaks(torch.bfloat16 if args.precision == "bf16" else torch.float32)
        achieved = flops / statistics.median(times) / 1e9
        extra.update({
            "gflop_per_step": round(flops / 1e9, 1), "achieved_gflops": round(achieved, 1),
            **peaks, "conv_utilisation": round(achieved / peaks["conv_gflops"], 3),
            "conv_train_utilisation": round(achieved / peaks["conv_train_gflops"], 3),
            "matmul_utilisation": round(achieved / peaks["matmul_gflops"], 3)})
    result = {
        "variant": args.variant,
        "kind": args.kind,
        "precision": args.precision,
        "batch": args.batch,
        "params": count_parameters(model),
        "step_s": round(statistics.median(times), 3),
        "peak_rss_gb": round(rss / 1024**2, 2),
        **({"cuda_max_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "openmp": musplit.runtime.prefer_passive_openmp(),
        "channels_last": args.channels_last,
        "device": device.type,
        "tune_malloc": args.tune_malloc,
        "native": native.available(),
        "torch": torch.__version__,
        "patch": args.patch,
        "step_times": [round(t, 3) for t in times],
        "load_avg": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d"),
        **extra,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
