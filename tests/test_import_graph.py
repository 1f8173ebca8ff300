"""The package's import graph: data flows one way and nothing imports in a circle.

Every ``import`` of a musplit module in ``src/musplit`` (module level and inside functions) is
an edge. A module may import modules of its own layer or of lower layers only (the order of
``LAYERS``), and the module graph may have no cycle. The lazy ``__getattr__`` loaders of a
package (PEP 562) and the compatibility re-exports at old import paths are the exceptions,
listed below with their reason. See the README, "How the code is laid out".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Lowest first. A module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("musplit", "musplit.errors", "musplit.files", "musplit.native", "musplit.runtime"),
    ("musplit.config", "musplit.models.config", "musplit.pretrain.config",
     "musplit.pretrain.pretext_config", "musplit.metrics"),
    ("musplit.data",),
    ("musplit.data.context",),
    ("musplit.data.patches", "musplit.data.dataset", "musplit.data.tiling"),
    ("musplit.noise",),  # noise models; their figure musplit.noise.plot is in the figures layer
    ("musplit.models",),
    ("musplit.checkpoints", "musplit.checkpoint"),
    ("musplit.losses",),
    # Self-supervised pre-training and the cell detector it is evaluated on share one layer:
    # the detector is the pretext network of the CNN variant, and detection fine-tunes a
    # pre-trained encoder. Inside it, the cycle test below still applies. The encoder
    # transfer into a µSplit model reads a pre-training result, so it sits here too.
    ("musplit.pretrain", "musplit.detect", "musplit.checkpoints.transfer"),
    ("musplit.training", "musplit.training_logs", "musplit.training_progress",
     "musplit.training_resume"),
    ("musplit.predict", "musplit.splitter", "musplit.doubledip"),
    ("musplit.bmz",),  # the Model Zoo export: a whole prediction as one traced module
    ("musplit.calibration",),  # fits the std that prediction then applies (musplit.predict)
    ("musplit.evaluation",),
    ("musplit.figures", "musplit.report", "musplit.noise.plot"),
    ("musplit.demo", "musplit.demo_real"),
    # The napari plugin: widgets over training and prediction, sample data from the demos.
    # Nothing below imports it, so musplit works without napari.
    ("musplit.napari_plugin",),
    ("musplit.cli", "musplit.__main__"),
]

#: Old import paths kept as thin re-exports of code that moved up the flow. Nothing in
#: ``src`` may import them (checked below); users and old scripts may.
COMPAT = {
    "musplit.pretrain.cli_pretrain": "moved to musplit.cli.pretrain",
    "musplit.pretrain.cli_detect": "moved to musplit.cli.detect",
    "musplit.pretrain.synth": "moved to musplit.detect",
    "musplit.pretrain.detection": "moved to musplit.detect",
    "musplit.models.official": "moved to musplit.checkpoints.reference",
    "musplit.report": "renamed musplit.figures",
    "musplit.config_flags": "moved to musplit.config.flags",
    "musplit.predict.contract": "prediction asks models through musplit.models.protocol",
}

#: Imports against the flow that stay, each for a stated reason.
ALLOWED_BACKWARD = {
    # The default token mask is decided by the objective's registry (torch code); the
    # config imports it only when a config leaves the mask unset.
    ("musplit.config.pretext", "musplit.pretrain.objectives"),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "musplit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _lazy_loader_nodes(tree: ast.Module) -> set[int]:
    skip = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _edges() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        skip = _lazy_loader_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                for alias in node.names:  # `from pkg import submodule` is an edge to it
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in mods else base)
            for t in targets:
                if t.split(".")[0] != "musplit":
                    continue
                r = _resolve(t, mods)
                if r and r != mod:
                    edges[mod].add(r)
    return edges


def _layer(mod: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"{mod} is in no layer of tests/test_import_graph.py"
    return level


def test_every_module_has_a_layer():
    for mod in _modules():
        _layer(mod)


def test_no_import_goes_against_the_flow():
    bad = []
    for mod, targets in _edges().items():
        if mod in COMPAT:
            continue
        for t in targets:
            if _layer(t) > _layer(mod) and (mod, t) not in ALLOWED_BACKWARD:
                bad.append(f"{mod} (layer {_layer(mod)}) imports {t} (layer {_layer(t)})")
    assert not bad, "imports against the flow:\n" + "\n".join(sorted(bad))


def test_nothing_in_src_imports_an_old_path():
    users = [f"{m} imports {t}" for m, ts in _edges().items() for t in ts
             if t in COMPAT and m not in COMPAT]
    assert not users, "\n".join(sorted(users))


def test_no_import_cycle():
    edges = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_a_backward_import(tmp_path, monkeypatch):
    """The walk is real: a planted backward import is found."""
    pkg = tmp_path / "musplit"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "data" / "io.py").write_text("def f():\n    from musplit.cli import main\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path, raising=False)
    globals()["SRC"], old = tmp_path, SRC
    try:
        edges = _edges()
    finally:
        globals()["SRC"] = old
    assert edges["musplit.data.io"] == {"musplit.cli"}
    assert _layer("musplit.cli") > _layer("musplit.data.io")
