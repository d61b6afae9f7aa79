# One entry point for people and CI: `make demo` runs the main job, `make test` the suite.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(HOME)/.cache/akisnap/bin:$(PATH)

.PHONY: install lock tools services services-down lint typecheck test test-only bench bench-startup demo clean

# Exactly the versions in constraints.txt (the lock), so CI and the image run what was tested.
install: $(BIN)/akisnap

$(BIN)/akisnap: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Re-resolve pyproject.toml's loose ranges in a fresh venv and write the lock from it.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet '.[dev]'
	{ head -2 constraints.txt; \
	  $(LOCK_VENV)/bin/pip freeze --exclude akidb-snapshotter | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

# helm, kubeconform and promtool, built through the Go module proxy into ~/.cache/akisnap/bin
tools:
	bash tools/install-go-tools.sh

# A real Kafka broker (KRaft) and a real S3-compatible server on loopback; writes .services.env
services: install
	bash tools/services.sh up

services-down:
	bash tools/services.sh down

lint: install
	$(BIN)/ruff check daemon handlers tests bench
	$(BIN)/ruff format --check daemon handlers tests bench
	$(BIN)/mypy --strict daemon handlers

# The suite runs even when lint fails, so one run reports both (pytest's summary last).
test: install tools services
	status=0; $(MAKE) --no-print-directory lint || status=$$?; \
	$(MAKE) --no-print-directory test-only || status=$$?; exit $$status

test-only:
	set -a && source .services.env && set +a && $(BIN)/pytest -q tests

# The bench extras (Lance, pyinstrument) are not in `make install`: the suite needs none of them.
$(VENV)/.bench-extras: $(BIN)/akisnap
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: install $(VENV)/.bench-extras services
	set -a && source .services.env && set +a && $(BIN)/python -m bench

# How fast the CLI answers (--help target: 0.3 s); needs no services.
bench-startup: install
	$(BIN)/python -m bench.startup

demo: install services
	set -a && source .services.env && set +a && $(BIN)/akisnap demo

clean: services-down
	rm -rf $(VENV) .services .services.env
