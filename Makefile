# Two commands on a fresh machine with Python 3.11:
#   make serve   create the virtual environment, install, migrate, start on 127.0.0.1:8000
#   make test    install the test extras and run every test (SQLite + local folder, PostgreSQL + S3)

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve test bench-quality bench-throughput clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/userlens migrate
	$(BIN)/userlens serve

# The console's browser tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser build of its own).
CHROMIUM := /usr/bin/chromium
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo )

$(CHROMIUM):
	$(SUDO)apt-get update -qq && $(SUDO)apt-get install -y --no-install-recommends chromium chromium-driver

# Three pytest-xdist workers on the two cores: most tests wait on subprocesses, servers and polls
# (tests/infra/parallel.py says which tests share a worker). One process: `make test XDIST=-n0`, or
# PYTEST_ARGS="-p no:xdist" (which drops XDIST); PYTEST_ARGS adds options, e.g. "-k faults".
XDIST ?= $(if $(findstring no:xdist,$(PYTEST_ARGS)),,-n 3 --dist loadgroup)

test: $(VENV)/.installed-test $(CHROMIUM)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

bench-quality: $(VENV)/.installed-test
	$(BIN)/python bench/feature_quality.py

bench-throughput: $(VENV)/.installed-test
	$(BIN)/python bench/feature_throughput.py --users 1048371

clean:
	rm -rf $(VENV) .userlens .pytest_cache
