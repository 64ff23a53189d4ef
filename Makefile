# Ambient build, test and lab targets. Every target installs what it needs by itself,
# idempotently: Debian packages through apt-get, Go tools through the go command.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go
BIN := $(CURDIR)/bin
# Binaries report the commit they were built from (ambientctl version, /debug/status).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# grpcnotrace: gRPC without golang.org/x/net/trace (its /debug/requests pages, unused here),
# which links html/template: 2.5 MB less code in each binary, which proxies hold resident.
GOFLAGS_BUILD := -trimpath -tags grpcnotrace -ldflags "-X github.com/ambient-mesh/ambient/internal/version.Release=$(VERSION)"
export GOFLAGS := -buildvcs=false

# Debian packages the targets need: iproute2 (netns, veth), nftables/iptables and conntrack
# (kube-proxy in the lab), clang/llvm (eBPF), protobuf-compiler (api/), tcpdump (the e2e check that
# only TLS crosses the lab network).
APT_PKGS := iproute2 nftables iptables conntrack clang llvm libbpf-dev protobuf-compiler tcpdump

.PHONY: all build unit e2e conformance test lint generate generate-check lab-up lab-down lab-tools deps bench bench-deps bench-unit bench-scale demo clean

all: build

deps: .deps.stamp
.deps.stamp:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

# Static binaries, as images ship them: no libc mapped into every proxy (1.4 MB of RSS each).
build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/ ./cmd/...

# Unit tests: fast, no lab. Tests that need root or kernel features run here too (CI is root).
unit: deps
	$(GO) test -count=1 -timeout 5m ./...

# The Kubernetes, etcd, CNI and CoreDNS binaries of the lab, built once into a cache outside the clone.
lab-tools:
	@./e2e/tools/build.sh >/dev/null

e2e: deps build lab-tools
	$(GO) test -tags e2e -count=1 -timeout 70m -v ./e2e/... ./deploy/... 2>&1 | tee .e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; \
	test $${PIPESTATUS[0]} -eq 0

# The Gateway API conformance suite, unmodified, with the mesh profiles (MESH-HTTP, MESH-GRPC), on a
# lab of its own with the mesh installed from deploy/; the report goes to conformance/reports/ (see
# conformance/README.md), or to CONFORMANCE_REPORT. The suite's flags go in CONFORMANCE_ARGS, e.g.
# make conformance CONFORMANCE_ARGS='-args --run-test=MeshBasic'.
conformance: deps build lab-tools
	AMBIENT_CONFORMANCE_REPORT=$(CONFORMANCE_REPORT) $(GO) test -tags conformance -count=1 -timeout 60m -v ./conformance/... $(CONFORMANCE_ARGS)

# make test runs the conformance suite too; its report goes beside the e2e log rather than over the
# committed one (which make conformance writes, to be committed on purpose).
test: lint unit e2e
	$(MAKE) conformance CONFORMANCE_REPORT=$(CURDIR)/.conformance-report.yaml

lint: deps
	@out="$$(gofmt -l $$(git ls-files '*.go' | grep -v '/e2e/tools/'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/... ./deploy/...
	$(GO) tool staticcheck ./...
	$(MAKE) generate-check

generate: deps
	$(GO) generate ./...

# generate-check fails when generated files differ from what make generate produces.
generate-check: generate
	@if [ -n "$$(git status --porcelain -- '*.pb.go' '*_bpfel.go' '*_bpfeb.go' '*_bpfel.o' '*_bpfeb.o')" ]; then \
		echo "generated files are stale; run make generate and commit:"; git status --porcelain; exit 1; fi

lab-up: build lab-tools
	$(BIN)/lab up

# The README's first command: the lab, the mesh from deploy/, a sample application, and a walk
# through what the mesh does (e2e/demo). A second run reuses what is built and up.
demo: deps lab-up
	$(BIN)/ambient-demo

lab-down: build
	$(BIN)/lab down

# make bench: the L4 data path against direct traffic, stunnel4, HAProxy and Go TLS on the same
# pods (e2e/l4_bench_test.go) and the node agent's onboarding (e2e/onboard_bench_test.go), in one
# lab; then BENCHMARKS.md and its plots from what they wrote to $(BENCH_RESULTS) (cmd/bench-report),
# with the control plane at scale from the last make bench-scale.
BENCH_RESULTS := e2e/bench/results
BENCH_PKGS := stunnel4 haproxy curl

bench-deps: deps
	@missing=""; for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

bench: bench-deps build lab-tools
	@mkdir -p $(BENCH_RESULTS)
	{ echo "# make bench on $$(date -u '+%F %H:%M UTC'), commit $(VERSION)"; \
	  $(GO) test -tags e2e -count=1 -timeout 40m -run '^$$' -bench 'AgentOnboarding|L4|Waypoint' -benchtime 1x -v ./e2e/ 2>&1; } | \
		tee .bench.log | grep -E '^(Benchmark|ok|FAIL|PASS|panic)|_test.go' ; \
	test $${PIPESTATUS[0]} -eq 0
	grep -E '^(# make bench|Benchmark.*-[0-9]+[[:space:]])' .bench.log > $(BENCH_RESULTS)/lab.bench
	$(BIN)/bench-report -results $(BENCH_RESULTS) -out BENCHMARKS.md

bench-unit: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

# istiod-lite at 1,000 and 10,000 pods with 100 simulated ztunnels and at 50,000 pods with 1,000,
# in the lab (e2e/scale_test.go); 100 single-pod changes per size. Most of its time is loading the
# pods into the API server. Its figures appear in BENCHMARKS.md from the next make bench (or
# bin/bench-report).
bench-scale: deps build lab-tools
	@mkdir -p $(BENCH_RESULTS)
	{ echo "# make bench-scale on $$(date -u '+%F %H:%M UTC'), commit $(VERSION)"; \
	  $(GO) test -tags e2e -count=1 -timeout 120m -run '^$$' -bench IstiodScale -benchtime 100x -v ./e2e/ 2>&1; } | \
		tee .bench-scale.log | grep -E '^(Benchmark|ok|FAIL|PASS|panic)|scale_test.go' ; \
	test $${PIPESTATUS[0]} -eq 0
	grep -E '^(# make bench-scale|Benchmark.*-[0-9]+[[:space:]])' .bench-scale.log > $(BENCH_RESULTS)/scale.bench

clean:
	rm -rf $(BIN) .deps.stamp
