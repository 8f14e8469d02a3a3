# One command to set up and run the main job (`make demo`), one to set up and run the tests
# (`make test`). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV) || ($(PYTHON) -m pip install --user -q virtualenv && $(PYTHON) -m virtualenv $(VENV))
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

.PHONY: install demo test lint bench
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/connwise demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/pool_overhead.py
	$(PY) benchmarks/pool_query.py
	$(PY) benchmarks/pool_priority.py
	$(PY) benchmarks/pool_prewarm.py
