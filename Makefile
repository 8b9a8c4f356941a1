# LeadExchange: `make run` starts the whole stack, `make test` runs every test.
# Both set everything up on a fresh machine (Python 3.11, Java 17 + Maven, PostgreSQL 15).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := .tools/bin/uv
PY := .venv/bin/python
export UV_PYTHON := $(PYTHON)
export UV_LINK_MODE := copy

.PHONY: help setup run stop test test-unit test-integration test-e2e lint format clean bench bench-load bench-routing bench-auction bench-rebuild bench-faults

help:
	@echo "make run     - set up, start Kafka, PostgreSQL, every service and a demo buyer"
	@echo "make test    - set up, run unit, integration and end-to-end tests"
	@echo "make lint    - ruff and mypy --strict"
	@echo "make stop    - stop everything make run started"
	@echo "make bench   - every benchmark below, figures under bench-results/ (~50 min)"
	@echo "make bench-load    - the whole stack under open- and closed-loop load, vs the machine's limits"
	@echo "make bench-routing - routing time per lead with 50 buyers"
	@echo "make bench-auction - the ping-post auction's own overhead beyond its buyers' time"
	@echo "make bench-rebuild - rebuild rate of each projection on a log of 350,000 events"
	@echo "make bench-faults  - 20,000 leads through kills, broker and database restarts, bad buyers"
	@echo "make clean   - stop and delete local state (.local, .venv)"

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages
	@touch $@

# Kafka's jars (Maven) and the PostgreSQL cluster are set up by the launcher on first use.
setup: .venv/.synced

run: setup
	$(PY) -m lx_devstack run

stop:
	@if [ -x $(PY) ]; then $(PY) -m lx_devstack stop; fi

test: setup
	$(PY) -m pytest -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest -m unit

test-integration: setup
	$(PY) -m pytest -m integration

test-e2e: setup
	$(PY) -m pytest -m e2e

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy libs/*/src services/*/src

bench: bench-load bench-routing bench-auction bench-rebuild bench-faults

bench-load: setup
	$(PY) -m bench.load

bench-routing: setup
	$(PY) -m bench.routing

bench-auction: setup
	$(PY) -m bench.auction

bench-rebuild: setup
	$(PY) -m bench.rebuild

bench-faults: setup
	$(PY) -m bench.faults

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean: stop
	rm -rf .local .venv .tools .pytest_cache .mypy_cache .ruff_cache
