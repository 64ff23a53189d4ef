// Package hbone owns HBONE, the tunnel every byte between meshed workloads travels in: HTTP/2
// CONNECT over mutual TLS 1.3 (DESIGN.md §3, README.md in this folder for the wire format).
//
// It holds the TLS side of workload identity (CSRs, TLS configs, verifying a peer chain against a
// trust bundle and a set of acceptable identities), the server that accepts tunnels and hands each
// one to a Handler, and the client that opens tunnels over pooled, multiplexed connections.
//
// It must not decide policy (the Handler authorizes), fetch certificates or trust bundles (callers
// pass functions that return the current ones), open upstream connections, or import Kubernetes
// code: ztunnel and the waypoint both build on it.
package hbone
