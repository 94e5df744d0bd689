# The README's two commands: `make test` and `make demo`. Both set up .venv first.
# Also: `make test-slow` (the long tests), `make test-all` (both), `make test-stress` (the default
# suite three times in a row with a busy process on every core), `make lint`.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own: a GPU user picks a CUDA build here, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
STRESS_RUNS ?= 3

BIN := $(VENV)/bin
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow test-all test-stress demo lint clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml $(addsuffix pyproject.toml,$(PLUGINS))
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,demo,lora,m4a]" $(addprefix -e ./,$(PLUGINS))
	$(BIN)/python -m pip install --quiet --no-deps "tinysoundfont>=0.3.6"
	touch $@

# ruff first: the code stays lint-clean. pytest exits 5 when it collected no test; that is
# not a failure of the suite.
test: setup
	$(BIN)/ruff check jukebox_pl tests plugins benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The long tests (crash and resume, the demo end to end): what CI runs after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# The default suite $(STRESS_RUNS) times in a row while a CPU-bound process competes for every core: a
# suite that holds only on an idle machine fails here. About three times as long as `make test`.
test-stress: setup
	$(BIN)/python .ci/stress.py --runs $(STRESS_RUNS) -- $(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job, recipes/demo.yaml: each stage reuses its output, so a second run is quick.
demo: setup
	$(BIN)/jukebox-pl run demo

lint: setup
	$(BIN)/ruff check jukebox_pl tests plugins benchmarks
	$(BIN)/ruff format --check jukebox_pl tests plugins benchmarks

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
