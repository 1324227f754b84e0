# exnet: every set-up step is here, so a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXNET := $(BIN)/exnet
STAMP := $(VENV)/.installed

.PHONY: install system-deps ajv test lint bench demo broker-start broker-stop clean

install: $(STAMP)

# Everything, platform and development tools included (`pip install .` alone is the
# sites' light side; see README). No compiler is needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Tools the tests drive for real: promtool and a Prometheus server (alert rules, a
# real scrape), headless Chromium (the HTML report). Installed from Debian's
# packages when missing and we are root; otherwise we say what to install.
system-deps:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "the tests need:$$missing (apt-get install$$missing)" >&2; exit 1; \
	  fi; \
	fi

# ajv (npm), as a site's pre-check would run the exported JSON Schemas; the lock file
# pins it. Needs Node.js and npm.
AJV := tests/contracts/ajv
ajv: $(AJV)/node_modules/.package-lock.json

$(AJV)/node_modules/.package-lock.json: $(AJV)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "the tests need Node.js and npm (apt-get install nodejs npm)" >&2; exit 1; }
	npm ci --prefix $(AJV) --no-audit --no-fund --loglevel=error

broker-start: install
	$(EXNET) broker start

broker-stop: install
	$(EXNET) broker stop

test: install system-deps ajv broker-start
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: install broker-start
	$(BIN)/python -m bench

demo: install broker-start
	$(BIN)/python -m exnet.demo

clean:
	-$(EXNET) broker stop
	rm -rf var .pytest_cache .mypy_cache .ruff_cache $(AJV)/node_modules
