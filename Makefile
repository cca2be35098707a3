# yiwang: `make demo` and `make test` do all set-up themselves (idempotently) on a fresh Debian machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the tests use: openssl and Mosquitto (they check our certificates the way other tools will).
# chromium: the browser the web command picture's tests drive (through Playwright, never its own download).
APT_PACKAGES := openssl mosquitto mosquitto-clients chromium
# The command picture's browser library (ECharts) comes from the npm registry, pinned in package-lock.json.
NPM_STAMP := node_modules/.installed-stamp

.PHONY: install apt demo test lint typecheck unit soak bench proto clean

# Installs only what is missing, so a machine that has everything runs no apt at all.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

# Debian's python3 needs python3-venv for `-m venv`; install it only when it is missing.
$(BIN)/python:
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { apt-get update && apt-get install -y python3-venv; }
	$(PY) -m venv $(VENV)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) $(NPM_STAMP)

# npm itself comes from Debian only when the machine has none (a Node.js from elsewhere brings its own).
$(NPM_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { apt-get update && apt-get install -y npm; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

demo: $(STAMP) $(NPM_STAMP)
	$(BIN)/yiwang demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(NPM_STAMP) apt
	$(BIN)/pytest -m "not soak"

test: lint typecheck unit

soak: $(STAMP) $(NPM_STAMP) apt
	$(BIN)/pytest -m soak

bench: $(STAMP) $(NPM_STAMP) apt
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/trust.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/stations.py
	$(BIN)/python bench/cot.py
	$(BIN)/python bench/federation.py
	$(BIN)/python bench/picture.py
	$(BIN)/python bench/jetstream.py

proto: $(STAMP)
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis yiwang-data
