#!/usr/bin/env bash
# build.sh builds the lab's third-party binaries (Kubernetes, etcd, CNI plugins, CoreDNS, Helm)
# from the pinned tools modules into a cache outside the clone, keyed by the modules'
# go.mod and go.sum, and prints the directory that holds them. A warm cache returns at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${AMBIENT_LAB_CACHE:-/var/cache/ambient-lab}"
key="$(cat "$here"/kube/go.mod "$here"/kube/go.sum "$here"/dns/go.mod "$here"/dns/go.sum \
	"$here"/helm/go.mod "$here"/helm/go.sum "$0" | sha256sum | cut -c1-16)"
out="$cache_root/$key"
if [[ -f "$out/.complete" ]]; then echo "$out"; exit 0; fi
mkdir -p "$out/bin" "$out/cni"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
ld="-s -w"
start=$(date +%s)
(cd "$here/kube" && go build -trimpath -ldflags "$ld" -o "$out/bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kube-proxy \
	k8s.io/kubernetes/cmd/kubectl \
	./cmd/etcd) >&2
(cd "$here/kube" && go build -trimpath -ldflags "$ld" -o "$out/cni/" \
	github.com/containernetworking/plugins/plugins/main/bridge \
	github.com/containernetworking/plugins/plugins/ipam/host-local \
	github.com/containernetworking/plugins/plugins/main/loopback) >&2
(cd "$here/dns" && go build -trimpath -ldflags "$ld" -o "$out/bin/coredns" github.com/coredns/coredns) >&2
# Helm prints the version it is told at link time (its release builds do the same).
(cd "$here/helm" && go build -trimpath \
	-ldflags "$ld -X helm.sh/helm/v4/internal/version.version=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)" \
	-o "$out/bin/helm" helm.sh/helm/v4/cmd/helm) >&2
echo "lab tools built in $(( $(date +%s) - start ))s" >&2
touch "$out/.complete"
echo "$out"
