package model

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Waypoint traffic classes (istio.io/waypoint-for).
const (
	waypointForService  = "service"
	waypointForWorkload = "workload"
	waypointForAll      = "all"
)

// gatewayNameLabel marks the pods and Service of a Gateway's deployment (Gateway API). A waypoint's
// own pods and Service are never bound to a waypoint: traffic would loop through it.
const gatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// binding is the waypoint an object asks for through istio.io/use-waypoint.
type binding struct {
	name, namespace string
	set             bool // a label was present at this level (including "none")
}

func bindingOf(objNamespace string, l map[string]string) binding {
	name, ok := l[mesh.LabelUseWaypoint]
	if !ok {
		return binding{}
	}
	ns := l[mesh.LabelUseWaypointNamespace]
	if ns == "" {
		ns = objNamespace
	}
	return binding{name: name, namespace: ns, set: true}
}

// mostSpecific returns the first binding that is set: the object's own label wins over its
// namespace's; "none" on the object opts it out even when its namespace names a waypoint.
func mostSpecific(bs ...binding) binding {
	for _, b := range bs {
		if b.set {
			return b
		}
	}
	return binding{}
}

func (t *translator) podWaypoint(ns *corev1.Namespace, pod *corev1.Pod) *workloadv1.GatewayAddress {
	if _, ok := pod.Labels[gatewayNameLabel]; ok {
		return nil
	}
	b := mostSpecific(bindingOf(pod.Namespace, pod.Labels), bindingOf(pod.Namespace, nsLabels(ns)))
	return t.resolveWaypoint(b, waypointForWorkload, "Pod", pod.Namespace, pod.Name)
}

func (t *translator) serviceWaypoint(ns *corev1.Namespace, s *corev1.Service) *workloadv1.GatewayAddress {
	if _, ok := s.Labels[gatewayNameLabel]; ok {
		return nil
	}
	b := mostSpecific(bindingOf(s.Namespace, s.Labels), bindingOf(s.Namespace, nsLabels(ns)))
	return t.resolveWaypoint(b, waypointForService, "Service", s.Namespace, s.Name)
}

func nsLabels(ns *corev1.Namespace) map[string]string {
	if ns == nil {
		return nil
	}
	return ns.Labels
}

// resolveWaypoint turns a binding into the waypoint's address. A binding to a Gateway that does not
// exist, is not a waypoint, or does not carry this class of traffic binds nothing: traffic then
// flows directly, and the problem is reported.
func (t *translator) resolveWaypoint(b binding, class, kind, ns, name string) *workloadv1.GatewayAddress {
	if !b.set || b.name == "" || b.name == mesh.DataplaneModeNone {
		return nil
	}
	gw, ok := t.waypoints[b.namespace+"/"+b.name]
	if !ok {
		t.problem(kind, ns, name, "waypoint %s/%s not found", b.namespace, b.name)
		return nil
	}
	for_ := gw.Labels[mesh.LabelWaypointFor]
	if for_ == "" {
		for_ = waypointForService
	}
	if for_ != class && for_ != waypointForAll {
		// Not a problem: a namespace-wide binding to a service waypoint leaves pods alone.
		return nil
	}
	return &workloadv1.GatewayAddress{
		Destination: &workloadv1.GatewayAddress_Hostname{Hostname: &workloadv1.NamespacedHostname{
			Namespace: gw.Namespace,
			Hostname:  t.hostname(gw.Name, gw.Namespace),
		}},
		HboneMtlsPort: mesh.PortHBONE,
	}
}
