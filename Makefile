# Entry points. Every target sets itself up first: Debian packages, the virtualenv, the engine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := source scripts/pulumi-env.sh &&
STACK ?= dev
PYTEST_ARGS ?=

.PHONY: setup deps engine test lint

deps:
	@scripts/install-deps

engine: deps
	@scripts/install-pulumi

setup: engine

test: setup
	@$(ENV) python -m pytest $(PYTEST_ARGS)

lint: deps
	@$(ENV) ruff check . && ruff format --check . && mypy
