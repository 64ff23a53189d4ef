package model_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// A mesh route that does not attach, or whose backend does not resolve, is a problem on the route,
// with the condition routes.Writer writes for it; a route of another controller's Gateway is not.
func TestRouteProblems(t *testing.T) {
	in := withObjects(t, baseInput(), `
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{port: 80}]}`)
	ref := func(name string) gwv1.ParentReference {
		g, k := gwv1.Group(""), gwv1.Kind("Service")
		return gwv1.ParentReference{Group: &g, Kind: &k, Name: gwv1.ObjectName(name)}
	}
	route := func(name string, parent gwv1.ParentReference, backend string) *gwv1.HTTPRoute {
		r := &gwv1.HTTPRoute{}
		r.Namespace, r.Name, r.ResourceVersion = "shop", name, "1"
		r.Spec.ParentRefs = []gwv1.ParentReference{parent}
		r.Spec.Rules = []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: gwv1.BackendRef{
			BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(backend)}}}}}}
		return r
	}
	in.HTTPRoutes = []*gwv1.HTTPRoute{
		route("fine", ref("web"), "web"),
		route("gone", ref("web"), "gone"),
		route("elsewhere", gwv1.ParentReference{Name: "ingress"}, "gone"),
	}
	want := []model.Problem{{Kind: model.KindHTTPRoute, Namespace: "shop", Name: "gone", Condition: "ResolvedRefs",
		Reason: "BackendNotFound", Message: "backend Service shop/gone not found", Rejected: true}}
	if diff := cmp.Diff(want, model.Translate(model.DefaultConfig(), in).Problems); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}
