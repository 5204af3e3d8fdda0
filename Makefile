# `make test` and `make bench` do all of the set-up from a fresh clone (CPU machine):
# a .venv with the CPU build of torch 2.13.0 installed first (an unpinned torch pulls a multi-GB
# CUDA build), then this package with its extras.
# `make gpu-check` is for a GPU machine where torch and triton are preinstalled and nothing can be
# installed: it runs from the tree with PYTHONPATH=. and no venv.

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.aurora-installed
# The Triton of the GPU machines (SPEC, Environments), in a folder beside the venv: the sm_90 compile
# check runs with it too, since its ptxas allocates registers differently from the venv's triton 3.9.
GPU_IMAGE_TRITON ?= .triton-3.6
GPU_IMAGE_TRITON_STAMP := $(GPU_IMAGE_TRITON)/.aurora-installed
PYTEST_WORKERS ?= 2
RESULTS_DIR ?=
# gpu-check: also pack the results into this .tar.gz after each phase (a device call returns few files)
ARCHIVE ?=
# gpu-check: more options of bench.gpu_check, e.g. "--run-budget 330" for a shorter device call
GPU_CHECK_ARGS ?=

# Pure-Python packages the GPU machines lack (liger-kernel, pytest-benchmark): `make gpu-wheels` fetches them here into
# $(WHEELS); carried to the GPU machine, `make gpu-check` installs them into $(GPU_SITE) and benchmarks them.
WHEELS ?= .whl
GPU_SITE ?= /tmp/aurora-gpu-site
LIGER_VERSION ?= 0.8.5
# pytest-benchmark for gpu-check's pytest-benchmark phase, and its one dependency
PYTEST_BENCHMARK_VERSION ?= 5.3.1
PY_CPUINFO2_VERSION ?= 10.1.1

# the lowest transformers the package declares (pyproject.toml, the hf extra), tested in a venv of its own
TRANSFORMERS_FLOOR ?= 4.54.1
FLOOR_VENV ?= .venv-floor
FLOOR_LINKS := $(abspath $(FLOOR_VENV))/linked-from-main-venv
FLOOR_TESTS := $(shell grep -l 'importorskip("transformers")' tests/model/*.py)
# the vLLM release the plugin is written and tested against (make test-vllm)
VLLM_VERSION ?= 0.33.0
VLLM_VENV ?= .venv-vllm

.PHONY: test test-floor test-vllm bench gpu-check gpu-wheels compile-report clean

$(STAMP): pyproject.toml setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test,bench,model,hf,hub]'
	touch $(STAMP)

$(GPU_IMAGE_TRITON_STAMP): | $(STAMP)
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --target $(GPU_IMAGE_TRITON) triton==3.6.0
	touch $(GPU_IMAGE_TRITON_STAMP)

# CPU: the linter and the formatter's check (seconds), then every kernel under the Triton
# interpreter on CPU tensors. tests/benchmarks (pytest-benchmark) runs inside it, once, in its CPU
# mode, from tests/test_bench_harness.py; tests/vllm needs vLLM's venv (make test-vllm).
test: $(STAMP) $(GPU_IMAGE_TRITON_STAMP)
	$(VPY) -m ruff check aurora_kernels bench tests
	$(VPY) -m ruff format --check aurora_kernels bench tests
	AURORA_GPU_IMAGE_TRITON=$(GPU_IMAGE_TRITON) TRITON_INTERPRET=1 $(VPY) -m pytest -q -n $(PYTEST_WORKERS) tests --ignore=tests/vllm --ignore=tests/benchmarks

# CPU: the model's tests that use transformers (the files that import it), with the lowest transformers
# the package declares; the other model tests would run the same code a second time.
# torch and triton (1.7 GB installed) are not installed a second time: a .pth file puts a folder of links
# to the main venv's on the floor venv's path, after its own site-packages, so pip finds them installed
# and everything else (transformers, huggingface_hub, tokenizers; no `kernels`) is the floor venv's own.
test-floor: $(STAMP)
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	mkdir -p $(FLOOR_LINKS)
	cd $(VENV)/lib/python3*/site-packages && for package in torch torchgen functorch torch-*.dist-info triton triton-*.dist-info; \
		do ln -sfn "$$PWD/$$package" $(FLOOR_LINKS)/; done
	$(FLOOR_VENV)/bin/python -c "import site; open(site.getsitepackages()[0] + '/aurora-linked.pth', 'w').write('$(FLOOR_LINKS)\n')"
	$(FLOOR_VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test,model,hf]' transformers==$(TRANSFORMERS_FLOOR)
	TRITON_INTERPRET=1 $(FLOOR_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) $(FLOOR_TESTS)

# CPU: the vLLM plugin inside the real vLLM, in a venv of its own (vLLM pins its own torch; ~10 GB of
# downloads, so CI does not run it). Registration and parity under the interpreter; serving: bench/vllm_check.py.
test-vllm:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check vllm==$(VLLM_VERSION) pytest filelock
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
	TRITON_INTERPRET=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/vllm

# CPU: interpreter parity at small shapes, the sm_90 compile report (venv triton and 3.6), the H100 roofline floors.
# GPU: times every op against its peers.
bench: $(STAMP) $(GPU_IMAGE_TRITON_STAMP)
	AURORA_GPU_IMAGE_TRITON=$(GPU_IMAGE_TRITON) TRITON_INTERPRET=1 $(VPY) -m bench $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR))

gpu-wheels:
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d $(WHEELS) liger-kernel==$(LIGER_VERSION) \
		pytest-benchmark==$(PYTEST_BENCHMARK_VERSION) py-cpuinfo2==$(PY_CPUINFO2_VERSION)

compile-report: $(STAMP)
	$(VPY) -m aurora_kernels.compile_report

# GPU machine: the whole test suite on CUDA, then every benchmark, then a one-screen summary.
gpu-check:
	$(if $(wildcard $(WHEELS)/*.whl),$(PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl)
	PYTHONPATH=.$(if $(wildcard $(WHEELS)/*.whl),:$(GPU_SITE))$(if $(PYTHONPATH),:$(PYTHONPATH)) PYTHONUNBUFFERED=1 $(PYTHON) -m bench.gpu_check $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) $(if $(ARCHIVE),--archive $(ARCHIVE)) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(VLLM_VENV) $(GPU_IMAGE_TRITON) build *.egg-info .pytest_cache
