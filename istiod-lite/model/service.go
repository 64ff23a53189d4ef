package model

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// service translates a Service. ExternalName services have no addresses for ztunnel to capture and
// are left out; headless services are kept (no VIP) so their workloads know they back them.
func (t *translator) service(s *corev1.Service) *workloadv1.Service {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	out := &workloadv1.Service{
		Name:      s.Name,
		Namespace: s.Namespace,
		Hostname:  t.hostname(s.Name, s.Namespace),
	}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			t.report(Problem{Kind: KindService, Namespace: s.Namespace, Name: s.Name, Reason: ReasonInvalidValue,
				Message: fmt.Sprintf("cluster IP %q does not parse: left out", ip)})
			continue
		}
		out.Addresses = append(out.Addresses, a.AsSlice())
	}
	for _, sp := range s.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		p := &workloadv1.Port{ServicePort: uint32(sp.Port)}
		switch {
		case sp.TargetPort.Type != 0: // named: resolved per workload
			if out.TargetPortNames == nil {
				out.TargetPortNames = map[uint32]string{}
			}
			out.TargetPortNames[uint32(sp.Port)] = sp.TargetPort.StrVal
		case sp.TargetPort.IntVal == 0:
			p.TargetPort = uint32(sp.Port)
		default:
			p.TargetPort = uint32(sp.TargetPort.IntVal)
		}
		out.Ports = append(out.Ports, p)
	}
	out.Waypoint = t.serviceWaypoint(t.namespaces[s.Namespace], s)
	return out
}
