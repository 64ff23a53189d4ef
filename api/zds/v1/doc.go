// Package zdsv1 holds the messages of ZDS, the node agent ↔ ztunnel protocol (DESIGN.md §3); the
// wire rules are in redirect/zds/README.md. The Go code is generated from zds.proto; edit that.
package zdsv1

//go:generate ../../protoc.sh zds/v1/zds.proto
