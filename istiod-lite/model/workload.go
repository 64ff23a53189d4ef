package model

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambient-mesh/ambient/api/mesh"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

const meshWaypointClass = mesh.WaypointGatewayClass

// InMesh reports whether a pod is enrolled: its namespace or itself carries
// istio.io/dataplane-mode=ambient and the pod does not opt out with "none" (DESIGN.md §2).
func InMesh(ns *corev1.Namespace, pod *corev1.Pod) bool {
	switch pod.Labels[mesh.LabelDataplaneMode] {
	case mesh.DataplaneModeAmbient:
		return true
	case mesh.DataplaneModeNone:
		return false
	}
	return ns != nil && ns.Labels[mesh.LabelDataplaneMode] == mesh.DataplaneModeAmbient
}

// workload translates a pod. Every running pod with an IP becomes a workload, in the mesh or not:
// a ztunnel needs the ones outside the mesh too, to know it must reach them without HBONE.
// Host-network pods are left out, since their address is the node's and says nothing about them.
func (t *translator) workload(pod *corev1.Pod, authz map[string]*workloadv1.Authorization) *workloadv1.Workload {
	if pod.Spec.HostNetwork || pod.Status.PodIP == "" || pod.DeletionTimestamp != nil ||
		pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	ns := t.namespaces[pod.Namespace]
	inMesh := InMesh(ns, pod)
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	w := &workloadv1.Workload{
		Uid:            string(pod.UID),
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Node:           pod.Spec.NodeName,
		ServiceAccount: sa,
		TrustDomain:    t.cfg.TrustDomain,
		WorkloadName:   workloadName(pod),
		CanonicalName:  pod.Namespace + "/" + pod.Name,
		Status:         workloadv1.WorkloadStatus_UNHEALTHY,
		Locality:       t.localities[pod.Spec.NodeName],
	}
	for _, ip := range podIPs(pod) {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			t.report(Problem{Kind: KindPod, Namespace: pod.Namespace, Name: pod.Name, Reason: ReasonInvalidValue,
				Message: fmt.Sprintf("pod IP %q does not parse: left out", ip)})
			continue
		}
		w.Addresses = append(w.Addresses, a.AsSlice())
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			w.Status = workloadv1.WorkloadStatus_HEALTHY
		}
	}
	// HBONE only once the node agent says redirection is in place; until then the pod's inbound
	// traffic is not captured and a peer must send plaintext.
	if inMesh && pod.Annotations[mesh.AnnotationRedirection] == mesh.RedirectionEnabled {
		w.TunnelProtocol = workloadv1.TunnelProtocol_HBONE
	}
	t.bindServices(pod, w)
	if inMesh {
		w.Waypoint = t.podWaypoint(ns, pod)
		w.AuthorizationPolicies = t.boundAuthorizations(pod, authz)
	}
	return w
}

// Node labels of the topology (well-known Kubernetes labels; the subzone is Istio's).
const (
	LabelRegion  = "topology.kubernetes.io/region"
	LabelZone    = "topology.kubernetes.io/zone"
	LabelSubzone = "topology.istio.io/subzone"
)

// Topology returns a node's region, zone and subzone labels.
func Topology(n *corev1.Node) [3]string {
	return [3]string{n.Labels[LabelRegion], n.Labels[LabelZone], n.Labels[LabelSubzone]}
}

// localityOf returns a node's locality, or nil when it has no topology labels.
func localityOf(n *corev1.Node) *workloadv1.Locality {
	t := Topology(n)
	if t == [3]string{} {
		return nil
	}
	return &workloadv1.Locality{Region: t[0], Zone: t[1], Subzone: t[2]}
}

func podIPs(pod *corev1.Pod) []string {
	if len(pod.Status.PodIPs) == 0 {
		return []string{pod.Status.PodIP}
	}
	ips := make([]string, 0, len(pod.Status.PodIPs))
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	return ips
}

// workloadName names the pod's controller for telemetry: a Deployment's pods carry the
// ReplicaSet's name, which is the Deployment's plus "-<pod-template-hash>".
func workloadName(pod *corev1.Pod) string {
	for _, ref := range pod.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		if hash := pod.Labels["pod-template-hash"]; ref.Kind == "ReplicaSet" && hash != "" {
			return strings.TrimSuffix(ref.Name, "-"+hash)
		}
		return ref.Name
	}
	return pod.Name
}

// bindServices records the services selecting pod, with target ports resolved for this pod.
func (t *translator) bindServices(pod *corev1.Pod, w *workloadv1.Workload) {
	for _, s := range t.services[pod.Namespace] {
		sel, ok := t.selectors[s]
		if !ok || s.Spec.Type == corev1.ServiceTypeExternalName || !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		var pl workloadv1.PortList
		for _, sp := range s.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue // ztunnel carries TCP only
			}
			target, ok := resolveTargetPort(pod, sp)
			if !ok {
				continue // a named port this pod does not declare: it does not serve it
			}
			pl.Ports = append(pl.Ports, &workloadv1.Port{ServicePort: uint32(sp.Port), TargetPort: target})
		}
		if w.Services == nil {
			w.Services = map[string]*workloadv1.PortList{}
		}
		w.Services[s.Namespace+"/"+t.hostname(s.Name, s.Namespace)] = &pl
	}
}

func resolveTargetPort(pod *corev1.Pod, sp corev1.ServicePort) (uint32, bool) {
	tp := sp.TargetPort
	if tp.Type == 0 { // intstr.Int
		if tp.IntVal == 0 {
			return uint32(sp.Port), true
		}
		return uint32(tp.IntVal), true
	}
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == tp.StrVal && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
				return uint32(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}
