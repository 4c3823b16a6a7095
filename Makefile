# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-stamp
# Tests and benchmarks may read the shared copy of MNIST; the product never does.
SHARED_MNIST := $(abspath ../shared/datasets/mnist)

.PHONY: setup lint check test suite test-slow test-all demo bench clean

setup: $(STAMP)

# Re-run when the project's dependencies change; otherwise setup is a no-op (idempotent).
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU wheel of torch 2.13.0; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet "torch==2.13.0"
	# The versions that were tested (constraints.txt), so a fresh machine gets the same ones.
	$(PIP) install --quiet -c constraints.txt -e ".[explore,notebook,test]"
	touch $(STAMP)

# Lint (ruff: pyflakes, pycodestyle, import order, pyupgrade, bugbear) on src/ and tests/, and types (mypy) on src/.
lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

# The edit loop: lint, types and the unit tests on tiny synthetic data (about 30 s on 2 cores).
CHECK_TESTS := tests/test_data.py tests/test_stats.py tests/test_model.py tests/test_defects.py \
	tests/test_fetch_npm.py tests/test_idx_property.py tests/test_verdicts.py tests/test_recipe.py \
	tests/test_structure.py tests/test_predict.py tests/test_cli_core.py

check: setup lint
	CNNLAB_TEST_DATA=$${CNNLAB_TEST_DATA:-$(SHARED_MNIST)} $(PY) -m pytest -q -m "not slow" $(PARALLEL) $(CHECK_TESTS)

# In parallel, each test file on one worker (its module fixtures built once; tests/conftest.py
# shares the torch threads out among the workers and orders the files longest first).
PARALLEL := -n auto --dist loadfile --no-loadscope-reorder

# Lint and types run beside the tests (mypy is one process for ~16 s; the tests leave room for it):
# `make test` fails if either fails.
test: setup
	$(MAKE) --no-print-directory -j2 lint suite

suite: setup
	CNNLAB_TEST_DATA=$${CNNLAB_TEST_DATA:-$(SHARED_MNIST)} $(PY) -m pytest -q -m "not slow" $(PARALLEL)

# The slow tier alone (marked `slow`: long end-to-end runs, JupyterLab and notebook kernels, child
# processes stopped mid-write); CI runs it after `make test`.
test-slow: setup
	CNNLAB_TEST_DATA=$${CNNLAB_TEST_DATA:-$(SHARED_MNIST)} $(PY) -m pytest -q -m slow $(PARALLEL)

test-all: setup lint
	CNNLAB_TEST_DATA=$${CNNLAB_TEST_DATA:-$(SHARED_MNIST)} $(PY) -m pytest -q $(PARALLEL)

demo: setup
	$(VENV)/bin/cnnlab report --out reports/demo --preset standard --overwrite

bench: setup
	CNNLAB_TEST_DATA=$${CNNLAB_TEST_DATA:-$(SHARED_MNIST)} $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
