package model

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

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
	// holder is the object that carries the label, for problems.
	holderKind, holderNS, holderName string
}

func bindingOf(kind, objNamespace, objName string, l map[string]string) binding {
	name, ok := l[mesh.LabelUseWaypoint]
	if !ok {
		return binding{}
	}
	ns := l[mesh.LabelUseWaypointNamespace]
	if ns == "" {
		ns = objNamespace
	}
	return binding{name: name, namespace: ns, set: true, holderKind: kind, holderNS: objNamespace, holderName: objName}
}

// nsBinding is the binding a namespace's label asks for.
func nsBinding(ns *corev1.Namespace, name string) binding {
	if ns == nil {
		return binding{}
	}
	b := bindingOf(KindNamespace, name, name, ns.Labels)
	b.holderNS = "" // a Namespace is not namespaced
	return b
}

// mostSpecific returns the first binding that is set: the object's own label wins over its
// namespace's; "none" on the object opts it out even when its namespace names a waypoint. A
// binding that fails does not fall back to the namespace's (Istio's rule).
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
	b := mostSpecific(bindingOf(KindPod, pod.Namespace, pod.Name, pod.Labels), nsBinding(ns, pod.Namespace))
	wp, p := t.resolveWaypoint(b, waypointForWorkload, pod.Namespace)
	// Reported on the object that holds the label: a Namespace's once, not once per pod. A
	// namespace-wide binding to a waypoint for services only is how such a waypoint is meant to
	// be bound, and leaves pods alone: not a problem.
	if p != nil && (p.Reason != ReasonUnsupportedTrafficType || b.holderKind == KindPod) {
		p.Kind, p.Namespace, p.Name = b.holderKind, b.holderNS, b.holderName
		t.report(*p)
	}
	return wp
}

func (t *translator) serviceWaypoint(ns *corev1.Namespace, s *corev1.Service) *workloadv1.GatewayAddress {
	if _, ok := s.Labels[gatewayNameLabel]; ok {
		return nil
	}
	b := mostSpecific(bindingOf(KindService, s.Namespace, s.Name, s.Labels), nsBinding(ns, s.Namespace))
	wp, p := t.resolveWaypoint(b, waypointForService, s.Namespace)
	if p != nil {
		// Services have a condition for it (istio.io/WaypointBound), so each reports its own.
		p.Kind, p.Namespace, p.Name = KindService, s.Namespace, s.Name
		p.Condition, p.Rejected = ConditionWaypointBound, true
		t.report(*p)
	}
	return wp
}

func nsLabels(ns *corev1.Namespace) map[string]string {
	if ns == nil {
		return nil
	}
	return ns.Labels
}

// resolveWaypoint turns the binding of an object in namespace objNS into the waypoint's address.
// A binding to a Gateway that does not exist or is not a waypoint, whose allowedRoutes do not
// admit objNS, or that does not carry this class of traffic binds nothing: traffic then flows
// directly, and the returned problem (without its object) says why.
func (t *translator) resolveWaypoint(b binding, class, objNS string) (*workloadv1.GatewayAddress, *Problem) {
	if !b.set || b.name == "" || b.name == mesh.DataplaneModeNone {
		return nil, nil
	}
	key := b.namespace + "/" + b.name
	gw, ok := t.waypoints[key]
	if !ok {
		return nil, &Problem{Reason: ReasonWaypointNotFound,
			Message: fmt.Sprintf("waypoint %s (a Gateway of class %s) not found: traffic goes directly", key, meshWaypointClass)}
	}
	if !t.admits(gw, objNS) {
		return nil, &Problem{Reason: ReasonAttachmentDenied,
			Message: fmt.Sprintf("waypoint %s does not admit namespace %s (allowedRoutes of its %s listener): traffic goes directly", key, objNS, mesh.WaypointListenerProtocolHB)}
	}
	for_ := gw.Labels[mesh.LabelWaypointFor]
	if for_ == "" {
		for_ = waypointForService
	}
	if for_ != class && for_ != waypointForAll {
		return nil, &Problem{Reason: ReasonUnsupportedTrafficType,
			Message: fmt.Sprintf("waypoint %s is for %s traffic (%s), not %s: traffic goes directly", key, for_, mesh.LabelWaypointFor, class)}
	}
	return &workloadv1.GatewayAddress{
		Destination: &workloadv1.GatewayAddress_Hostname{Hostname: &workloadv1.NamespacedHostname{
			Namespace: gw.Namespace,
			Hostname:  t.hostname(gw.Name, gw.Namespace),
		}},
		HboneMtlsPort: mesh.PortHBONE,
	}, nil
}

// admits reports whether a waypoint accepts bindings from namespace ns, by the allowedRoutes of
// its HBONE listener (port 15008), as Istio decides: from All; from Same (the default, also
// without such a listener) only its own namespace; from Selector the namespaces whose labels the
// selector matches (an invalid selector admits none).
func (t *translator) admits(gw *gwv1.Gateway, ns string) bool {
	var ar *gwv1.RouteNamespaces
	for _, l := range gw.Spec.Listeners {
		if string(l.Protocol) == mesh.WaypointListenerProtocolHB && int(l.Port) == mesh.PortHBONE {
			if l.AllowedRoutes != nil {
				ar = l.AllowedRoutes.Namespaces
			}
			break
		}
	}
	from := gwv1.NamespacesFromSame
	if ar != nil && ar.From != nil {
		from = *ar.From
	}
	switch from {
	case gwv1.NamespacesFromAll:
		return true
	case gwv1.NamespacesFromSelector:
		if ar.Selector == nil {
			return false
		}
		sel, err := metav1.LabelSelectorAsSelector(ar.Selector)
		if err != nil {
			return false
		}
		return sel.Matches(labels.Set(nsLabels(t.namespaces[ns])))
	default: // Same, and values this version does not know
		return gw.Namespace == ns
	}
}
