# exnet: every set-up step is here, so a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXNET := $(BIN)/exnet
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo broker-start broker-stop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

broker-start: install
	$(EXNET) broker start

broker-stop: install
	$(EXNET) broker stop

test: install broker-start
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install broker-start
	$(BIN)/python -m bench

demo: install broker-start
	$(BIN)/python -m exnet.demo

clean:
	-$(EXNET) broker stop
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
