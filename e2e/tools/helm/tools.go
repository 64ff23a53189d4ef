//go:build tools

// Package tools records the Helm command the lab builds, so that go mod tidy keeps its module.
// It is a module of its own so that Helm's Kubernetes client modules do not meet the
// replaces of ../kube, which pins the Kubernetes the lab runs.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
