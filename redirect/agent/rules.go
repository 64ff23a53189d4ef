package agent

import (
	"github.com/ambient-mesh/ambient/api/mesh"
	corev1 "k8s.io/api/core/v1"
)

// Decision says whether a pod belongs in the mesh, and why; Reason is what an operator reads.
type Decision struct {
	Enrol  bool
	Reason string
}

// Wanted applies the enrolment rules of DESIGN.md §2: a hostNetwork pod never; the pod's
// istio.io/dataplane-mode label beats its namespace's (ambient enrols, none opts out, any other
// value is ignored as if absent, as Istio does); then the namespace's label. ns may be nil when
// the namespace is not known yet: only the pod's own label counts then.
func Wanted(ns *corev1.Namespace, pod *corev1.Pod) Decision {
	if pod.Spec.HostNetwork {
		return Decision{false, "hostNetwork pods share the node's network and are never captured"}
	}
	switch pod.Labels[mesh.LabelDataplaneMode] {
	case mesh.DataplaneModeAmbient:
		return Decision{true, "pod label " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient}
	case mesh.DataplaneModeNone:
		return Decision{false, "pod label " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeNone}
	}
	if ns != nil && ns.Labels[mesh.LabelDataplaneMode] == mesh.DataplaneModeAmbient {
		return Decision{true, "namespace label " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient}
	}
	return Decision{false, "no " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient + " label on the pod or its namespace"}
}

// finished reports whether the pod's containers have all ended for good: nothing left to capture.
func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}
