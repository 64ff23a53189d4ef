// Package agent is the node agent (DESIGN.md §2, §3 ZDS, §5): it decides which pods of its node
// are in the mesh, sets each one up for redirection without restarting it, hands its network
// namespace to ztunnel over ZDS, and reports the outcome on the pod (the
// ambient.istio.io/redirection annotation, Events). It installs the chained CNI plugin and
// serves it, so that new pods are set up before their containers start.
//
// It owns no eBPF code (package redirect does) and no proxying (ztunnel does). It must never
// leave an enrolled pod bypassing the proxy: a pod it cannot finish setting up stays enrolled
// (its traffic refused by the kernel) and is reported pending, never left half out of the mesh.
// State it needs after a restart is rebuilt from the kernel's pins and the pods' annotations.
package agent
