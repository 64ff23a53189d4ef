package server

// What ztunnel holds, as ambientctl workloads and services show it (api/status): derived from
// the current configuration snapshot on each request, sorted, holding nothing secret.

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/ambient-mesh/ambient/api/status"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

func addrs(raw [][]byte) []string {
	out := make([]string, 0, len(raw))
	for _, b := range raw {
		if a, ok := netip.AddrFromSlice(b); ok {
			out = append(out, a.Unmap().String())
		}
	}
	return out
}

func waypointName(g *workloadv1.GatewayAddress) string {
	if g == nil {
		return ""
	}
	if h := g.GetHostname(); h != nil {
		return h.GetNamespace() + "/" + h.GetHostname()
	}
	if a, ok := netip.AddrFromSlice(g.GetAddress()); ok {
		return a.Unmap().String()
	}
	return ""
}

func workloadsOf(st *xdsclient.State) []status.Workload {
	out := []status.Workload{}
	for _, w := range st.Workloads() {
		proto := "TCP"
		if w.GetTunnelProtocol() == workloadv1.TunnelProtocol_HBONE {
			proto = "HBONE"
		}
		id := ""
		if w.GetServiceAccount() != "" {
			id = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", w.GetTrustDomain(), w.GetNamespace(), w.GetServiceAccount())
		}
		out = append(out, status.Workload{Namespace: w.GetNamespace(), Name: w.GetName(), Node: w.GetNode(), IPs: addrs(w.GetAddresses()),
			Identity: id, Protocol: proto, Waypoint: waypointName(w.GetWaypoint()), Healthy: w.GetStatus() == workloadv1.WorkloadStatus_HEALTHY})
	}
	slices.SortFunc(out, func(a, b status.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

func servicesOf(st *xdsclient.State) []status.Service {
	endpoints := map[string]int{}
	for _, w := range st.Workloads() {
		for svc := range w.GetServices() {
			endpoints[svc]++
		}
	}
	out := []status.Service{}
	for name, s := range st.Services() {
		sv := status.Service{Namespace: s.GetNamespace(), Hostname: s.GetHostname(), VIPs: addrs(s.GetAddresses()),
			Ports: []string{}, Endpoints: endpoints[name], Waypoint: waypointName(s.GetWaypoint())}
		for _, p := range s.GetPorts() {
			target := strconv.Itoa(int(p.GetTargetPort()))
			if n := s.GetTargetPortNames()[p.GetServicePort()]; n != "" {
				target = n
			}
			sv.Ports = append(sv.Ports, strconv.Itoa(int(p.GetServicePort()))+"->"+target)
		}
		out = append(out, sv)
	}
	slices.SortFunc(out, func(a, b status.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Hostname, b.Hostname))
	})
	return out
}
