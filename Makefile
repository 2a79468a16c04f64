# One-command setup: `make serve` and `make test` create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch's CPU-only wheel index, used when it answers (3 s): a plain PyPI setup never pulls
# CUDA wheels. Offline or behind a mirror, the pinned torch comes from pip's own config.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_FROM := $(shell curl -sfI --max-time 3 $(TORCH_INDEX)/torch/ >/dev/null 2>&1 && \
	echo --index-url $(TORCH_INDEX))
RUNTIME_STAMP := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000

.PHONY: install install-runtime serve test lint unit integration bench bench-smoke clean

# What the server needs, nothing more (`make serve`).
$(RUNTIME_STAMP): pyproject.toml $(wildcard proto/*/*/*.proto)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned to the CPU build first, so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_FROM)
	$(PY) -m pip install -q -e .
	# gRPC code from proto/ into serving/_proto/ (gitignored, never committed).
	$(PY) -m serving.rpc.protogen
	touch $(RUNTIME_STAMP)

# + the development tools: tests, lint, benchmarks' peers, Ray (`make test`).
$(STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install-runtime: $(RUNTIME_STAMP)

install: $(STAMP)

serve: install-runtime
	$(VENV)/bin/modserve serve --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install lint
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q -m integration

# Load test modserve and its peers side by side (~15 min on 2 cores); JSON + PNG in
# benchmarks/results/. BENCH_ARGS="--servers modserve,naive" narrows it.
bench: install
	$(PY) -m benchmarks.load $(BENCH_ARGS)

bench-smoke: install
	$(PY) -m pytest -q tests/integration/test_bench_smoke.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache serving/_proto
