# The whole developer interface; every target is one readable line.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: venv install build test demo lint bench bench-compare bench-report clean

venv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)

install: venv
	$(BIN)/pip install -q -r requirements-dev.txt && $(BIN)/pip install -q --no-build-isolation .

build: venv
	$(BIN)/python setup.py -q build_ext --inplace

test: install
	cd tests && ../$(BIN)/python -m pytest

DEMO_ARGS ?=
demo: install
	$(BIN)/meltica-engine demo $(DEMO_ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && PATH=$(BIN):$$PATH cython-lint meltica/_core meltica/adapters/binance meltica/bus meltica/conductor meltica/dispatcher meltica/wallclock.pxd

bench: install
	$(BIN)/python bench/bench_parse.py

# these two import meltica from the source tree (python -m pytest, PYTHONPATH=.): build in place too
bench-compare: install build
	$(BIN)/python bench/micro/compare.py --runs 3

bench-report: install build
	$(BIN)/python bench/report.py

clean:
	find meltica \( -name '*.cpp' -o -name '*.so' -o -name '*.html' \) -delete; rm -rf build dist *.egg-info
