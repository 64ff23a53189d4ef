package xds

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// A client that applies every response holds, after any sequence of subscription changes and
// snapshot changes, exactly the resources it subscribes to and may see, at their current
// versions. The stream keeps no per-resource record of what the client holds, so this checks that
// what it derives from its base snapshot is right.
func TestStreamConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	types := []string{TypeWorkload, TypeService, TypeAuthorization}
	pool := map[string][]string{ // names to subscribe to, some never existing
		TypeWorkload:      {"a1", "b1", "b2", "w3", "w4", "nope"},
		TypeService:       {"shop/web.shop.svc.cluster.local", "shop/s2.shop.svc.cluster.local", "x/nope"},
		TypeAuthorization: {"istio-system/global", "shop/ns-wide", "other/ns-wide", "shop/db-allow", "shop/web-allow", "x/nope"},
	}
	for run := range 300 {
		m := baseModel()
		snap, err := NewSnapshot(m, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Half the runs as a waypoint, whose view depends on bindings, not only on the
		// resources it receives.
		proxy := &Proxy{ID: "z", Role: RoleZtunnel, Node: "node-a"}
		if run%2 == 1 {
			proxy = &Proxy{ID: "w", Role: RoleWaypoint, Namespace: "shop", Waypoint: testWaypoint}
		}
		st := newStream(proxy)
		held := map[string]map[string]string{}
		apply := func(enc *response) {
			r := decode(t, enc)
			if r == nil {
				return
			}
			for _, res := range r.Resources {
				held[r.TypeUrl][res.Name] = res.Version
			}
			for _, n := range r.RemovedResources {
				delete(held[r.TypeUrl], n)
			}
		}
		var log []string
		for step := range 40 {
			typ := types[rng.IntN(len(types))]
			names := pool[typ]
			switch op := rng.IntN(6); {
			case op <= 2: // a request
				req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ}
				if _, ok := st.watches[typ]; ok || rng.IntN(2) == 0 {
					for range rng.IntN(3) {
						req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, names[rng.IntN(len(names))])
					}
					for range rng.IntN(3) {
						req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, names[rng.IntN(len(names))])
					}
					if rng.IntN(4) == 0 {
						req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, "*")
					}
					if rng.IntN(4) == 0 {
						req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, "*")
					}
				}
				if held[typ] == nil {
					held[typ] = map[string]string{}
				}
				// The client forgets what it unsubscribes from by name, unless a wildcard
				// still covers it; the request's own subscriptions are applied after.
				w := st.watches[typ]
				for _, n := range req.ResourceNamesUnsubscribe {
					if n != "*" && (w == nil || !w.wildcard) {
						delete(held[typ], n)
					}
				}
				log = append(log, fmt.Sprintf("request %s +%v -%v", shortType(typ), req.ResourceNamesSubscribe, req.ResourceNamesUnsubscribe))
				resp, _ := st.onRequest(req, snap)
				apply(resp)
			default: // the cluster changes
				next := *m
				next.Workloads = maps.Clone(m.Workloads)
				next.Services = maps.Clone(m.Services)
				next.Authorizations = maps.Clone(m.Authorizations)
				switch rng.IntN(4) {
				case 0:
					n := pool[TypeWorkload][rng.IntN(5)]
					node := []string{"node-a", "node-b"}[rng.IntN(2)]
					next.Workloads[n] = wl(n, []string{"shop", "other"}[rng.IntN(2)], node, "shop/web-allow")
					next.Workloads[n].Name = fmt.Sprint(n, step)
					if rng.IntN(2) == 0 {
						backing(next.Workloads[n], pool[TypeService][rng.IntN(2)])
					}
					if rng.IntN(4) == 0 {
						next.Workloads[n].Waypoint = waypointAddr(testWaypoint)
					}
				case 1:
					delete(next.Workloads, pool[TypeWorkload][rng.IntN(5)])
				case 2:
					n := pool[TypeService][rng.IntN(2)]
					next.Services[n] = &workloadv1.Service{Name: fmt.Sprint("s", step), Namespace: "shop", Hostname: n}
					if rng.IntN(2) == 0 {
						next.Services[n].Waypoint = waypointAddr(testWaypoint)
					}
				case 3:
					n := pool[TypeAuthorization][rng.IntN(5)]
					if _, ok := next.Authorizations[n]; ok {
						delete(next.Authorizations, n)
					} else {
						next.Authorizations[n] = &workloadv1.Authorization{Name: fmt.Sprint("a", step), Namespace: "shop", Scope: workloadv1.Scope_GLOBAL}
					}
				}
				ns, err := snap.Next(&next, nil)
				if err != nil {
					t.Fatal(err)
				}
				log = append(log, "push")
				for _, r := range st.onPush(ns, changed(snap, ns)) {
					apply(r)
				}
				m, snap = &next, ns
			}
			for typ, w := range st.watches {
				want := map[string]string{}
				for n, r := range snap.resources[typ] {
					if w.subscribed(n) && snap.visible(st.proxy, typ, n) {
						want[n] = r.version
					}
				}
				if diff := cmp.Diff(want, held[typ]); diff != "" {
					t.Fatalf("run %d step %d: client's %s differ from what it subscribes to (-want +held):\n%s\nsteps:\n%v",
						run, step, shortType(typ), diff, log)
				}
			}
		}
	}
}
