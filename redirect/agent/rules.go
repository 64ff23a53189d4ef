package agent

import (
	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/redirect/cni"
	corev1 "k8s.io/api/core/v1"
)

// Decision says whether a pod belongs in the mesh, and why; Reason is what an operator reads.
type Decision struct {
	Enrol  bool
	Reason string
}

// Wanted applies the enrolment rule (cni.Enrols) to a pod and its namespace. ns may be nil when
// the namespace is not known yet: only the pod's own label counts then.
func Wanted(ns *corev1.Namespace, pod *corev1.Pod) Decision {
	var nsMode string
	if ns != nil {
		nsMode = ns.Labels[mesh.LabelDataplaneMode]
	}
	enrol, reason := cni.Enrols(pod.Labels[mesh.LabelDataplaneMode], nsMode, pod.Spec.HostNetwork)
	return Decision{enrol, reason}
}

// finished reports whether the pod's containers have all ended for good: nothing left to capture.
func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}
