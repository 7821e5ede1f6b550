# kubefal: fal.ai-style serverless GPU apps on Kubernetes. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := -p kubefal_api -p kubefal_operator -p kubefal_gateway -p kubefal_runner -p kubefal_webhook -p kubefal_cli -p kubefal_controlplane -p testkit

##@ General
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development
.PHONY: install
install: ## Create .venv and install kubefal with every extra, the bench extra and the dev tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U 'pip>=25.1'
	$(BIN)/pip install -q -e '.[all,bench]' --group dev

.PHONY: fmt
fmt: ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: lint
lint: ## ruff, mypy --strict and the import-linter contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PACKAGES)
	$(BIN)/lint-imports

.PHONY: manifests
manifests: ## Regenerate crds/ from the kubefal_api models (and the chart's copy)
	$(BIN)/python -m kubefal_api.crds crds/
	cp crds/kubefal.io_falapps.yaml charts/kubefal/files/crds/

.PHONY: protos
protos: ## Regenerate the gRPC code in gateway/kubefal_gateway/_generated from gateway/protos
	$(BIN)/python gateway/protos/generate.py

.PHONY: unit
unit: ## Fast tests: no cluster, no server processes (tests marked slow are left out)
	$(BIN)/pytest tests -q -m "not slow"

.PHONY: e2e
e2e: testbin ## The rest: tests that start real processes (marked slow) and the e2e suite on the local control plane
	$(BIN)/pytest tests e2e -q -m "slow or e2e"

# make test also builds the images (images/build.sh), the kubelet and KEDA (e2e/testbin.sh) and runs
# the image, real-node and real-KEDA tests, all cached outside the repository (~/.cache/kubefal,
# Go's caches). On a machine that cannot run them (e2e/preflight.py: not root, a Debian package
# missing, read-only cgroups, no overlayfs) they are skipped with that reason, which -rs prints.
.PHONY: test
test: lint testbin ## Everything: lint, types, import contracts, unit and e2e tests, the images, the real node, real KEDA
	@skip=$$($(BIN)/python -m e2e.preflight) || exit 1; \
	if [ -z "$$skip" ]; then \
	  bash images/build.sh && \
	  KUBEFAL_TESTBIN_REAL_NODE=1 KUBEFAL_TESTBIN_KEDA=1 bash e2e/testbin.sh >/dev/null && \
	  KUBEFAL_IMAGE_TESTS=1 KUBEFAL_REAL_NODE=1 KUBEFAL_KEDA=1 $(BIN)/pytest tests e2e -q -rs; \
	else \
	  echo "make test: the image, real-node and KEDA tests cannot run here: $$skip" >&2; \
	  KUBEFAL_PREFLIGHT_SKIP="$$skip" $(BIN)/pytest tests e2e -q -rs; \
	fi

.PHONY: chaos
chaos: testbin ## Reliability suite: kill -9, stalls, hostile clients; prints lost/wrong/run-twice per case
	$(BIN)/python -m e2e.chaos

##@ Benchmarks
.PHONY: bench
bench: testbin ## Every bench, short profile (BENCH_FULL=1 for the full run, BENCH_ONLY="gateway runner"); report in dist/bench/<time>/report.md
	$(BIN)/python bench/report.py run $(if $(BENCH_FULL),--full) $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

.PHONY: bench-readme
bench-readme: ## Rewrite README.md's benchmark table from the latest report (dist/bench/latest)
	$(BIN)/python bench/report.py readme

##@ Images
.PHONY: images
images: ## Build the kubefal, kubefal-runner and kubefal-builder images without Docker (dist/images/*.oci.tar)
	@bash images/build.sh

.PHONY: test-images
test-images: images ## Run the built images: the runner serves an app, the servers import
	KUBEFAL_IMAGE_TESTS=1 $(BIN)/pytest e2e/test_images.py -q

.PHONY: test-real-node
test-real-node: images ## A real kubelet + containerd node: pods are real containers from the images
	@bash e2e/testbin.sh --real-node >/dev/null
	KUBEFAL_REAL_NODE=1 $(BIN)/pytest e2e/test_realnode.py e2e/test_helm_real_node.py e2e/test_helm_real_node_runner.py e2e/test_container_image_build.py -q

.PHONY: test-keda
test-keda: images ## Real KEDA (built from its Go module) scales a keda FalApp of a helm release from zero and back
	@bash e2e/testbin.sh --real-node >/dev/null
	@bash e2e/testbin.sh --keda >/dev/null
	KUBEFAL_REAL_NODE=1 KUBEFAL_KEDA=1 $(BIN)/pytest e2e/test_keda_real.py -q

##@ Local control plane
.PHONY: testbin
testbin: ## Build etcd, kube-apiserver, KCM, scheduler, kwok, helm (cached in ~/.cache/kubefal/testbin)
	@bash e2e/testbin.sh

.PHONY: cluster-up
cluster-up: testbin ## Start the local control plane and print the KUBECONFIG line
	@$(BIN)/python -m e2e.cluster up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane by PID
	@$(BIN)/python -m e2e.cluster down

.PHONY: dev
dev: testbin ## kubefal on the local control plane: CRD, operator, gateway, runners, examples
	@$(BIN)/python -m e2e.dev

.PHONY: cluster-status
cluster-status: ## Is it running, and how much memory does it use
	@$(BIN)/python -m e2e.cluster status
