package model

import (
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

func TestEnforceWaypoints(t *testing.T) {
	wp := &workloadv1.GatewayAddress{Destination: &workloadv1.GatewayAddress_Hostname{Hostname: &workloadv1.NamespacedHostname{Namespace: "shop", Hostname: "wp"}}}
	svcs := map[string]*workloadv1.Service{
		"shop/policed": {Waypoint: wp}, "shop/jwt": {Waypoint: wp}, "shop/routed-only": {Waypoint: wp}, "shop/unbound": {},
	}
	routes := map[string]*routev1.ServiceRoutes{
		"shop/policed":     {Policies: []*routev1.Policy{{Name: "p"}}},
		"shop/jwt":         {JwtRules: []*routev1.JWTRule{{Issuer: "i"}}},
		"shop/routed-only": {Rules: []*routev1.Rule{{}}},
		"shop/unbound":     {Policies: []*routev1.Policy{{Name: "p"}}},
	}
	enforceWaypoints(svcs, routes)
	for name, want := range map[string]bool{"shop/policed": true, "shop/jwt": true, "shop/routed-only": false, "shop/unbound": false} {
		if got := svcs[name].EnforceWaypoint; got != want {
			t.Errorf("%s: enforce_waypoint = %v, want %v", name, got, want)
		}
	}
}
