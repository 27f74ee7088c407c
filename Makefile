# unisup: `make` lists the targets. Targets that need the environment create .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build (an unpinned torch pulls multi-GB CUDA wheels)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[triton,spark,dev]"
	touch $(STAMP)

venv: $(STAMP) ## create the Python environment in .venv

demo: $(STAMP) ## run the main job on the bundled sample (the compiled pipeline through kfp.local)
	$(PY) -m pipelines.demo

reproduce: $(STAMP) ## the same pipeline with the quality profile's bigger budget (at most an hour on 2 cores)
	$(PY) -m pipelines.demo --config quality --root runs/reproduce

test: $(STAMP) ## run the test suite (all but the docker-marked tests)
	$(PY) -m pytest -q -m "not docker" $(PYTEST_ARGS)

test-docker: $(STAMP) ## build the images and run the pipeline in them (needs a Docker engine; LOCAL_BASE=1 offline)
	$(PY) -m pytest -q -m docker $(PYTEST_ARGS)

compile: $(STAMP) ## compile the pipelines to pipelines/compiled/
	$(PY) -m pipelines.compile

bench: $(STAMP) ## run benchmarks (all, or NAME=...); figures in bench/results/
	$(PY) -m bench $(NAME)

lint: $(STAMP) ## ruff over the code
	$(VENV)/bin/ruff check unisup components pipelines bench tests

submit: $(STAMP) ## upload a compiled pipeline and start a run on Kubeflow (KFP_HOST=..., SUBMIT_ARGS=...)
	@test -n "$(KFP_HOST)" || { echo "usage: make submit KFP_HOST=https://... [SUBMIT_ARGS='--param shard_count=8']"; exit 2; }
	$(PY) -m pipelines.submit --host $(KFP_HOST) $(SUBMIT_ARGS)

images: $(STAMP) ## build the container images (needs a Docker engine; LOCAL_BASE=1 when no image registry is reachable)
	PYTHON=$(PY) bash containers/build.sh

lock: ## write containers/requirements.lock, the images' pinned dependencies (needs a Docker engine and the base image)
	bash containers/lock.sh

clean: ## remove caches, run outputs and the environment
	rm -rf $(VENV) .cache runs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help venv demo reproduce test test-docker compile bench lint submit images lock clean
