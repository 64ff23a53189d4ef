package xds

import (
	"maps"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	clocktesting "k8s.io/utils/clock/testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

const (
	testWaypoint = "shop/waypoint.shop.svc.cluster.local"
	webSvc       = "shop/web.shop.svc.cluster.local"
	dbSvc        = "shop/db.shop.svc.cluster.local"
)

func waypointAddr(key string) *workloadv1.GatewayAddress {
	if key == "" {
		return nil
	}
	ns, host, _ := cutSlash(key)
	return &workloadv1.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: ns, Hostname: host}}}
}

func cutSlash(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func svc(key, waypoint string) *workloadv1.Service {
	ns, host, _ := cutSlash(key)
	return &workloadv1.Service{Name: host, Namespace: ns, Hostname: host, Waypoint: waypointAddr(waypoint)}
}

func backing(w *workloadv1.Workload, services ...string) *workloadv1.Workload {
	w.Services = map[string]*workloadv1.PortList{}
	for _, s := range services {
		w.Services[s] = &workloadv1.PortList{}
	}
	return w
}

// waypointModel: web is bound to the waypoint, db is not; bound-pod is bound to it directly.
func waypointModel() *model.Snapshot {
	bound := wl("bound-pod", "shop", "node-a")
	bound.Waypoint = waypointAddr(testWaypoint)
	return &model.Snapshot{
		Workloads: map[string]*workloadv1.Workload{
			"web-1":     backing(wl("web-1", "shop", "node-a"), webSvc),
			"db-1":      backing(wl("db-1", "shop", "node-b"), dbSvc),
			"bound-pod": bound,
			"other":     wl("other", "other", "node-b"),
		},
		Services: map[string]*workloadv1.Service{webSvc: svc(webSvc, testWaypoint), dbSvc: svc(dbSvc, "")},
		Authorizations: map[string]*workloadv1.Authorization{
			"istio-system/global": {Name: "global", Namespace: "istio-system", Scope: workloadv1.Scope_GLOBAL},
		},
	}
}

// TestWaypointScope: a waypoint receives its bound services, the workloads behind them and those
// bound to it, and follows bindings as they change, even when the workloads themselves do not.
func TestWaypointScope(t *testing.T) {
	e := newEnv(t)
	m := waypointModel()
	e.update(t, m)
	wp := e.connect(t, "shop/waypoint/node-a", "waypoint", nil)
	want := func(c *client, typ string, names []string, removed []string) {
		t.Helper()
		r := c.recv()
		if diff := cmp.Diff(summary{Type: shortType(typ), Names: names, Removed: removed}, summarize(r)); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
		c.ack(r)
	}
	want(wp, TypeWorkload, []string{"bound-pod", "web-1"}, nil)
	wp.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService})
	want(wp, TypeService, []string{webSvc}, nil)
	zt := e.connect(t, "istio-system/ztunnel/node-a", "ztunnel", nil)
	want(zt, TypeWorkload, []string{"bound-pod", "db-1", "other", "web-1"}, nil)

	// db is bound to the waypoint: its service and, unchanged itself, its workload arrive.
	next := *m
	next.Services = maps.Clone(m.Services)
	next.Services[dbSvc] = svc(dbSvc, testWaypoint)
	e.update(t, &next)
	want(wp, TypeService, []string{dbSvc}, nil)
	want(wp, TypeWorkload, []string{"db-1"}, nil)
	m = &next

	// web is unbound: the waypoint forgets it and its workload.
	next = *m
	next.Services = maps.Clone(m.Services)
	next.Services[webSvc] = svc(webSvc, "")
	e.update(t, &next)
	want(wp, TypeService, nil, []string{webSvc})
	want(wp, TypeWorkload, nil, []string{"web-1"})
}

// TestWaypointSeesItsOwnRoutes: a waypoint receives the routes of its bound services and those
// of its own Service, which carry the policies for the workloads bound to it, and nobody else's.
func TestWaypointSeesItsOwnRoutes(t *testing.T) {
	e := newEnv(t)
	m := waypointModel()
	m.Services[testWaypoint] = svc(testWaypoint, "")
	m.Routes = map[string]*routev1.ServiceRoutes{
		webSvc:       {Namespace: "shop", Hostname: "web.shop.svc.cluster.local"},
		dbSvc:        {Namespace: "shop", Hostname: "db.shop.svc.cluster.local"},
		testWaypoint: {Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local", Policies: []*routev1.Policy{{Name: "deny-admin"}}},
	}
	e.update(t, m)
	wp := e.connect(t, "shop/waypoint/node-a", "waypoint", nil)
	wp.ack(wp.recv()) // workloads
	wp.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeServiceRoutes})
	r := wp.recv()
	if diff := cmp.Diff(summary{Type: shortType(TypeServiceRoutes), Names: []string{testWaypoint, webSvc}}, summarize(r)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestBulkSlotFreedWithNonce: a stream whose bulk response is never answered loses its slot
// after the timeout, with the response's nonce; its next bulk response waits for a slot like
// anyone's, so the bound holds for clients that never answer.
func TestBulkSlotFreedWithNonce(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	cfg := testServerConfig()
	cfg.BulkInFlight, cfg.BulkTimeout, cfg.Clock = 1, time.Minute, clk
	e := newEnvWith(t, cfg)
	m := scaleModel(bulkResources)
	e.update(t, m)
	inUse := func() int { return int(promtest.ToFloat64(e.srv.metrics.bulkInUse)) }
	waiting := func() int { return int(promtest.ToFloat64(e.srv.metrics.bulkWaiting)) }

	silent := e.connect(t, "istio-system/ztunnel/node-0", "silent", nil)
	if r := silent.recv(); len(r.Resources) != bulkResources {
		t.Fatalf("first push of %d resources", len(r.Resources))
	}
	// The silent client never answers. Another client waits for the only slot.
	other := e.connect(t, "istio-system/ztunnel/node-1", "other", nil)
	testutil.Eventually(t, 5*time.Second, "the second client waiting for the slot", func() bool { return waiting() == 1 && inUse() == 1 })
	clk.Step(cfg.BulkTimeout)
	first := other.recv() // the slot, freed with the silent client's nonce
	if len(first.Resources) != bulkResources {
		t.Fatalf("second client's first push of %d resources", len(first.Resources))
	}

	// A change of every workload: a bulk push for both. The silent client no longer holds a
	// slot, so it waits; the other rides on its own, still held.
	next := &model.Snapshot{Workloads: map[string]*workloadv1.Workload{}, Services: m.Services, Authorizations: m.Authorizations}
	for k, w := range m.Workloads {
		w = proto.Clone(w).(*workloadv1.Workload)
		w.Name += "-v2"
		next.Workloads[k] = w
	}
	e.update(t, next)
	second := other.recv()
	testutil.Eventually(t, 5*time.Second, "the silent client waiting for a slot", func() bool { return waiting() == 1 && inUse() == 1 })
	// A late answer to the forgotten nonce frees nothing; nor does the other client's answer to
	// its first bulk response while its latest is unanswered.
	silent.ack(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeWorkload, Nonce: "1"})
	other.ack(first)
	testutil.Eventually(t, 5*time.Second, "the other client's first answer processed", func() bool {
		for _, c := range e.srv.Clients() {
			if c.ID == "other" {
				return c.Types[TypeWorkload].AckedVersion == "1"
			}
		}
		return false
	})
	if waiting() != 1 || inUse() != 1 {
		t.Fatalf("after an answer to an earlier bulk response: %d waiting, %d in use; want the slot still held", waiting(), inUse())
	}
	other.ack(second)
	if r := silent.recv(); len(r.Resources) != bulkResources {
		t.Fatalf("silent client's push of %d resources", len(r.Resources))
	}
	testutil.Eventually(t, 5*time.Second, "one slot in use (the silent client's)", func() bool { return inUse() == 1 && waiting() == 0 })
}
