# The two commands a new user needs: `make demo` and `make test` (and `make demo-real` for the
# real-data example). Each creates .venv on first use. PyTorch is pinned first so no other step
# pulls a different build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.musplit-installed
EXAMPLES := $(VENV)/.musplit-examples
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo demo-real test bench lint setup examples clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(PY) -c "import torch, musplit; print('musplit', musplit.__version__, 'with torch', torch.__version__)"
	@touch $(STAMP)

# The optional extra `musplit[examples]`: PartSegData's real confocal stack (BSD-3, ~10 MB).
examples: $(EXAMPLES)

$(EXAMPLES): $(STAMP)
	$(PY) -m pip install --quiet -e '.[examples]'
	@touch $(EXAMPLES)

demo: $(STAMP)
	$(VENV)/bin/musplit demo --out runs/demo

demo-real: $(EXAMPLES)
	$(VENV)/bin/musplit demo --real --out runs/demo-real

# The tests of the real-data example run too, so the examples extra is installed.
test: $(EXAMPLES)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(EXAMPLES)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
