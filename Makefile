# regauth developer tasks. `make run` and `make test` create .venv on first use.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Python 3.13 from PATH, or from pyenv when only pyenv has it.
PYTHON313 := $(shell \
	if python3.13 -c 'import sys' >/dev/null 2>&1; then echo python3.13; \
	elif PYENV_VERSION=3.13.0 python3.13 -c 'import sys' >/dev/null 2>&1; then \
		echo 'env PYENV_VERSION=3.13.0 python3.13'; \
	fi)
# `sam build` looks for python3.13 on PATH itself, so pyenv's shim needs the version too.
ifeq ($(PYTHON313),env PYENV_VERSION=3.13.0 python3.13)
export PYENV_VERSION := 3.13.0
endif

POLICY ?= examples/policy.yaml
PORT ?= 5001
SERVICE ?= registry.local

.PHONY: help venv run test lint format typecheck validate-template unit functional e2e \
	layer-requirements build bench clean

help:
	@echo "make run     start the local token service with $(POLICY) on port $(PORT)"
	@echo "make test    lint, type-check and run every test (unit, functional, e2e)"
	@echo "make lint    ruff format --check, ruff check, mypy, sam validate --lint"
	@echo "make build   sam build (needs the SAM CLI's Python 3.13 build support)"
	@echo "make bench   measure a warm token request and a 12,000-principal policy apply"

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON313)" ]; then \
		echo "Python 3.13 is required: install it (python3.13 on PATH) or via pyenv" >&2; \
		exit 1; \
	fi
	@[ -x $(BIN)/python ] || $(PYTHON313) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/regauth serve --policy $(POLICY) --port $(PORT) --service $(SERVICE)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 $(BIN)/sam validate --lint --template template.yaml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

unit functional e2e: $(STAMP)
	$(BIN)/pytest tests/$@

# SAM installs the layer's dependencies from this file; it mirrors pyproject.toml.
layer-requirements: $(STAMP)
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > layers/regauth/requirements.txt

build: $(STAMP)
	SAM_CLI_TELEMETRY=0 $(BIN)/sam build

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.token_request
	$(BIN)/python -m tests.benchmarks.policy_apply

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache .regauth
