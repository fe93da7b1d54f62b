# The two commands of README.md: `make demo` and `make test` (and `make bench`).
# Each sets up .venv on first use; nothing needs to be installed beforehand
# beyond python3 (with venv) and a C compiler.  The packaging checks at the
# end (`make dist`, `make smoke-wheel`, `make smoke-oldest`) are run by .ci/run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo bench build clean slow sanitize stress-test dist smoke-wheel smoke-oldest docs typecheck

# The compiler's output goes to a log under build/, shown only when the
# command fails (`quiet CMD LOG`): a build that works says nothing.
define quiet
@mkdir -p build; $(1) > $(2) 2>&1 || { cat $(2); echo "failed; its output is above and in $(2)"; exit 1; }
endef

# System packages a fresh Debian machine may lack: venv, a C compiler and the
# Python headers (the extension is compiled at install).
$(PY):
	@command -v cc >/dev/null 2>&1 || { echo "no C compiler; installing build-essential"; \
	  apt-get update && apt-get install -y build-essential; }
	@$(PYTHON) -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || { echo "no Python headers; installing python3-dev"; apt-get update && apt-get install -y python3-dev; }
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  (apt-get update && apt-get install -y python3-venv) && $(PYTHON) -m venv $(VENV); }

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0,<4"
	@echo "installing the project into $(VENV) (log: build/install.log)"
	$(call quiet,$(PY) -m pip install -q --no-build-isolation -e '.[test]',build/install.log)
	touch $(STAMP)

# Rebuild the extension when a core source changed (editable install).
build: $(STAMP)
	$(call quiet,$(PY) setup.py -q build_ext --inplace,build/build.log)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

slow: build
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# `make stress-test`: the default suite 5 times on one core (taskset -c 0),
# then 5 times with every core kept busy by spinning processes; stops at the
# first failing run and names it (tests/stress.sh; STRESS_RUNS=n for n runs
# of each).  Ten suite runs on a starved machine: about half an hour.
stress-test: build
	tests/stress.sh $(PY) $(PYTEST_ARGS)

# `make sanitize`: the core built with AddressSanitizer and UBSan, in
# build/sanitize so that the normal build is left alone, then the tests that
# drive the core hardest.  libasan must be the first library of the process,
# hence LD_PRELOAD; leak reports are off (CPython does not free everything at
# exit), and any ASan or UBSan error aborts the test process.
SAN_DIR := build/sanitize
SAN_TESTS := tests/test_envelope.py tests/test_fuzz.py tests/test_router.py \
	tests/test_resources.py tests/test_master.py tests/test_streams.py \
	tests/test_client.py tests/test_server.py tests/test_signals.py \
	tests/test_worker_credit.py tests/test_worker_hwm.py tests/test_futures.py
sanitize: $(STAMP)
	rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)
	cp -r pylm pylm_core tests setup.py pyproject.toml $(SAN_DIR)/
	rm -f $(SAN_DIR)/pylm_core/*.so $(SAN_DIR)/pylm_core/_core.c
	$(call quiet,cd $(SAN_DIR) && PYLM_CORE_SANITIZE=1 $(abspath $(PY)) setup.py -q build_ext --inplace,$(abspath build/sanitize-build.log))
	cd $(SAN_DIR) && export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  LD_PRELOAD="$$(cc -print-file-name=libasan.so):$$(cc -print-file-name=libubsan.so)" \
	  PYTHONPATH=$(abspath $(SAN_DIR)) && \
	  $(abspath $(PY)) -c "import pylm_core, sys; sys.exit(not pylm_core.__file__.startswith('$(abspath $(SAN_DIR))'))" && \
	  $(abspath $(PY)) -m pytest $(SAN_TESTS) $(PYTEST_ARGS)

demo: build
	$(PY) examples/demo.py

# `make bench`: the pytest benchmarks (ours next to hand-written pyzmq, the
# process pools and a C libzmq pipeline compiled by the run; one summary of
# issue 15's targets at the end, also in build/bench-targets.json), then
# benchmarks/compare/ (every system side by side, results and charts in
# benchmarks/results/).  `make bench QUICK=1`: fewer, shorter rounds of both
# (compare --quick, 2-3 min).  COMPARE_ARGS: more options for
# `python -m benchmarks.compare` (--help lists them).
QUICK ?=
COMPARE_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_QUICK_ENV := PYLM_BENCH_MESSAGES=20000 PYLM_BENCH_ROUNDS=3 PYLM_BENCH_EVAL_ROUNDS=2000 \
	PYLM_BENCH_LARGE_MIB=32

# the `bench` extra of pyproject.toml, without reinstalling the project
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q "matplotlib>=3.5" "tqdm"
	touch $(BENCH_STAMP)

bench: build $(BENCH_STAMP)
	$(if $(QUICK),$(BENCH_QUICK_ENV)) $(PY) -m pytest benchmarks --benchmark-disable-gc --benchmark-columns=median,ops,rounds $(PYTEST_ARGS)
	$(PY) -m benchmarks.compare $(if $(QUICK),--quick) $(COMPARE_ARGS)

# An optional extra of pyproject.toml (docs, typecheck) installed into .venv
# without reinstalling the project: its requirements are read from the
# installed project's metadata (not a pylm.egg-info that `make dist` left in
# the working tree), so they are written once, in pyproject.toml.
$(VENV)/.extra-%: $(STAMP)
	@mkdir -p build
	$(PY) -c "import sys; sys.path.remove(''); import importlib.metadata as m; \
	  print('\n'.join(r.split(';')[0] for r in m.requires('pylm') if 'extra == \"$*\"' in r))" \
	  > build/extra-$*.txt
	@test -s build/extra-$*.txt || { echo "pyproject.toml has no extra '$*' (or the installed metadata is stale: rm $(STAMP))"; exit 1; }
	$(PY) -m pip install -q -r build/extra-$*.txt
	touch $@

# `make docs`: the documentation site (mkdocs.yml, docs/) into site/, with
# `mkdocs build --strict`: any warning (a broken link, a page missing from
# the nav, a docstring that does not match its signature, an example file
# that is gone) fails it.  The API reference is read from the sources and
# the core's stubs, never imported: the docs need no compiled core.
docs: $(VENV)/.extra-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# `make typecheck`: mypy on pylm/, with the strictness [tool.mypy] states.
typecheck: $(VENV)/.extra-typecheck
	$(PY) -m mypy

clean:
	rm -rf build dist site *.egg-info pylm_core/_core.c pylm_core/*.so pylm_core/*.html

# pylm 0.14.4 from PyPI in a venv of its own, for tests/test_interop.py (which
# builds it on first use too; CI can prebuild it). Reused while it is valid.
LEGACY_VENV ?= .venv-pylm014

.PHONY: legacy-venv
legacy-venv:
	$(PYTHON) tests/legacy.py build $(LEGACY_VENV)

# -- packaging (.ci/run runs these after `make test`) --------------------------
# The smoke tests each work in a venv of their own made with mktemp -d,
# outside the source tree, removed at the end (python3-venv is there: `dist`
# needs $(PY), whose rule installs it when missing).

# `make dist`: the sdist, then the wheel built from that sdist in an isolated
# environment (python -m build), into dist/.  That wheel is a build from
# scratch at the default flags, so this is also the check that the build is
# quiet: any compiler or Cython warning in its log fails it.
BUILD_TOOL := $(VENV)/.build-installed
WARNING_RE := (: warning:|^warning: [^ ]+\.(pyx|pxd|pxi):[0-9])

DIST_STAMP := dist/.built
DIST_SOURCES := pyproject.toml setup.py MANIFEST.in README.md $(wildcard pylm/*.py pylm/*/*.py \
	$(addprefix pylm_core/*.,py pyx pxd pxi h pyi))

$(BUILD_TOOL): $(PY)
	$(PY) -m pip install -q build
	touch $(BUILD_TOOL)

dist: $(DIST_STAMP)

$(DIST_STAMP): $(BUILD_TOOL) $(DIST_SOURCES)
	rm -rf dist
	$(call quiet,env -u PYLM_CORE_DEBUG -u PYLM_CORE_SANITIZE $(PY) -m build -o dist .,build/dist.log)
	@! grep -E '$(WARNING_RE)' build/dist.log || { \
	  echo "make dist: the build warns (above; whole log: build/dist.log)"; exit 1; }
	@ls dist
	touch $(DIST_STAMP)

# `make smoke-wheel`: the wheel alone (and what it depends on) in a fresh
# venv; .ci/smoke.py, run from outside the tree, checks that pylm and
# pylm_core come from that venv and runs a Server, and a Master with a
# Worker process, for a Client.
smoke-wheel: dist
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q dist/*.whl; \
	cp .ci/smoke.py "$$tmp/"; \
	cd "$$tmp" && env -u PYTHONPATH "$$tmp/venv/bin/python" smoke.py

# `make smoke-oldest`: the wheel with the oldest pyzmq pyproject.toml allows
# (its "pyzmq>=X", installed as pyzmq==X), and the tests that drive the core
# through pyzmq's libzmq, run on a copy of tests/ outside the tree.
PYZMQ_OLDEST := $(shell sed -n 's/.*"pyzmq>=\([0-9.]*\)".*/\1/p' pyproject.toml)
SMOKE_TESTS := tests/test_libzmq.py tests/test_cimport.py tests/test_envelope.py \
	tests/test_router.py tests/test_resources.py tests/test_server.py tests/test_master.py \
	tests/test_client.py tests/test_streams.py tests/test_cache.py
smoke-oldest: dist
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q "pyzmq==$(PYZMQ_OLDEST)" "$$(ls dist/*.whl)[test]" \
	  "setuptools>=77" "Cython>=3.0,<4"; \
	cp -r tests pyproject.toml "$$tmp/"; \
	cd "$$tmp" && unset PYTHONPATH && \
	venv/bin/python -c "import sysconfig, zmq, pylm, pylm_core; \
	  site = sysconfig.get_paths()['platlib']; \
	  assert all(m.__file__.startswith(site) for m in (pylm, pylm_core)), (pylm.__file__, pylm_core.__file__); \
	  print('pyzmq', zmq.__version__, '(libzmq', zmq.zmq_version() + '); pylm from', site)" && \
	venv/bin/python -m pytest -q $(SMOKE_TESTS) $(PYTEST_ARGS)
