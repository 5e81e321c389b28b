# The two Quick start commands (README):  make demo  ·  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test install install-test services bench

$(VENV)/bin/activate:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tollgate needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e .

install-test: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[test]'
	bash scripts/browser.sh

services:
	bash scripts/services.sh

# install, start Redis/PostgreSQL if down, migrate, replay the bundled Azure conversation trace
demo: install services
	$(VENV)/bin/tollgate db upgrade
	$(VENV)/bin/tollgate replay worker/devtools/data/azure_llm_2023_conv_sample.csv --format azure --model gpt-4o --provider openai

# install with test extras, start services if down, run the whole suite
test: install-test services
	$(PY) -m pytest tests

bench: install services
	$(PY) -m benchmarks.bench_pipeline
