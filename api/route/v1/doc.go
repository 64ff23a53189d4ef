// Package routev1 holds what istiod-lite pushes to waypoints over delta xDS besides workloads and
// services: ServiceRoutes, the HTTP routing of one Service. The Go code is generated from the
// .proto file beside it; edit that.
package routev1

//go:generate ../../protoc.sh route/v1/route.proto
