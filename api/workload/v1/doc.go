// Package workloadv1 holds the resources istiod-lite pushes to ztunnel over delta xDS: Workload,
// Service and Authorization. The Go code is generated from the .proto files beside it; edit those.
package workloadv1

//go:generate ../../protoc.sh workload/v1/workload.proto workload/v1/authorization.proto
