package route

import (
	"net/netip"
	"testing"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// table is a Lookup over literal workloads and services.
type table struct {
	ws  []*workloadv1.Workload
	svc []*workloadv1.Service
}

func (t table) WorkloadByAddr(a netip.Addr) *workloadv1.Workload {
	for _, w := range t.ws {
		for _, b := range w.Addresses {
			if x, _ := netip.AddrFromSlice(b); x.Unmap() == a {
				return w
			}
		}
	}
	return nil
}

func (t table) ServiceByAddr(ap netip.AddrPort) *workloadv1.Service {
	for _, s := range t.svc {
		for _, b := range s.Addresses {
			if x, _ := netip.AddrFromSlice(b); x.Unmap() == ap.Addr() {
				for _, p := range s.Ports {
					if p.ServicePort == uint32(ap.Port()) {
						return s
					}
				}
			}
		}
	}
	return nil
}

func (t table) Endpoints(key string) []*workloadv1.Workload {
	var out []*workloadv1.Workload
	for _, w := range t.ws {
		if _, ok := w.Services[key]; ok {
			out = append(out, w)
		}
	}
	return out
}

func (t table) ServiceByName(key string) *workloadv1.Service {
	for _, s := range t.svc {
		if ServiceKey(s) == key {
			return s
		}
	}
	return nil
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

type wopt func(*workloadv1.Workload)

func inMesh(w *workloadv1.Workload) { w.TunnelProtocol = workloadv1.TunnelProtocol_HBONE }
func unhealthy(w *workloadv1.Workload) {
	w.Status = workloadv1.WorkloadStatus_UNHEALTHY
}
func zone(z string) wopt {
	return func(w *workloadv1.Workload) { w.Locality = &workloadv1.Locality{Region: "r", Zone: z} }
}
func serves(key string, sp, tp uint32) wopt {
	return func(w *workloadv1.Workload) {
		if w.Services == nil {
			w.Services = map[string]*workloadv1.PortList{}
		}
		w.Services[key] = &workloadv1.PortList{Ports: []*workloadv1.Port{{ServicePort: sp, TargetPort: tp}}}
	}
}

func wl(name, addr string, opts ...wopt) *workloadv1.Workload {
	w := &workloadv1.Workload{Uid: name, Name: name, Namespace: "shop", ServiceAccount: name, TrustDomain: "cluster.local", Addresses: [][]byte{ip(addr)}}
	for _, o := range opts {
		o(w)
	}
	return w
}

func TestOutbound(t *testing.T) {
	echoSvc := &workloadv1.Service{Name: "echo", Namespace: "shop", Hostname: "echo.shop.svc.cluster.local",
		Addresses: [][]byte{ip("10.96.0.10")}, Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}
	const key = "shop/echo.shop.svc.cluster.local"
	waypointSvc := &workloadv1.Service{Name: "w", Namespace: "shop", Hostname: "w.shop.svc.cluster.local",
		Addresses: [][]byte{ip("10.96.0.11")}, Ports: []*workloadv1.Port{{ServicePort: 80}},
		Waypoint: &workloadv1.GatewayAddress{Destination: &workloadv1.GatewayAddress_Address{Address: ip("10.1.0.99")}}}
	src := wl("client", "10.1.0.1", inMesh, zone("a"))
	for _, tc := range []struct {
		name     string
		ws       []*workloadv1.Workload
		orig     string
		kind     Kind
		dst      string
		identity string
	}{
		{"unknown address passes through", []*workloadv1.Workload{src}, "192.0.2.1:443", Passthrough, "192.0.2.1:443", ""},
		{"pod outside the mesh passes through", []*workloadv1.Workload{src, wl("legacy", "10.1.0.2")}, "10.1.0.2:80", Passthrough, "10.1.0.2:80", ""},
		{"pod in the mesh is tunnelled with its identity", []*workloadv1.Workload{src, wl("db", "10.1.0.3", inMesh)}, "10.1.0.3:5432", Tunnel, "10.1.0.3:5432", "spiffe://cluster.local/ns/shop/sa/db"},
		{"service picks its endpoint's target port", []*workloadv1.Workload{src, wl("e1", "10.1.0.4", inMesh, serves(key, 80, 8080))}, "10.96.0.10:80", Tunnel, "10.1.0.4:8080", "spiffe://cluster.local/ns/shop/sa/e1"},
		{"service endpoint outside the mesh passes through to it", []*workloadv1.Workload{src, wl("e1", "10.1.0.4", serves(key, 80, 8080))}, "10.96.0.10:80", Passthrough, "10.1.0.4:8080", ""},
		{"unhealthy endpoints are skipped", []*workloadv1.Workload{src, wl("e1", "10.1.0.4", inMesh, unhealthy, serves(key, 80, 8080)), wl("e2", "10.1.0.5", inMesh, serves(key, 80, 8080))}, "10.96.0.10:80", Tunnel, "10.1.0.5:8080", "spiffe://cluster.local/ns/shop/sa/e2"},
		{"service with no ready endpoint refuses", []*workloadv1.Workload{src, wl("e1", "10.1.0.4", inMesh, unhealthy, serves(key, 80, 8080))}, "10.96.0.10:80", Refuse, "", ""},
		{"endpoint that does not serve the port is skipped", []*workloadv1.Workload{src, wl("e1", "10.1.0.4", inMesh, serves(key, 81, 8081))}, "10.96.0.10:80", Refuse, "", ""},
		{"same zone first", []*workloadv1.Workload{src, wl("far", "10.1.0.6", inMesh, zone("b"), serves(key, 80, 8080)), wl("near", "10.1.0.7", inMesh, zone("a"), serves(key, 80, 8080))}, "10.96.0.10:80", Tunnel, "10.1.0.7:8080", "spiffe://cluster.local/ns/shop/sa/near"},
		{"waypoint-bound service whose waypoint is unknown refuses rather than skip it", []*workloadv1.Workload{src}, "10.96.0.11:80", Refuse, "", ""},
		{"waypoint-bound workload whose waypoint is unknown refuses", []*workloadv1.Workload{src, func() *workloadv1.Workload {
			w := wl("db", "10.1.0.3", inMesh)
			w.Waypoint = waypointSvc.Waypoint
			return w
		}()}, "10.1.0.3:5432", Refuse, "", ""},
		{"mesh workload without a valid identity refuses", []*workloadv1.Workload{src, func() *workloadv1.Workload {
			w := wl("db", "10.1.0.3", inMesh)
			w.ServiceAccount = ""
			return w
		}()}, "10.1.0.3:5432", Refuse, "", ""},
		{"v4-mapped original destination", []*workloadv1.Workload{src, wl("db", "10.1.0.3", inMesh)}, "[::ffff:10.1.0.3]:5432", Tunnel, "10.1.0.3:5432", "spiffe://cluster.local/ns/shop/sa/db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Router
			d := r.Outbound(table{ws: tc.ws, svc: []*workloadv1.Service{echoSvc, waypointSvc}}, src, netip.MustParseAddrPort(tc.orig))
			if d.Kind != tc.kind {
				t.Fatalf("kind = %v (%s), want %v", d.Kind, d.Reason, tc.kind)
			}
			if d.Kind == Refuse {
				if d.Reason == "" {
					t.Error("refusal without a reason")
				}
				return
			}
			if got := d.Dst.String(); got != tc.dst {
				t.Errorf("dst = %s, want %s", got, tc.dst)
			}
			if d.Kind == Tunnel {
				if got := d.Identity.String(); got != tc.identity {
					t.Errorf("identity = %s, want %s", got, tc.identity)
				}
				if d.Gateway != netip.AddrPortFrom(d.Dst.Addr(), 15008) {
					t.Errorf("gateway = %s, want the pod's HBONE port", d.Gateway)
				}
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	const key = "shop/echo.shop.svc.cluster.local"
	svc := &workloadv1.Service{Namespace: "shop", Hostname: "echo.shop.svc.cluster.local", Addresses: [][]byte{ip("10.96.0.10")}, Ports: []*workloadv1.Port{{ServicePort: 80}}}
	tab := table{svc: []*workloadv1.Service{svc}, ws: []*workloadv1.Workload{
		wl("e1", "10.1.0.4", inMesh, serves(key, 80, 80)), wl("e2", "10.1.0.5", inMesh, serves(key, 80, 80)), wl("e3", "10.1.0.6", inMesh, serves(key, 80, 80))}}
	var r Router
	seen := map[string]int{}
	for range 30 {
		seen[r.Outbound(tab, nil, netip.MustParseAddrPort("10.96.0.10:80")).Workload.Name]++
	}
	for _, n := range []string{"e1", "e2", "e3"} {
		if seen[n] != 10 {
			t.Errorf("round robin over 3 endpoints, 30 connections: %v", seen)
			break
		}
	}
}

func TestWaypointHop(t *testing.T) {
	const wpKey = "shop/wp.shop.svc.cluster.local"
	wpAddr := &workloadv1.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "wp.shop.svc.cluster.local"}}}
	wpSvc := &workloadv1.Service{Name: "wp", Namespace: "shop", Hostname: "wp.shop.svc.cluster.local",
		Addresses: [][]byte{ip("10.96.0.20")}, Ports: []*workloadv1.Port{{ServicePort: 15008, TargetPort: 15008}}}
	bound := &workloadv1.Service{Name: "echo", Namespace: "shop", Hostname: "echo.shop.svc.cluster.local",
		Addresses: [][]byte{ip("10.96.0.10")}, Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}, Waypoint: wpAddr}
	const key = "shop/echo.shop.svc.cluster.local"
	src := wl("client", "10.1.0.1", inMesh)
	wpPod := wl("wp", "10.1.0.50", serves(wpKey, 15008, 15008)) // not in the mesh: it speaks HBONE itself
	backend := wl("e1", "10.1.0.4", inMesh, serves(key, 80, 8080))
	l := table{ws: []*workloadv1.Workload{src, wpPod, backend}, svc: []*workloadv1.Service{wpSvc, bound}}

	var r Router
	d := r.Outbound(l, src, netip.MustParseAddrPort("10.96.0.10:80"))
	if d.Kind != Tunnel || d.Gateway.String() != "10.1.0.50:15008" || d.Dst.String() != "10.96.0.10:80" ||
		d.Identity.String() != "spiffe://cluster.local/ns/shop/sa/wp" || d.Waypoint != wpSvc {
		t.Fatalf("service bound to a waypoint: got %v to %s via %s as %s (%s), want HBONE to the waypoint pod with the VIP as authority",
			d.Kind, d.Dst, d.Gateway, d.Identity, d.Reason)
	}

	unready := wl("wp", "10.1.0.50", unhealthy, serves(wpKey, 15008, 15008))
	if d := r.Outbound(table{ws: []*workloadv1.Workload{src, unready, backend}, svc: l.svc}, src, netip.MustParseAddrPort("10.96.0.10:80")); d.Kind != Refuse {
		t.Errorf("waypoint without a ready pod: %v, want refuse (never around the waypoint)", d.Kind)
	}

	// Inbound: without L7 policy at the waypoint, a pod's own address is reachable directly.
	if wps := InboundWaypoints(l, backend, 8080); len(wps) != 0 {
		t.Errorf("a Service without L7 policy requires its waypoint inbound: %v", wps)
	}
	// With it, the backend's port 8080 serves the bound service; only the waypoint may reach it.
	bound.EnforceWaypoint = true
	wps := InboundWaypoints(l, backend, 8080)
	if len(wps) != 1 || WaypointName(wps[0]) != wpKey {
		t.Fatalf("inbound waypoints of port 8080 = %v, want %s", wps, wpKey)
	}
	if len(InboundWaypoints(l, backend, 9090)) != 0 {
		t.Error("a port no bound service uses needs no waypoint")
	}
	// A pod bound to a waypoint of its own takes traffic from that waypoint and from its
	// Services' waypoints, which send their requests to it; from no one else.
	bound.EnforceWaypoint = false
	const podWpKey = "shop/wp-pods.shop.svc.cluster.local"
	podWp := &workloadv1.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "wp-pods.shop.svc.cluster.local"}}}
	boundPod := wl("e2", "10.1.0.5", inMesh, serves(key, 80, 8080))
	boundPod.Waypoint = podWp
	if wps := InboundWaypoints(l, boundPod, 8080); len(wps) != 2 || WaypointName(wps[0]) != podWpKey || WaypointName(wps[1]) != wpKey {
		t.Errorf("inbound waypoints of a bound pod's Service port = %v, want its own and its Service's", wps)
	}
	if wps := InboundWaypoints(l, boundPod, 9090); len(wps) != 1 || WaypointName(wps[0]) != podWpKey {
		t.Errorf("inbound waypoints of a bound pod's other port = %v, want its own only", wps)
	}
	bound.EnforceWaypoint = true
	for principal, want := range map[string]bool{
		"cluster.local/ns/shop/sa/wp":     true,
		"cluster.local/ns/shop/sa/client": false,
		"":                                false,
	} {
		if got := FromWaypoint(l, wps, principal); got != want {
			t.Errorf("FromWaypoint(%q) = %v, want %v", principal, got, want)
		}
	}
}
