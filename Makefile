# The two commands of the README: `make demo` and `make test`. Each one sets up .venv/ first if needed.
SHELL := /bin/bash
PY := .venv/bin/python
export AIRBIND_CACHE ?= $(CURDIR)/.cache
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-slow bench evaluate clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(PY) -m pytest -q

test-slow: setup
	@$(PY) -m pytest -q -m slow

evaluate: setup
	@$(PY) evaluation/run.py

# speed and memory, each figure measured in one run (reports/benchmarks/*.json)
bench: setup
	@$(PY) benchmarks/pipeline_overhead.py
	@$(PY) benchmarks/latency.py
	@$(PY) benchmarks/memory.py
	@$(PY) benchmarks/throughput_gpu.py

clean:
	rm -rf runs reports .cache/demo
