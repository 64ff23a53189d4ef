//go:build tools

// Package tools records the CoreDNS command the lab builds, so that go mod tidy keeps its module.
package tools

import _ "github.com/coredns/coredns"
