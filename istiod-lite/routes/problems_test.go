package routes

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Check finds what Reconcile writes as False, once per route and condition: a parent that does not
// attach, a backend that does not resolve; routes of other controllers' parents are not its own.
func TestCheck(t *testing.T) {
	httpRoute := func(name string, parent gwv1.ParentReference, backends ...gwv1.BackendRef) *gwv1.HTTPRoute {
		r := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: gwv1.HTTPRouteSpec{CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{parent, parent}}}}
		for _, b := range backends {
			r.Spec.Rules = append(r.Spec.Rules, gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: b}}})
		}
		return r
	}
	grpcRoute := &gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "g"},
		Spec: gwv1.GRPCRouteSpec{CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{serviceParent("web")}},
			Rules: []gwv1.GRPCRouteRule{{BackendRefs: []gwv1.GRPCBackendRef{{BackendRef: backend("other", "api")}}}}}}
	in := Input{
		HTTPRoutes: []*gwv1.HTTPRoute{
			httpRoute("fine", serviceParent("web"), backend("", "web")),
			httpRoute("no-backend", serviceParent("web"), backend("", "gone")),
			httpRoute("no-parent", serviceParent("nope"), backend("", "web")),
			httpRoute("not-ours", gwv1.ParentReference{Name: "ingress"}, backend("", "gone")),
		},
		GRPCRoutes: []*gwv1.GRPCRoute{grpcRoute},
		Services:   []*corev1.Service{svc("shop", "web", 80), svc("other", "api", 80)},
	}
	want := []Finding{
		{Kind: "GRPCRoute", Namespace: "shop", Name: "g", Condition: "ResolvedRefs", Reason: "RefNotPermitted",
			Message: "backend other/api: no ReferenceGrant in other allows GRPCRoute from shop"},
		{Kind: "HTTPRoute", Namespace: "shop", Name: "no-backend", Condition: "ResolvedRefs", Reason: "BackendNotFound",
			Message: "backend Service shop/gone not found"},
		{Kind: "HTTPRoute", Namespace: "shop", Name: "no-parent", Condition: "Accepted", Reason: "NoMatchingParent",
			Message: "Service shop/nope not found"},
	}
	if diff := cmp.Diff(want, Check(in)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}
