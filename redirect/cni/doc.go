// Package cni is the mesh's chained CNI plugin and the edits that install it: the plugin asks
// the node agent, over the agent's unix socket, to set a new pod up for redirection before the
// pod's containers start; the conflist functions add and remove the plugin's entry in the node's
// CNI configuration list.
//
// The plugin decides nothing itself and never touches the kernel: the agent enrols the pod
// (it holds the pod and namespace state and the eBPF maps). The plugin never fails a pod the
// agent says is outside the mesh, and fails ADD, naming the cause, when a pod that belongs to
// the mesh cannot be set up, so that no such pod ever starts unprotected. It passes the previous
// plugin's result through unchanged.
package cni
