"""bench/multi_structure.py end to end at a microscopic size (synthetic rows only: the
PartSegData rows train on a 1024 x 1024 image): files, table rows and finite numbers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "multi_structure.py"


def _bench():
    spec = importlib.util.spec_from_file_location("multi_structure_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_writes_the_section_the_figures_and_the_numbers(tmp_path):
    bench = _bench()
    results, figures = tmp_path / "results", tmp_path / "figures"
    code = bench.main(["--steps", "2", "--samples", "1", "--frames", "6", "--size", "64",
                       "--no-real", "--results", str(results), "--figures", str(figures)])
    assert code == 0
    rows = json.loads((results / "multi_structure.json").read_text())["rows"]
    assert [r["structures"] for r in rows] == [3, 4]
    for r in rows:
        assert r["names"] == ["filaments", "blobs", "puncta", "membranes"][:r["structures"]]
        for model in ("baseline", "lean"):
            for n in [*r["names"], "mean"]:
                assert math.isfinite(r[model]["ri_psnr"][n]["mean"])
    md = (results / "multi_structure.md").read_text()
    assert md.startswith("## Three and four structures (issue 18)")
    assert md.count("| synthetic, 4 structures |") == 5  # four channels and the mean
    for name in ("multi_structure.png", "multi_structure_split3.png",
                 "multi_structure_split4.png"):
        assert (figures / name).stat().st_size > 1000
    # --render rebuilds the section from the stored JSON alone
    (results / "multi_structure.md").unlink()
    assert bench.main(["--render", "--results", str(results), "--figures", str(figures)]) == 0
    assert (results / "multi_structure.md").read_text() == md
