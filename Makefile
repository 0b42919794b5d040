# Entry points. Every target sets itself up first: Debian packages, the virtualenv, the engine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := source scripts/pulumi-env.sh &&
STACK ?= dev
PYTEST_ARGS ?=

.PHONY: setup deps engine up preview destroy test lint

deps:
	@scripts/install-deps

engine: deps
	@$(ENV) scripts/install-pulumi

setup: engine

# Pulumi.yaml's `refresh: always`: preview, up and destroy read the live servers before they compare.
LIVE := echo "pulumi reads the live servers first (Pulumi.yaml refresh: always): what was changed by hand shows as drift"

up: setup
	@$(LIVE) "and is put back"
	@$(ENV) pulumi stack select --create $(STACK) --non-interactive && pulumi up --yes --non-interactive --stack $(STACK)
	@$(ENV) scripts/connect-info $(STACK)

preview: setup
	@$(LIVE) "and as the change that would put it back"
	@$(ENV) pulumi stack select --create $(STACK) --non-interactive && pulumi preview --diff --stack $(STACK)

# Refuses (exit 2, nothing changed) unless thorbis:allowDataLoss is true, naming the commands that allow it.
destroy: setup
	@$(ENV) python -m ops.cli destroy $(STACK)

# Two workers by default (most of an e2e test's time is spent waiting on servers and the engine);
# TEST_WORKERS=0 runs in one process. tests/conftest.py keeps the modules that share a stack on one worker.
TEST_WORKERS ?= 2
test: setup
	@$(ENV) python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

lint: deps
	@$(ENV) ruff check . && ruff format --check . && mypy

# Operating a stack (README "Operating it"): exit codes are the scripts' own.
.PHONY: pr-preview drift verify backup dr-drill recover bench
BENCH_SCALE ?= 1.5  # one scale, or several for the scale curve (README: 0.5,2,8); the largest is the report's

pr-preview: setup
	@$(ENV) scripts/pr-preview $(STACK)

drift: setup
	@$(ENV) scripts/drift $(STACK)

verify: setup
	@$(ENV) scripts/verify $(STACK)

backup: setup
	@$(ENV) scripts/backup $(STACK)

dr-drill: setup
	@$(ENV) scripts/dr-drill $(STACK)

recover: setup
	@$(ENV) scripts/recover $(STACK)
	@$(ENV) scripts/connect-info $(STACK)

bench: setup
	@$(ENV) python -m bench.run --scale $(BENCH_SCALE)
