# Stepline — every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .local/tools
UV := $(TOOLS)/bin/uv
RUN := $(UV) run --frozen
KAFKA := $(RUN) python -m stepline_localkafka
# Two pytest-xdist workers, a test file each at a time: the integration tests mostly wait on the
# broker and on subprocesses, so two run side by side on two cores (PYTEST_ARGS= runs serially).
PYTEST_ARGS ?= -n 2 --dist loadfile

export UV_PYTHON_DOWNLOADS := never
export PYTHONUNBUFFERED := 1

.PHONY: help install lint format typecheck proto proto-check kafka-up kafka-down kafka-status openapi console-screenshot \
        test test-unit demo bench bench-planner chaos chaos-cluster chaos-scaled clean chromium llama-env

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(UV):
	@echo "installing uv $(UV_VERSION) into $(TOOLS)"
	@$(PYTHON) -m venv $(TOOLS)
	@$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Where `make install` puts the `stepline` launcher: a directory every login shell has on PATH.
BIN_DIR ?= $(shell [ -w /usr/local/bin ] && echo /usr/local/bin || echo $(HOME)/.local/bin)

.venv/.installed: $(UV) uv.lock pyproject.toml libs/*/pyproject.toml
	$(UV) sync --frozen --all-packages
	@sh scripts/install_launcher.sh "$(BIN_DIR)" "$(CURDIR)"
	@touch $@

install: .venv/.installed ## Install uv, Python 3.11 packages (one lock file) and dev tools

lint: install ## Lint with ruff (code and formatting)
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

typecheck: install ## Type-check with mypy (strict; generated code excluded)
	$(RUN) mypy

proto: install ## Regenerate Python code, the descriptor set and proto/asyncapi.yaml
	$(RUN) python scripts/proto.py generate
	$(RUN) python scripts/asyncapi.py generate

proto-check: install ## Fail when generated code, proto/asyncapi.yaml or the OpenAPI document drifts; buf lint
	$(RUN) python scripts/proto.py check
	$(RUN) python scripts/asyncapi.py check
	$(RUN) python -m stepline_frontdoor.openapi check

openapi: install ## Regenerate services/frontdoor/openapi.json from the console's HTTP API
	$(RUN) python -m stepline_frontdoor.openapi generate

kafka-up: install ## Start the local single-node Kafka broker (no-op when it is up)
	$(KAFKA) up

kafka-down: install ## Stop the local Kafka broker started by kafka-up
	$(KAFKA) down

kafka-status: install ## Show whether the local broker is up
	$(KAFKA) status

test-unit: install ## Unit tests only (no broker)
	$(RUN) pytest tests/unit $(PYTEST_ARGS)

CHROMIUM := /usr/bin/chromium
chromium: ## Debian's Chromium for the console's browser tests (installed with apt-get when missing)
	@test -x $(CHROMIUM) || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    chromium fonts-dejavu-core </dev/null; }

# llama.cpp's server (llama-cpp-python[server]) + SmolLM2 for the real-inference tests and
# `make demo LOCAL_LLM=1`: its own venv under ~/.cache/stepline, built from source once per
# machine (~3-5 min on 2 cores, ~10 under load), reused after; never part of uv.lock.
llama-env: $(UV) ## Build the llama.cpp server env outside the repo (once per machine)
	@UV=$(CURDIR)/$(UV) bash deploy/llama/env.sh ensure >/dev/null

test: install chromium llama-env lint typecheck proto-check ## Everything CI runs: lint, types, proto drift, all tests on a real broker
	$(KAFKA) run -- $(RUN) pytest $(PYTEST_ARGS)

demo: install $(if $(LOCAL_LLM),llama-env) ## Run a support goal end to end (LOCAL_LLM=1: a real local model answers)
	$(RUN) python -m stepline_client.demo

console-screenshot: install chromium ## docs/console-run.png: make demo's run followed live in the console (needs a broker)
	$(RUN) python scripts/console_screenshot.py

bench: install ## Benchmarks on a local broker; figures printed and written to bench/results/
	$(UV) sync --frozen --all-packages --group bench
	$(KAFKA) run -- $(RUN) --all-packages --group bench python -m bench

bench-planner: install ## The planner's handler CPU per step, in-process (no broker); bench/results/planner_handler.json
	$(RUN) python -m bench.planner_handler

chaos: install ## 200 runs while services are SIGKILLed, the broker restarts and a provider fails 30%
	$(RUN) python -m scripts.chaos

chaos-cluster: install ## The same on a three-broker cluster (RF 3, min ISR 2), one broker SIGKILLed
	$(RUN) python -m scripts.chaos --cluster

chaos-scaled: install ## The same with 3 instances of every service and a PostgreSQL ledger
	$(RUN) python -m scripts.chaos --instances 3

clean: ## Remove local state (broker data, caches); keeps the lock file
	-$(KAFKA) down
	rm -rf .local/kafka .mypy_cache .ruff_cache .pytest_cache
