"""bench/pcmc.py end to end at a microscopic size: files, every objective and fraction, the
BENCHMARKS.md section replaced in place; the plan and the ordering statements."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pcmc.py"

TINY = ["--threads", "1", "--quiet",
        "--image-size", "64", "--frame-size", "64", "--pool-frames", "2", "--train-frames", "8",
        "--test-frames", "2", "--pretrain-steps", "2", "--finetune-steps", "2",
        "--split-frame-size", "64", "--split-pool-frames", "4", "--split-test-frames", "2",
        "--split-filters", "4", "--split-latent", "4", "--split-patch", "32",
        "--split-pretrain-steps", "2", "--split-steps", "2", "--split-objectives", "pcolor,mae"]


@pytest.fixture(scope="module")
def pcmc():
    spec = importlib.util.spec_from_file_location("pcmc_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_writes_every_objective_and_fraction(pcmc, tmp_path):
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text("# Benchmarks\n\n## Training step (issue 3)\n\nkept\n\n"
                        f"{pcmc.SECTION}\n\nold table\n\n## Later section\n\nalso kept\n")
    results = tmp_path / "results"
    fig = tmp_path / "figures" / "pcmc_map.png"
    assert pcmc.main([*TINY, "--results", str(results), "--benchmarks", str(bench_md),
                      "--figure", str(fig)]) == 0

    data = json.loads((results / "pcmc.json").read_text())  # strict JSON: no NaN
    assert data["meta"]["plan"]["det_pretrain"] == 2 and data["meta"]["machine"]
    det = data["detection"]
    cells = {(r["init"], r["fraction"]) for r in det["rows"]}
    assert cells == {(k, f) for k in pcmc.INITS for f in pcmc.FRACTIONS}
    for r in det["rows"]:
        assert 0 <= r["map"] <= 1 and 0 <= r["map_50"] <= 1 and r["steps"] == 2
        assert r["n_labelled"] == (8 if r["fraction"] == 1.0 else 1)
        assert (r["loaded"] > 0) == (r["init"] != "random")  # pre-trained weights were used
    pre = {r["init"]: r for r in det["pretrain"]}
    assert pre["random"]["steps"] == 0 and pre["pcolor-nomask"]["mask"] == "none"
    assert pre["pcolor"]["mask"] == "tokens" and pre["mae"]["objective"] == "mae"
    assert all(pre[k]["steps"] == 2 for k in pcmc.INITS if k != "random")
    assert [o["fraction"] for o in det["ordering"]] == list(pcmc.FRACTIONS)
    assert set(det["pool_presets"]) == set(pcmc._preset_names()) - {"sim_nuclei"}

    spl = data["splitting"]
    assert {(r["init"], r["n"]) for r in spl["rows"]} == {
        (i, n) for i in ("pcolor", "mae", "random") for n in (1, 4)}
    assert all(r["psnr"] == r["psnr"] for r in spl["rows"])  # finite
    idx = spl["indices"]
    assert not set(idx["pool"]) & set(idx["labelled"] + idx["val"] + idx["test"])
    assert [o["n"] for o in spl["ordering"]] == [1, 4]

    section = (results / "pcmc.md").read_text()
    assert section.startswith(pcmc.SECTION)
    for label, _ in pcmc.INITS.values():
        assert f"| {label} |" in section
    for f in ("1 %", "10 %", "100 %"):
        assert f"mAP {f}" in section and f"mAP50 {f}" in section and f"- {f} labels:" in section
    assert "| N = 1 | N = 4 |" in section and "| MAE-like |" in section
    assert "Paper's ordering" in section and "- N = 4:" in section
    assert fig.is_file() and "(figures/pcmc_map.png)" in section

    text = bench_md.read_text()
    assert "kept" in text and "also kept" in text and "old table" not in text
    assert text.count(pcmc.SECTION) == 1
    assert text.index("## Training step") < text.index(pcmc.SECTION) < text.index("## Later")


def test_replace_section_appends_or_replaces_in_place(pcmc):
    new = f"{pcmc.SECTION}\n\nnew body\n"
    assert pcmc.replace_section("# B\n\n## A\n\na\n", new) == f"# B\n\n## A\n\na\n\n{new}"
    last = pcmc.replace_section(f"# B\n\n## A\n\na\n\n{pcmc.SECTION}\n\nold\n", new)
    assert last == f"# B\n\n## A\n\na\n\n{new}"
    mid = pcmc.replace_section(f"## A\n\n{pcmc.SECTION}\n\nold\n### sub\nold\n\n## C\n\nc\n",
                               new)
    assert mid == f"## A\n\n{new}\n## C\n\nc\n"


def test_plan_scales_with_the_budget_and_takes_overrides(pcmc):
    def plan(*argv):
        return pcmc.plan(pcmc.build_parser().parse_args(list(argv)))

    small, default, large = plan("--budget-minutes", "5"), plan(), plan("--budget-minutes", "60")
    for key in ("det_pretrain", "det_finetune", "split_finetune"):
        assert small[key] >= 1, key
        assert small[key] < default[key], key  # more minutes, more steps
        assert default[key] < large[key], key
    # Encoder pre-training steps grow with the budget until a second objective (MAE) joins
    # at 40 minutes and takes its share.
    assert small["split_pretrain"] >= 1
    assert small["split_pretrain"] < default["split_pretrain"]
    assert large["split_pretrain"] >= 1
    assert default["split_objectives"] == ["pcolor"] and large["split_objectives"] == [
        "pcolor", "mae"]
    assert abs(default["estimated_s"] - 1200) < 60
    fixed = plan("--pretrain-steps", "7", "--split-steps", "3", "--split-n", "2")
    assert fixed["det_pretrain"] == 7 and fixed["split_finetune"] == 3
    assert fixed["split_n"] == [2]


def test_ordering_statements(pcmc):
    values = {"pcolor": 0.5, "pcolor-nomask": 0.3, "mae": 0.4, "edge": 0.45, "simclr": 0.2,
              "random": 0.1}
    rows = [{"init": k, "fraction": f, "map": v * (1.1 - f)} for k, v in values.items()
            for f in pcmc.FRACTIONS]
    rows = [r if not (r["init"] == "simclr" and r["fraction"] == 1.0) else {**r, "map": 0.0}
            for r in rows]
    out = pcmc.detection_ordering(rows)
    assert [o["paper_ordering_held"] for o in out] == [True, True, False]
    assert out[0]["ranking"][:2] == ["pcolor", "edge"] and out[0]["gap_shrinks_with_labels"]
    failed = [c["claim"] for c in out[2]["checks"] if not c["held"]]
    assert failed == ["SimCLR > Random init"]
    assert pcmc._ranking([("a", 0.4), ("b", 0.4), ("c", 0.1)], ".2f") == "a 0.40 = b 0.40 > c 0.10"

    split = [{"init": "pcolor", "n": 1, "psnr": 20.0, "psnr_sem": 0.1},
             {"init": "random", "n": 1, "psnr": 18.0, "psnr_sem": 0.1},
             {"init": "pcolor", "n": 4, "psnr": 20.0, "psnr_sem": 1.0},
             {"init": "random", "n": 4, "psnr": 19.5, "psnr_sem": 1.0}]
    verdicts = [o["checks"][0]["verdict"] for o in pcmc.split_ordering(split, ["pcolor"])]
    assert verdicts == ["held", "inconclusive"]
