"""Tiled-prediction throughput of the µSplit LadderVAE (issue 4, spec 8).

Predicts one ``size x size`` frame of random intensities with a randomly initialised model of the
paper's size (speed does not depend on the weights) through :func:`musplit.predict.predict_image`
(LC crops, batched network, MMSE, stitching: the whole path) and prints ONE JSON line:

    {"variant": ..., "grid": ..., "samples": ..., "size": ..., "megapixels_per_s": ...,
     "seconds": ..., "peak_rss_gb": ..., ...}

``seconds`` excludes a warm-up prediction on a small frame. ``peak_rss_gb`` is the process's
``ru_maxrss`` (so run each setting in a fresh process).

``--stub`` replaces the network by a zero-cost stand-in (its input's scale 0 as the means): what
remains is the pipeline itself (LC crops, normalisation, MMSE statistics, stitching).
``--to-zarr`` writes the frame to a temporary Zarr store and predicts it with
:func:`musplit.predict.predict_to_zarr` (block by block, bounded memory). Examples::

    .venv/bin/python bench/predict.py --variant lean --grid 16 --samples 1 --size 2048
    .venv/bin/python bench/predict.py --variant deep --grid 64 --samples 10 --size 256 \\
        --threads 2
    .venv/bin/python bench/predict.py --stub --to-zarr --size 16384 --grid 32
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from musplit.config import Config
from musplit.data.normalize import NormStats
from musplit.models import build, count_parameters
from musplit.predict import Prediction, make_tiling, predict_image, predict_to_zarr

log = logging.getLogger("bench.predict")


class Stub(torch.nn.Module):
    """Zero-cost stand-in: scale 0 of the input as both means, log-variance 0."""

    stochastic = False  # one pass stands for every sample

    def __init__(self, channels: int = 2):
        super().__init__()
        self.c = channels

    def forward(self, x):
        mu = x[:, :1].expand(-1, self.c, -1, -1)
        return torch.cat([mu, torch.zeros_like(mu)], 1)


def encoder_share(model, cfg, args, repeat: int = 3) -> dict:
    """Seconds of the bottom-up and of one top-down pass on a batch of tiles, and the cost of
    10 samples against 1 that running the encoder once allows at best:
    ``(e + 10 d) / (e + d)``. The measured ratio can only approach this floor."""
    from contextlib import nullcontext

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    amp = (torch.autocast(args.device.split(":")[0], dtype=dtype) if dtype else nullcontext())
    x = torch.randn(args.batch_size, cfg.model.scales, args.patch, args.patch,
                    device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def timed(fn):
        fn()
        best = float("inf")
        for _ in range(repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    with torch.no_grad(), amp:
        state = model.encode(x)
        enc = timed(lambda: model.encode(x))
        dec = timed(lambda: model.decode(state, compute_kl=False))
    return {"encode_s": round(enc, 6), "decode_s": round(dec, 6),
            "encoder_share": round(enc / (enc + dec), 3),
            "floor_10_vs_1": round((enc + 10 * dec) / (enc + dec), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["none", "lean", "regular", "deep"], default="lean")
    ap.add_argument("--kind", choices=["hvae", "hae"], default="hvae")
    ap.add_argument("--padding", choices=["inner", "outer", "none"], default="inner")
    ap.add_argument("--grid", type=int, default=16, help="tile size G (inner padding)")
    ap.add_argument("--samples", type=int, default=1, help="MMSE samples")
    ap.add_argument("--size", type=int, default=2048, help="frame side in pixels")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--filters", type=int, default=None, help="trunk width (paper: 64)")
    ap.add_argument("--z", type=int, default=None, help="latent channels per level (paper: 128)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=None,
                    help="top-down passes per decoder call (default: automatic)")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last memory layout (default on)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--stub", action="store_true", help="zero-cost model: pipeline only")
    ap.add_argument("--to-zarr", action="store_true", help="stream through predict_to_zarr")
    ap.add_argument("--block", type=int, default=2048, help="predict_to_zarr block side")
    ap.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                    help="after the run, measure the CPU's 3x3-conv peak (GFLOP/s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True,
                    help="glibc allocator tuned for reuse, as the musplit CLI does (default on)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    if args.tune_malloc:
        from musplit.runtime import tune_allocator

        tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_cfg: dict = {"kind": args.kind, "lc": args.variant, "patch": args.patch}
    if args.filters:
        model_cfg["filters"] = args.filters
    if args.z:
        model_cfg["z_dims"] = [args.z] * (8 if args.variant == "deep" else 4)
    cfg = Config.validated({"model": model_cfg, "data": {"patch": args.patch, "pad": "reflect"}})
    model = (Stub(cfg.model.out_channels) if args.stub else build(cfg.model)).to(args.device)
    model.eval()
    # Plausible statistics; they only shift and scale numbers.
    stats = NormStats(clip_max=1000.0, input_mean=100.0, input_std=50.0,
                      target_mean=[100.0] * cfg.model.out_channels,
                      target_std=[50.0] * cfg.model.out_channels,
                      alpha=[1.0 / cfg.model.out_channels] * cfg.model.out_channels)
    rng = np.random.default_rng(args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="musplit-bench-")
    if args.to_zarr:
        # The input lives on disk, written band by band: the process never holds the frame,
        # so peak_rss_gb is what predict_to_zarr itself needs.
        import zarr

        image = zarr.create_array(str(Path(tmp.name) / "in.zarr"), shape=(args.size,) * 2,
                                  chunks=(1024, 1024), dtype="float32")
        for r in range(0, args.size, 1024):
            band = min(1024, args.size - r)
            image[r : r + band] = rng.uniform(0, 300, (band, args.size)).astype(np.float32)
    else:
        image = rng.uniform(0, 300, (args.size, args.size)).astype(np.float32)
    kw = dict(padding=args.padding, grid=args.grid if args.padding != "none" else None,
              samples=args.samples, batch_size=args.batch_size, seed=args.seed,
              sample_batch=args.sample_batch, amp=args.amp, channels_last=args.channels_last)

    # Warm-up (first-call allocations, kernel selection) on a frame of a few tiles.
    predict_image(model, cfg, stats, np.asarray(image[: 2 * args.patch, : 2 * args.patch]), **kw)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if args.to_zarr:
        out = predict_to_zarr(model, cfg, stats, image, Path(tmp.name) / "out.zarr",
                              block=args.block, **kw)
        t = make_tiling(cfg, args.padding, kw["grid"])
        rows, cols = t.shape(args.size, args.size)
        pred = Prediction(np.zeros(0), meta={"grid": t.grid, "tiles": rows * cols})
        del out
    else:
        pred = predict_image(model, cfg, stats, image, **kw)
        assert np.isfinite(pred.mean).all()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tmp.cleanup()
    split = {}
    if not args.stub and args.kind == "hvae" and not args.to_zarr:
        split = encoder_share(model, cfg, args)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.probe and args.device == "cpu":
        # The VM's speed right now (after the peak-memory reading): a 2-core VM's speed can
        # change by 2x between runs, and this says which state a row was measured in.
        from train_step import machine_peaks

        split["conv_gflops"] = machine_peaks(torch.float32, repeat=3)["conv_gflops"]
    print(json.dumps({
        "variant": args.variant,
        "kind": args.kind,
        "padding": args.padding,
        "grid": pred.meta["grid"],
        "samples": args.samples,
        "size": args.size,
        "megapixels_per_s": round(args.size**2 / 1e6 / seconds, 5),
        "seconds": round(seconds, 3),
        "peak_rss_gb": round(rss_kb / 2**20, 3),
        **({"cuda_max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "gpu": torch.cuda.get_device_name()} if args.device.startswith("cuda") else {}),
        "tiles": pred.meta["tiles"],
        "batch_size": args.batch_size,
        "params": 0 if args.stub else count_parameters(model),
        "filters": cfg.model.filters,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "stub": args.stub,
        "to_zarr": args.to_zarr,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "tune_malloc": args.tune_malloc,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        **split,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
