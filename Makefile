# The two commands of the README:
#   make demo   set everything up, build the offline example channel, lock it, create the
#               role environments and run a Dask cluster from them
#   make test   set everything up, then lint, type-check and run the whole test suite
# Both install what they need: Python packages from pyproject.toml into .venv, and the Debian
# packages they use, all at once, when missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck unit setup schema bench fuzz hostile clean

# Debian packages each command needs, asked for all at once (scripts/debian-packages.sh: as root
# it installs them; with sudo it asks once; otherwise it prints the command for an admin).
VENV_DEBS := $(shell $(PYTHON) -c 'import ensurepip' 2>/dev/null || echo python3-venv)
# python3.11: Debian's interpreter is the runnable channel's python (envbuild/testing/runnable.py)
# docker.io, debootstrap, docker-registry: the image tests start an engine, a base image and a
# registry of their own (the demo uses them when it can, and says what it skipped otherwise);
# skopeo copies the base, and an `envbuild image --oci` layout, into that registry.
CONTAINER_DEBS := docker.io debootstrap docker-registry skopeo
# qemu-user-static, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross (its headers; only recommended,
# so not installed with it here): the arm64 tests run the linux-aarch64 python under
# qemu-user (no binfmt, no Arm machine) and cross-compile the fake NVML for it.
ARM64_DEBS := qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross
TEST_DEBS := $(VENV_DEBS) gcc libc6-dev python3.11 $(CONTAINER_DEBS) $(ARM64_DEBS)
DEMO_DEBS := $(VENV_DEBS) python3.11

$(STAMP): pyproject.toml
	@scripts/debian-packages.sh $(VENV_DEBS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

EXAMPLE := -f examples/dask-gpu/envbuild.yaml --lockfile $(DEMO)/envbuild.lock
ROLES   := client scheduler worker

# The main job on the bundled offline example: a channel of real packages made here from
# pinned wheels and Debian's python (fetched once, then offline), a find-links folder of the
# PyPI wheel it adds (xarray), one lock for every role, an export, the three role
# environments, a cluster started from them that computes (xarray imported in every role),
# then the three role images and the same cluster in containers (when an engine can be had),
# the images pushed to a registry started here with the worker's tag an index of its amd64
# and arm64 images (GH200 workers beside A100s), inspected and rebuilt from nothing to the
# same digests, and the Kubernetes DaskCluster that runs those images (written, not applied:
# no cluster here).
# Wheels, packages and the built channel are cached under build/cache: a re-run takes seconds.
demo: export ENVBUILD_CACHE_DIR := $(abspath build/cache)
demo:
	@scripts/debian-packages.sh $(DEMO_DEBS)
	@[ "$$(id -u)" != 0 ] || scripts/debian-packages.sh $(CONTAINER_DEBS) || true
	@$(MAKE) --no-print-directory setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/python -m envbuild.testing.runnable build/demo-channel
	$(BIN)/python -m envbuild.testing.pypi_index build/demo-wheels
	$(BIN)/envbuild lock $(EXAMPLE)
	$(BIN)/envbuild show $(EXAMPLE)
	$(BIN)/envbuild export $(EXAMPLE) --format conda-lock --role worker -o $(DEMO)/conda-lock.worker.yml
	@for role in $(ROLES); do \
	  $(BIN)/envbuild env $(EXAMPLE) --role $$role --prefix $(DEMO)/envs/$$role || exit 1; done
	$(BIN)/envbuild verify $(EXAMPLE) --role worker --prefix $(DEMO)/envs/worker --files
	$(BIN)/python -m envbuild.testing.cluster $(EXAMPLE) --workdir $(DEMO)
	$(BIN)/python -m envbuild.testing.containers $(EXAMPLE) --cache build/cache
	$(BIN)/python -m envbuild.testing.indexes $(EXAMPLE) --cache build/cache
	$(BIN)/envbuild deploy kubernetes $(EXAMPLE) --no-registry-check -o $(DEMO)/cluster.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test:
	@scripts/debian-packages.sh $(TEST_DEBS)
	@$(MAKE) --no-print-directory lint typecheck unit

# Regenerate the committed JSON Schema of envbuild.yaml (a test fails when it is stale).
schema: $(STAMP)
	$(BIN)/envbuild schema > envbuild/schema/envbuild.schema.json

# Ratios against baselines measured in the same run; not part of `make test` (timings are noisy).
# Every benchmark runs; the misses are listed at the end.
BENCHMARKS := bench_lock bench_env bench_gpucheck bench_guard bench_images bench_arm64 bench_pypi
# The engine path that daemonless images replaced (378daa8), measured against them: a worktree.
BEFORE_OCI := build/bench-before-oci
bench: $(STAMP)
	@[ -d $(BEFORE_OCI) ] || git worktree add --detach $(BEFORE_OCI) 378daa8 >/dev/null
	@missed=""; for b in $(BENCHMARKS); do \
	  echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py || missed="$$missed $$b"; \
	done; \
	echo "== benchmarks/bench_oci.py"; \
	$(BIN)/python benchmarks/bench_oci.py --before $(BEFORE_OCI) || missed="$$missed bench_oci"; \
	if [ -n "$$missed" ]; then echo "== goals missed in:$$missed"; exit 1; fi; \
	echo "== every goal met"

# The lock against a brute force on raw rattler over 2,000 random channels (tests/exact):
# no false refusal, no lock older than a consistent one needs, no broken invariant. The test
# suite runs fewer (tests/test_lock_exact.py); a failing seed replays with
# `$(BIN)/python -m tests.exact.fuzz --replay SEED`.
fuzz: $(STAMP)
	$(BIN)/python -m tests.exact.fuzz --cases 2000 --seed 1 --jobs 2

# The crafted-package suite at length: 300 generated path shapes.
hostile: $(STAMP)
	ENVBUILD_HOSTILE_CASES=300 $(BIN)/pytest tests/hostile tests/test_package_safety.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
