"""bench/compare_methods.py with a budget of seconds: every kind of method, files, sections."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "compare_methods.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_methods", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--size", "tiny", "--frames", "12", "--frame-size", "96", "--patch", "32",
        "--batch-size", "4", "--test-frames", "1", "--threads", "1", "--budget-seconds", "1"]


def test_every_method_has_a_valid_config_at_every_size(compare):
    import argparse

    for size in compare.SIZES:
        args = argparse.Namespace(size=size, frame_size=256, patch=64, frames=20, connector=25,
                                  pairing="shared-low", nll_beta=1.0, seed=0, batch_size=32)
        for name in compare.METHODS:
            if name != "double-dip":
                cfg = compare.make_config(name, args)
                assert cfg.model.patch == (256 if name == "unet" else 64)
    args.size = "small"
    small = compare.make_config("unet-lc", args)
    assert small.model.filters == 16 and small.model.scales == 5
    args.size = "paper"
    assert compare.make_config("hvae-deep", args).model.z_dims == [128] * 8


def test_a_tiny_budget_run_writes_results_and_its_section(compare, tmp_path):
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text("# Benchmarks\n\n## Training step (issue 3)\n\nkept\n\n"
                        f"{compare.SECTION}\n\nold table\n\n## Later section\n\nalso kept\n")
    results = tmp_path / "results"
    methods = "hvae-lean,unet,bravenet,double-dip"
    assert compare.main([*TINY, "--methods", methods, "--in-process", "--results",
                         str(results), "--benchmarks", str(bench_md)]) == 0
    data = json.loads((results / "compare_methods.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == methods.split(",")
    for r in rows.values():
        assert r["steps"] >= 1 and r["params"] > 0 and len(r["ri_psnr"]) == 2
        assert r["step_s"] > 0 and -1 <= r["ssim_mean"] <= 1
    assert rows["unet"]["patch"] == 96  # the plain U-Net trains on whole frames
    assert rows["double-dip"]["iterations_per_crop"] >= 1
    text = bench_md.read_text()
    assert "kept" in text and "also kept" in text and "old table" not in text
    assert text.count(compare.SECTION) == 1 and "| BRAVE-NET | 32 |" in text
    assert (results / "compare_methods.md").read_text().startswith(compare.SECTION)


def test_methods_run_in_their_own_process_by_default(compare, tmp_path):
    assert compare.main([*TINY, "--methods", "bravenet", "--results", str(tmp_path),
                         "--no-benchmarks"]) == 0
    row = json.loads((tmp_path / "compare_methods.json").read_text())["rows"][0]
    assert row["peak_step_memory_gb"] is not None and row["peak_step_memory_gb"] >= 0


def test_unknown_methods_are_refused(compare):
    with pytest.raises(SystemExit):
        compare.main(["--methods", "unet,nope"])
