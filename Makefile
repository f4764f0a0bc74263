# boltzgrad: `make demo` runs the main job, `make test` runs the checks. Both set everything up.
PYTHON_SYS ?= python3.11
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.14.1
EXTRAS     ?= dev,data,mace

export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cpp csrc/cuda/*.cu csrc/cuda/*.h)

.PHONY: all venv build build-cuda test test-slow lint demo bench clean

all: build

# The environment: Python 3.11 venv, the CUDA 13.0 build of torch (runs on the CPU too),
# boltzgrad editable with its extras. Re-run when the project's dependencies change.
$(VENV)/.deps: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q $(TORCH_SPEC)
	BOLTZGRAD_NO_EXT=1 $(PIP) install -q --no-build-isolation -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.deps

# Compiled ops, built in place (incremental with ninja). BOLTZGRAD_CUDA=1 makes the build
# fail loudly if the CUDA kernels cannot be compiled.
$(VENV)/.built: $(VENV)/.deps $(CSRC)
	flock build.lock env BOLTZGRAD_CUDA=1 $(PY) setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.built

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .

test: build lint
	BOLTZGRAD_EXPECT_CUDA=1 $(PY) -m pytest -q

test-slow: build
	$(PY) -m pytest -q -m slow

demo: build
	$(PY) -m boltzgrad.demo

bench: build
	$(PY) benchmarks/bench_histogram.py

clean:
	rm -rf build boltzgrad/*.so $(VENV)/.built
