"""Tiled-prediction throughput of the µSplit LadderVAE (issue 4, spec 8).

Predicts one ``size x size`` frame of random intensities with a randomly initialised model of the
paper's size (speed does not depend on the weights) through :func:`musplit.predict.predict_image`
(LC crops, batched network, MMSE, stitching: the whole path) and prints ONE JSON line:

    {"variant": ..., "grid": ..., "samples": ..., "size": ..., "megapixels_per_s": ...,
     "seconds": ..., "peak_rss_gb": ..., ...}

``seconds`` excludes a warm-up prediction on a small frame. ``peak_rss_gb`` is the process's
``ru_maxrss`` (so run each setting in a fresh process). Examples::

    .venv/bin/python bench/predict_speed.py --variant lean --grid 16 --samples 1 --size 2048
    .venv/bin/python bench/predict_speed.py --variant deep --grid 64 --samples 10 --size 256 \\
        --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time

import numpy as np
import torch

from musplit.config import Config
from musplit.data.normalize import NormStats
from musplit.models import build, count_parameters
from musplit.predict import predict_image

log = logging.getLogger("bench.predict_speed")


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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_cfg: dict = {"kind": args.kind, "lc": args.variant, "patch": args.patch}
    if args.filters:
        model_cfg["filters"] = args.filters
    if args.z:
        model_cfg["z_dims"] = [args.z] * (8 if args.variant == "deep" else 4)
    cfg = Config.validated({"model": model_cfg, "data": {"patch": args.patch, "pad": "reflect"}})
    model = build(cfg.model).to(args.device).eval()
    # Plausible statistics; they only shift and scale numbers.
    stats = NormStats(clip_max=1000.0, input_mean=100.0, input_std=50.0,
                      target_mean=[100.0] * cfg.model.out_channels,
                      target_std=[50.0] * cfg.model.out_channels,
                      alpha=[1.0 / cfg.model.out_channels] * cfg.model.out_channels)
    rng = np.random.default_rng(args.seed)
    image = rng.uniform(0, 300, (args.size, args.size)).astype(np.float32)
    kw = dict(padding=args.padding, grid=args.grid if args.padding != "none" else None,
              samples=args.samples, batch_size=args.batch_size, seed=args.seed,
              sample_batch=args.sample_batch, amp=args.amp, channels_last=args.channels_last)

    # Warm-up (first-call allocations, kernel selection) on a frame of a few tiles.
    predict_image(model, cfg, stats, image[: 2 * args.patch, : 2 * args.patch], **kw)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    pred = predict_image(model, cfg, stats, image, **kw)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert np.isfinite(pred.mean).all()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
        "tiles": pred.meta["tiles"],
        "batch_size": args.batch_size,
        "params": count_parameters(model),
        "filters": cfg.model.filters,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
