"""The GPU measurements of issue 21 (item 5) and issue 20, as one prepared script for a lent
GPU machine: training steps (fp32 and bf16 autocast, batch 32, patch 64, the paper's models)
and prediction throughput (inner padding, G = 32) for the four LC variants, each in a fresh
process, with ``torch.cuda.max_memory_allocated`` beside the paper's memory column, and the same
steps on this machine's CPU for the ratio. Writes one JSON line per row to
bench/results/gpu.jsonl (or ``--out``)::

    python bench/gpu.py --device cuda --cpu-too        # on the GPU machine
    python bench/gpu.py --device cpu --quick           # a check of the script itself

It needs no network and nothing beyond musplit's own dependencies. The reference
implementation's step for the side-by-side ratio is not part of it (its code is not in this
repository); run it beside this script where it is installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VARIANTS = ["none", "lean", "regular", "deep"]
#: The paper's training GPU memory per variant (GiB, HVAE), for the comparison column.
PAPER_MEMORY_GIB = {"none": 2.8, "lean": 4.4, "regular": 11.1, "deep": 12.8}


def _row(cmd: list[str], timeout: int) -> dict:
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT.parent)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": last, "cmd": " ".join(cmd)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows(device: str, quick: bool, variants: list[str]) -> list[dict]:
    steps, size = ("1", "128") if quick else ("10", "2048")
    extra = ["--filters", "8", "--batch", "4"] if quick else []
    result = []
    for v in variants:
        for prec in ("fp32", "bf16"):
            r = _row([str(ROOT / "train_step.py"), "--variant", v, "--precision", prec,
                      "--steps", steps, "--device", device, *extra], 3600)
            result.append({"what": "train_step", "variant": v, "precision": prec,
                           "paper_memory_gib": PAPER_MEMORY_GIB[v], **r})
            print(json.dumps(result[-1]), flush=True)
        for amp in (None, "bf16"):
            r = _row([str(ROOT / "predict.py"), "--variant", v, "--grid", "32", "--size", size,
                      "--device", device, *(["--amp", amp] if amp else []),
                      *(["--filters", "8"] if quick else [])], 3600)
            result.append({"what": "predict", "variant": v, "precision": amp or "fp32", **r})
            print(json.dumps(result[-1]), flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cpu-too", action="store_true", help="the same rows on the CPU")
    ap.add_argument("--quick", action="store_true", help="tiny models: a check of the script")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu.jsonl")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    found = rows(args.device, args.quick, variants)
    if args.cpu_too and args.device != "cpu":
        found += [{**r, "reference_device": "cpu"} for r in rows("cpu", args.quick, variants)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in found))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
