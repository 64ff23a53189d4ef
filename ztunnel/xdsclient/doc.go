// Package xdsclient is ztunnel's client of istiod-lite's configuration protocol: delta xDS over
// gRPC and TLS on port 15012 (DESIGN.md §3, istiod-lite/xds/README.md). It owns the stream, its
// reconnection, and the Store of what was received: workloads, services, authorizations and the
// trust bundle, indexed for the data path. It must not interpret the configuration (routing and
// policy compilation belong to route and authz, which read the Store) and must not drop the last
// good state because the control plane is away.
//
// # Protocol
//
// One wildcard subscription per type. On reconnect each subscription lists what the Store holds
// as initial_resource_versions, so that only changes are sent. Every response is answered by
// nonce: an ACK, or a NACK whose error_detail names each resource refused and why. A refused
// resource (undecodable, inconsistent with its name, or refused by the caller's Validator) keeps
// its previous version while the rest of the response is applied; see apply for why this
// differs from Envoy, which rejects whole responses.
//
// The two messages of the stream are encoded by wire.go, not by go-control-plane's generated
// types, whose descriptors cost every ztunnel and waypoint about 2.3 MB of memory at start-up.
//
// # Memory
//
// A State holds the decoded messages and, per type, a map by name and an index by address.
// Messages are shared between successive States; each applied response copies the maps of its
// type (copy-on-write), so while a response is applied the old and new maps of one type coexist.
// At 10,000 pod-like workloads (BenchmarkStateMemory) a State holds about 11 MB, some 1.1 KB a
// workload, mostly the decoded messages; the maps are about 1.4 MB, which is what applying a one
// workload change allocates (BenchmarkApplyOneChange: under 1 ms). A first push also holds its
// ~3.5 MB response while it is decoded.
package xdsclient
