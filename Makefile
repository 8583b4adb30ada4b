# The two commands of the README:
#   make demo   set everything up, build the offline example channel, lock and show it
#   make test   set everything up, then lint, type-check and run the whole test suite
# Both install what they need: Python packages from pyproject.toml into .venv, and the few
# Debian packages the tests use (gcc for the fake NVML library) with apt-get when missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck unit setup system-packages schema bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory APT_PACKAGES=python3-venv system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages, installed only when missing (root, or sudo when available).
APT_PACKAGES ?=
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

EXAMPLE := -f examples/dask-gpu/envbuild.yaml --lockfile $(DEMO)/envbuild.lock

# The main job on the bundled offline example: a channel of real archives generated here
# (nothing downloaded), one lock for every role, an export, a real environment, a check.
demo: $(STAMP)
	rm -rf build/demo-channel $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/python -m envbuild.testing.catalog build/demo-channel
	$(BIN)/envbuild lock $(EXAMPLE)
	$(BIN)/envbuild show $(EXAMPLE)
	$(BIN)/envbuild export $(EXAMPLE) --format conda-lock --role worker -o $(DEMO)/conda-lock.worker.yml
	$(BIN)/envbuild env $(EXAMPLE) --role worker --platform linux-64 --prefix $(DEMO)/envs/worker --cache-dir $(DEMO)/pkgs
	$(BIN)/envbuild verify $(EXAMPLE) --role worker --platform linux-64 --prefix $(DEMO)/envs/worker

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	@command -v gcc >/dev/null || $(MAKE) --no-print-directory APT_PACKAGES="gcc libc6-dev" system-packages
	$(BIN)/pytest

test: lint typecheck unit

# Regenerate the committed JSON Schema of envbuild.yaml (a test fails when it is stale).
schema: $(STAMP)
	$(BIN)/envbuild schema > envbuild/schema/envbuild.schema.json

# Ratios against baselines measured in the same run; not part of `make test` (timings are noisy).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_lock.py
	$(BIN)/python benchmarks/bench_env.py
	$(BIN)/python benchmarks/bench_gpucheck.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
