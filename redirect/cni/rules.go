package cni

import "github.com/ambient-mesh/ambient/api/mesh"

// Enrols is the enrolment rule of DESIGN.md §2, in one place for the agent and for the plugin's
// fallback: a hostNetwork pod never; the pod's istio.io/dataplane-mode label beats its
// namespace's (ambient enrols, none opts out, any other value counts as absent, as in Istio);
// then the namespace's. The reason is what an operator reads.
func Enrols(podMode, nsMode string, hostNetwork bool) (bool, string) {
	if hostNetwork {
		return false, "hostNetwork pods share the node's network and are never captured"
	}
	switch podMode {
	case mesh.DataplaneModeAmbient:
		return true, "pod label " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient
	case mesh.DataplaneModeNone:
		return false, "pod label " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeNone
	}
	if nsMode == mesh.DataplaneModeAmbient {
		return true, "namespace label " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient
	}
	return false, "no " + mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient + " label on the pod or its namespace"
}
