// Package cav1 holds the certificate authority's gRPC service and the trust bundle resource. The
// Go code is generated from ca.proto; edit that.
package cav1

//go:generate ../../protoc.sh ca/v1/ca.proto
