# Kybernate: time-sliced GPUs for Kubernetes. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.DEFAULT_GOAL := help

GO        ?= go
BIN       := $(CURDIR)/bin
GOFLAGS_BUILD := -trimpath
BINARIES  := kybernate-scheduler kybernate-extender kybernate-agent kybernate-activator cuda-test containerd-shim-kybernate-v1 kubectl-kybernate
PKG_kybernate-scheduler := ./scheduler/cmd/kybernate-scheduler
PKG_kybernate-extender  := ./scheduler/cmd/kybernate-extender
PKG_kybernate-agent     := ./nodeagent/cmd/kybernate-agent
PKG_kybernate-activator := ./activator/cmd/kybernate-activator
PKG_cuda-test           := ./cuda/cmd/cuda-test
PKG_containerd-shim-kybernate-v1 := ./shim/cmd/containerd-shim-kybernate-v1
PKG_kubectl-kybernate   := ./cli/cmd/kubectl-kybernate

TEST_TIMEOUT ?= 40m
# Results of the test tiers (go test -json), read by the summary of `make test`.
RESULTS   := $(CURDIR)/.cache/test-results
TIERS     := verify unit integration e2e fuzz
REPORT    := $(GO) run ./test/report
# How long `make test-fuzz` runs each fuzz target beyond its seed corpus.
FUZZTIME  ?= 15s

# go-nvml's header marks deprecated functions, and cgo warns about each one it wraps (about 150
# lines on a cold build). Exported, so that every go command of make and of the tests it runs
# (which build binaries themselves) gets it.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

# gotest TIER,ARGS: go test -json ARGS, printed briefly and kept for the summary by test/report.
gotest = mkdir -p $(RESULTS) && $(GO) test -json $(2) 2>&1 | $(REPORT) stream -tier $(1) -o $(RESULTS)/$(1).json

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: $(addprefix $(BIN)/,$(BINARIES)) ## Build the binaries into bin/.

$(BIN)/%: FORCE
	$(GO) build $(GOFLAGS_BUILD) -o $@ $(PKG_$*)

.PHONY: FORCE
FORCE:

.PHONY: test
test: deps ## Every test tier (verify, unit, integration, e2e, fuzz), then one summary (the README's test command).
	@rm -rf $(RESULTS); rc=0; \
	for tier in $(TIERS); do echo ">> make test-$$tier"; $(MAKE) --no-print-directory test-$$tier || rc=1; done; \
	$(REPORT) summary -tiers "$(TIERS)" $(RESULTS) || rc=1; exit $$rc

.PHONY: test-verify
test-verify: deps ## make verify, its checks kept for the summary of make test.
	mkdir -p $(RESULTS) && VERIFY_JSON=$(RESULTS)/verify.json hack/verify.sh

.PHONY: test-unit
test-unit: ## Unit tests: no GPU, no root, no cluster.
	$(call gotest,unit,-count=1 -race $$($(GO) list ./... | grep -v -e /test/integration -e /test/e2e))

.PHONY: test-integration
test-integration: controlplane seaweedfs runtime ## Integration tests on a real etcd + kube-apiserver + kwok cluster (and a real node, as root).
	$(call gotest,integration,-count=1 -timeout $(TEST_TIMEOUT) ./test/integration/...)

.PHONY: test-e2e
test-e2e: runtime ## Runtime e2e tests: the shim and agent on a private containerd, runc and CRIU (root).
	$(call gotest,e2e,-count=1 -timeout $(TEST_TIMEOUT) ./test/e2e/...)

.PHONY: test-fuzz
test-fuzz: ## Every Go fuzz target (found in the tree) for FUZZTIME beyond its seed corpus.
	mkdir -p $(RESULTS) && FUZZTIME=$(FUZZTIME) hack/test-fuzz.sh 2>&1 | $(REPORT) stream -tier fuzz -o $(RESULTS)/fuzz.json

.PHONY: deps
deps: ## Install the Debian packages that the tests and hack/ scripts need (root), or name them and stop.
	hack/install-deps.sh

.PHONY: runtime
runtime: deps ## Install the Debian packages (containerd, runc, ...) and CRIU 4.1 (cached) for the e2e tests (root).
	hack/install-runtime.sh >/dev/null

.PHONY: bench-scheduler
bench-scheduler: build controlplane ## Default scheduler vs kybernate-scheduler vs kube-scheduler + kybernate-extender on 1000 kwok nodes (client QPS 500, 3 repetitions; BASELINE=<commit> adds kybernate-scheduler built there); writes test/bench/results/scheduler-<date>.md.
	$(GO) run ./test/bench/scheduler -nodes $${NODES:-1000} -pods $${PODS:-2000} -create-qps $${QPS:-500} -reps $${REPS:-3} \
	  $${BASELINE:+-baseline-ref $$BASELINE} -kube-scheduler "$${KYBERNATE_CACHE_DIR:-$(CURDIR)/.cache}/bin/kube-scheduler"

.PHONY: bench-timeslice
bench-timeslice: ## Simulated time slicing vs kill-preemption vs FIFO on an oversubscribed trace (4x8 and 1x8 GPUs).
	{ echo "# Time slicing: simulated policies on an oversubscribed trace"; echo; \
	  $(GO) run ./test/bench/timeslice; echo; $(GO) run ./test/bench/timeslice -nodes 1; } | tee test/bench/results/timeslice-$$(date -u +%Y-%m-%d).md

.PHONY: bench-storage
bench-storage: ## Image store spill/fetch throughput vs a plain copy and a plain upload to SeaweedFS (same run).
	$(GO) run ./test/bench/storage | tee test/bench/results/storage-$$(date -u +%Y-%m-%d).md

.PHONY: bench-tiers
bench-tiers: runtime ## Resume time per storage tier (disk, SeaweedFS) of a BALLAST_MIB (8192) MiB container vs its cold start, on containerd, runc, CRIU, the shim and the agent (root); writes test/bench/results/tiers-<date>.md.
	hack/bench-tiers.sh

.PHONY: seaweedfs
seaweedfs: ## Build SeaweedFS's weed (the S3-compatible store of the storage tests) into .cache/bin.
	hack/build-seaweedfs.sh

.PHONY: controlplane
controlplane: deps ## Build etcd, kube-apiserver, controller-manager, kube-scheduler, kubectl, kubelet and kwok into .cache/bin.
	hack/build-controlplane.sh

.PHONY: cluster-up
cluster-up: controlplane ## Start a local control plane with kwok GPU nodes in .cache/cluster.
	hack/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local control plane started by cluster-up.
	hack/cluster-down.sh

.PHONY: node-up
node-up: controlplane runtime ## Add a real node (kubelet, containerd CRI, runc, CNI; root) to the cluster of cluster-up.
	hack/node-up.sh

.PHONY: node-down
node-down: ## Stop the real node and remove what it left on the machine.
	hack/node-down.sh

.PHONY: images
images: ## Build the agent, scheduler, pause and busybox images as OCI tarballs; import them into the real node when it runs.
	hack/images.sh

.PHONY: demo
demo: build controlplane ## Start a local cluster with simulated GPU nodes and run the demo workload.
	hack/demo.sh

.PHONY: demo-down
demo-down: ## Stop the demo cluster.
	hack/demo.sh down

.PHONY: generate
generate: deps ## Regenerate deepcopy, conversions, defaults, CRDs, clients and gRPC code.
	hack/update-codegen.sh

.PHONY: verify
verify: deps ## gofmt, go vet, go mod tidy without diff, generated files up to date.
	hack/verify.sh

.PHONY: clean
clean: ## Remove build outputs (keeps the control-plane cache; `make clean-cache` removes it).
	rm -rf $(BIN) .cache/images

.PHONY: clean-cache
clean-cache: cluster-down ## Remove the control-plane cache and local cluster state.
	rm -rf .cache
