package proxy

import (
	"net/http"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

// ownKey is the waypoint's own Service: its ServiceRoutes carry the policies that target the
// waypoint, which apply to the workloads bound to it.
const ownKey = "shop/wp.shop.svc.cluster.local"

func boundToWaypoint(w *workloadv1.Workload) *workloadv1.Workload {
	w.Waypoint = &workloadv1.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "wp.shop.svc.cluster.local"}}}
	return w
}

func addrOf(t *testing.T, w *workloadv1.Workload) netip.AddrPort {
	t.Helper()
	a, _ := netip.AddrFromSlice(w.Addresses[0])
	return netip.AddrPortFrom(a, uint16(w.Services[svcKey].Ports[0].TargetPort))
}

// TestResolveTunnel: a tunnel names a Service bound to the waypoint or a workload bound to it;
// a workload or Service of another waypoint, or none, is refused.
func TestResolveTunnel(t *testing.T) {
	bound := boundToWaypoint(backend(t, "bound", "127.0.0.31", 200))
	other := backend(t, "other", "127.0.0.32", 200)
	h := newHarness(t, nil, bound, other)
	v := h.p.cur.get()
	if tn, err := h.p.resolve(v, netip.MustParseAddrPort("10.96.0.10:80")); err != nil || tn.svc == nil || tn.key != svcKey {
		t.Errorf("Service VIP: %+v, %v", tn, err)
	}
	tn, err := h.p.resolve(v, addrOf(t, bound))
	if err != nil || tn.dst.GetUid() != "bound" || tn.key != ownKey || tn.svc != nil {
		t.Errorf("bound workload: %+v, %v; want its tunnel with the waypoint's own policies", tn, err)
	}
	if _, err := h.p.resolve(v, addrOf(t, other)); err == nil {
		t.Error("a workload not bound to the waypoint was taken")
	}
	if _, err := h.p.resolve(v, netip.MustParseAddrPort("10.1.2.3:80")); err == nil {
		t.Error("an unknown address was taken")
	}
}

// TestWorkloadAddressedRequests: requests to a bound workload's own address go to that workload,
// whatever the Service's routes say, under the policies that target the waypoint.
func TestWorkloadAddressedRequests(t *testing.T) {
	bound := boundToWaypoint(backend(t, "bound", "127.0.0.33", 200))
	other := backend(t, "other", "127.0.0.34", 200)
	svcRoutes := &routev1.ServiceRoutes{Rules: []*routev1.Rule{{Route: "HTTPRoute/shop/echo",
		Backends: []*routev1.Backend{{Service: svcKey, Port: 80, Weight: 1}}}}}
	h := newHarness(t, svcRoutes, bound, other)
	own := &routev1.ServiceRoutes{Namespace: "shop", Hostname: "wp.shop.svc.cluster.local", Policies: []*routev1.Policy{{
		Name: "no-admin", Namespace: "shop", Action: routev1.Policy_DENY,
		Rules: []*routev1.PolicyRule{{To: []*routev1.Operation{{Paths: []string{"/admin*"}}}}}}}}
	if err := h.p.d.Store.Put(xdsclient.TypeServiceRoutes, map[string]proto.Message{ownKey: own}); err != nil {
		t.Fatal(err)
	}
	tn, err := h.p.resolve(h.p.cur.get(), addrOf(t, bound))
	if err != nil {
		t.Fatal(err)
	}
	tn.peer = h.tun.peer
	*h.tun = *tn
	for i := range 10 {
		if code, r, _ := h.get(t, "/"); code != 200 || r.Pod != "bound" {
			t.Fatalf("request %d to the workload: %d from %q, want 200 from it", i, code, r.Pod)
		}
	}
	if code, _, _ := h.get(t, "/admin/users"); code != http.StatusForbidden {
		t.Errorf("/admin/users to the workload: %d, want 403 from the waypoint's policy", code)
	}
}
