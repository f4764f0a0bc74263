# boltzgrad: `make demo` runs the main job, `make test` runs the checks, `make docs` builds the documentation
# site. Each sets up what it needs in .venv.
#
#   TORCH=cpu          install torch's CPU-only wheel (about 200 MB) instead of PyPI's default build (the
#                      CUDA build on Linux, several GB; it runs on the CPU too). Set before .venv exists.
#                      The wheel comes from TORCH_CPU_INDEX (PyTorch's CPU index; set it empty to use only
#                      the package indexes pip is configured with, e.g. a local mirror).
#   BOLTZGRAD_CUDA=1   require the CUDA kernels (the build fails loudly if nvcc or a CUDA torch is missing, and
#                      `make test` checks they were compiled); =0 never build them; unset: build them when
#                      nvcc ($CUDA_HOME/bin/nvcc) and a CUDA build of torch are there, else skip them.
PYTHON_SYS ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
TORCH      ?= default
TORCH_VERSION     ?= 2.14.1
TORCH_CPU_VERSION ?= 2.13.0+cpu
TORCH_CPU_INDEX   ?= https://download.pytorch.org/whl/cpu
ifeq ($(TORCH),cpu)
TORCH_SPEC ?= torch==$(TORCH_CPU_VERSION) $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX))
else ifeq ($(TORCH),default)
TORCH_SPEC ?= torch==$(TORCH_VERSION)
else
$(error TORCH must be 'default' or 'cpu', got '$(TORCH)')
endif
TEST_EXTRAS ?= dev,data,mace,nequip
BOLTZGRAD_CUDA ?=
CUDA_MODE  := $(if $(BOLTZGRAD_CUDA),$(BOLTZGRAD_CUDA),auto)

export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cpp csrc/cuda/*.cu csrc/cuda/*.h)

.PHONY: all venv build test test-slow lint demo docs docs-serve bench clean

all: build

# The environment: Python 3.11 venv, torch, boltzgrad editable with its required dependencies only (enough for
# the demo). Re-run when the project's dependencies change.
$(VENV)/.deps: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q $(TORCH_SPEC)
	BOLTZGRAD_NO_EXT=1 $(PIP) install -q --no-build-isolation -e .
	touch $@

# The checks also need the extras: dev (pytest, ruff, comparison libraries), data (tblite, OpenMM), mace, nequip.
$(VENV)/.deps-test: $(VENV)/.deps
	BOLTZGRAD_NO_EXT=1 $(PIP) install -q --no-build-isolation -e '.[$(TEST_EXTRAS)]'
	touch $@

$(VENV)/.deps-docs: $(VENV)/.deps
	BOLTZGRAD_NO_EXT=1 $(PIP) install -q --no-build-isolation -e '.[docs]'
	touch $@

venv: $(VENV)/.deps

# Compiled ops, built in place (incremental with ninja); the stamp records the CUDA mode it was built with.
$(VENV)/.built-$(CUDA_MODE): $(VENV)/.deps $(CSRC)
	flock build.lock env BOLTZGRAD_CUDA=$(BOLTZGRAD_CUDA) $(PY) setup.py -q build_ext --inplace
	rm -f $(VENV)/.built-*
	touch $@

build: $(VENV)/.built-$(CUDA_MODE)

lint: $(VENV)/.deps-test
	$(VENV)/bin/ruff check .

# BOLTZGRAD_EXPECT_CUDA=1 (with BOLTZGRAD_CUDA=1) makes tests/test_build.py fail unless the CUDA kernels load.
test: build lint $(VENV)/.deps-test
	BOLTZGRAD_EXPECT_CUDA=$(if $(filter 1,$(BOLTZGRAD_CUDA)),1,) $(PY) -m pytest -q

test-slow: build $(VENV)/.deps-test
	$(PY) -m pytest -q -m slow

demo: build
	$(PY) -m boltzgrad.demo

# The documentation site (MkDocs + mkdocstrings, pages in docs/, API pages from the docstrings) in site/; any
# warning is an error. NO_MKDOCS_2_WARNING silences a banner of the theme about its own future, not a warning.
docs: $(VENV)/.deps-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

docs-serve: $(VENV)/.deps-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: build
	$(PY) benchmarks/bench_histogram.py

clean:
	rm -rf build site boltzgrad/*.so $(VENV)/.built-*
