# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make run` installs the service alone; `make test` and the checks add the dev extras.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

# Development defaults for `make run` only; any of them can be overridden from the environment.
run: export SSO_ENVIRONMENT ?= development
run: export SSO_RUM_USERNAME ?= digitalriver
run: export SSO_RUM_PASSWORD ?= dev-callback-secret
run: export SSO_DR_SITE_ID ?= headwtr
run: export SSO_LOG_FORMAT ?= console
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test typecheck lint install clean constraints

CONSTRAINTS := docker/constraints.txt

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	@touch $(RUN_STAMP) $(STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/sso-provider migrate
	$(BIN)/sso-provider serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# mypy in strict mode over the service and the benchmarks, with the pinned versions.
typecheck: $(STAMP)
	$(BIN)/mypy app bench

# ruff's checks (pyproject.toml selects them) over the service, benchmarks and tests.
lint: $(STAMP)
	$(BIN)/ruff check app bench tests

# Resolve the newest versions that pyproject.toml allows in a scratch environment and pin them.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip
	.venv-constraints/bin/pip install --quiet -e '.[dev]'
	head -n 3 $(CONSTRAINTS) > $(CONSTRAINTS).new
	.venv-constraints/bin/pip freeze --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .pytest_cache
