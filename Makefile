# The two commands a new user needs: `make demo` and `make test`.
# Each creates .venv on first use. PyTorch is pinned first so no other step pulls a different build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.musplit-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(PY) -c "import torch, musplit; print('musplit', musplit.__version__, 'with torch', torch.__version__)"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/musplit demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
