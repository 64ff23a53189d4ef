// Package redirect owns the kernel side of traffic capture (DESIGN.md §5): the eBPF programs
// that steer a pod's TCP connections into the in-pod proxy, their maps and links pinned under
// a bpffs directory, and typed operations on them (enrol a network namespace, attach its inbound
// hooks, register proxy listeners, look up original destinations, uninstall).
//
// It must not decide which pods are enrolled, talk to Kubernetes, or open sockets of its own
// other than to read a network namespace's cookie. It never fails open: a socket that should be
// captured but cannot be is refused by the kernel, not let through.
//
// See README.md for the map key and value formats.
package redirect
