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
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && PATH=$(BIN):$$PATH cython-lint meltica/_core meltica/adapters/binance meltica/bus meltica/conductor meltica/dispatcher meltica/telemetry meltica/wallclock.pxd

bench: install
	$(BIN)/python bench/bench_parse.py

# these two import meltica from the source tree (python -m pytest, PYTHONPATH=.): build in place too
bench-compare: install build
	$(BIN)/python bench/micro/compare.py --runs 3

bench-report: install build
	$(BIN)/python bench/report.py

clean:
	find meltica \( -name '*.cpp' -o -name '*.so' -o -name '*.html' \) -delete; rm -rf build dist *.egg-info

.PHONY: wheel wheels

# The installable wheel (docs/packaging.md): built with the venv's pinned build
# requirements from freshly generated sources, repaired by auditwheel to the
# oldest manylinux tag this toolchain reaches, .so files stripped.
MANYLINUX ?= manylinux_2_34_x86_64
wheel: venv
	$(BIN)/pip install -q -r requirements-dev.txt
	rm -rf build dist *.egg-info && find meltica -name '*.cpp' -delete
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist/raw .
	PATH=$(BIN):$$PATH $(BIN)/auditwheel repair --strip --plat $(MANYLINUX) -w dist dist/raw/*.whl && rm -r dist/raw
	$(BIN)/auditwheel show dist/*.whl

# One repaired wheel per CPython in PYTHONS that is installed (docs/packaging.md),
# each built with pip's build isolation (the pinned build requirements from PyPI).
PYTHONS ?= python3.11 python3.12 python3.13
wheels: venv
	$(BIN)/pip install -q -r requirements-dev.txt
	rm -rf build dist *.egg-info
	for py in $(PYTHONS); do \
	    command -v $$py >/dev/null || { echo "$$py: not installed, skipped"; continue; }; \
	    rm -rf build *.egg-info && find meltica -name '*.cpp' -delete && \
	    $$py -m pip wheel -q --no-deps -w dist/raw . || exit 1; \
	done
	PATH=$(BIN):$$PATH $(BIN)/auditwheel repair --strip --plat $(MANYLINUX) -w dist dist/raw/*.whl && rm -r dist/raw
	for w in dist/*.whl; do $(BIN)/auditwheel show $$w; done
