// Package zds owns ZDS, the unix-socket protocol by which the node agent tells the node's ztunnel
// which pods it serves (DESIGN.md §3), and both of its ends: the agent's Server, which owns the
// desired set of workloads and replays it to every proxy that connects, and the proxy's
// RunClient, which hands each message to a Handler and acks it. The wire format is in README.md;
// the messages are in api/zds/v1.
//
// It must not decide which pods are enrolled, enter a network namespace, or touch eBPF maps or
// Kubernetes: it carries workloads and their netns fds, nothing more. Malformed input from a peer
// closes that connection only; it never panics and never leaks a received fd.
package zds
