package routes

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambient-mesh/ambient/api/mesh"
)

func ptr[T any](v T) *T { return &v }

func svc(ns, name string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p})
	}
	return s
}

func serviceParent(name string) gwv1.ParentReference {
	return gwv1.ParentReference{Group: ptr(gwv1.Group("")), Kind: ptr(gwv1.Kind("Service")), Name: gwv1.ObjectName(name)}
}

func backend(ns, name string) gwv1.BackendRef {
	b := gwv1.BackendRef{BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: ptr(gwv1.PortNumber(80))}}
	if ns != "" {
		b.Namespace = ptr(gwv1.Namespace(ns))
	}
	return b
}

type condSummary struct{ accepted, acceptedReason, resolved, resolvedReason string }

func summarize(p gwv1.RouteParentStatus) condSummary {
	var s condSummary
	for _, c := range p.Conditions {
		switch c.Type {
		case string(gwv1.RouteConditionAccepted):
			s.accepted, s.acceptedReason = string(c.Status), c.Reason
		case string(gwv1.RouteConditionResolvedRefs):
			s.resolved, s.resolvedReason = string(c.Status), c.Reason
		}
	}
	return s
}

func TestParentStatus(t *testing.T) {
	in := Input{
		Services: []*corev1.Service{svc("shop", "web", 80), svc("shop", "db", 5432), svc("other", "api", 80)},
		Gateways: []*gwv1.Gateway{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "waypoint"}, Spec: gwv1.GatewaySpec{GatewayClassName: mesh.WaypointGatewayClass,
				Listeners: []gwv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "ingress"}, Spec: gwv1.GatewaySpec{GatewayClassName: "other"}},
		},
		ReferenceGrants: []*gwv1.ReferenceGrant{{ObjectMeta: metav1.ObjectMeta{Namespace: "other", Name: "shop-routes"}, Spec: gwv1.ReferenceGrantSpec{
			From: []gwv1.ReferenceGrantFrom{{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute", Namespace: "shop"}},
			To:   []gwv1.ReferenceGrantTo{{Kind: "Service"}}}}},
	}
	idx := newIndex(in)
	ok := condSummary{"True", "Accepted", "True", "ResolvedRefs"}
	for _, tc := range []struct {
		name     string
		kind     string
		parent   gwv1.ParentReference
		backends []gwv1.BackendRef
		want     *condSummary // nil: not the mesh's parent
	}{
		{"service parent, local backend", "HTTPRoute", serviceParent("web"), []gwv1.BackendRef{backend("", "web")}, &ok},
		{"service parent with its port", "HTTPRoute", func() gwv1.ParentReference { p := serviceParent("web"); p.Port = ptr(gwv1.PortNumber(80)); return p }(), nil, &ok},
		{"service parent, wrong port", "HTTPRoute", func() gwv1.ParentReference { p := serviceParent("web"); p.Port = ptr(gwv1.PortNumber(81)); return p }(), nil,
			&condSummary{"False", "NoMatchingParent", "True", "ResolvedRefs"}},
		{"missing service parent", "HTTPRoute", serviceParent("nope"), nil, &condSummary{"False", "NoMatchingParent", "True", "ResolvedRefs"}},
		{"missing backend", "HTTPRoute", serviceParent("web"), []gwv1.BackendRef{backend("", "gone")}, &condSummary{"True", "Accepted", "False", "BackendNotFound"}},
		{"cross-namespace backend with a grant", "HTTPRoute", serviceParent("web"), []gwv1.BackendRef{backend("other", "api")}, &ok},
		{"cross-namespace backend, grant is for HTTPRoutes only", "GRPCRoute", serviceParent("web"), []gwv1.BackendRef{backend("other", "api")},
			&condSummary{"True", "Accepted", "False", "RefNotPermitted"}},
		{"backend of another kind", "HTTPRoute", serviceParent("web"), []gwv1.BackendRef{{BackendObjectReference: gwv1.BackendObjectReference{
			Group: ptr(gwv1.Group("example.com")), Kind: ptr(gwv1.Kind("Bucket")), Name: "b"}}}, &condSummary{"True", "Accepted", "False", "InvalidKind"}},
		{"waypoint parent", "HTTPRoute", gwv1.ParentReference{Name: "waypoint"}, []gwv1.BackendRef{backend("", "db")}, &ok},
		{"waypoint parent, unknown listener", "HTTPRoute", gwv1.ParentReference{Name: "waypoint", SectionName: ptr(gwv1.SectionName("http"))}, nil,
			&condSummary{"False", "NoMatchingParent", "True", "ResolvedRefs"}},
		{"gateway of another class", "HTTPRoute", gwv1.ParentReference{Name: "ingress"}, nil, nil},
		{"missing gateway", "HTTPRoute", gwv1.ParentReference{Name: "nope"}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := gwv1.RouteParentStatus{ParentRef: tc.parent, ControllerName: "example.com/other"}
			got, changed := idx.parents(route{kind: tc.kind, obj: &metav1.ObjectMeta{Namespace: "shop", Generation: 3},
				parents: []gwv1.ParentReference{tc.parent}, backends: tc.backends, status: []gwv1.RouteParentStatus{other}})
			if got[0].ControllerName != "example.com/other" {
				t.Fatalf("another controller's parent status was dropped: %+v", got)
			}
			got = got[1:]
			if tc.want == nil {
				if len(got) != 0 || changed {
					t.Fatalf("status written for a parent that is not the mesh's: %+v", got)
				}
				return
			}
			if len(got) != 1 || !changed {
				t.Fatalf("got %d mesh parent statuses (changed %v), want 1", len(got), changed)
			}
			if got[0].ControllerName != mesh.ControllerName {
				t.Errorf("controller name %q", got[0].ControllerName)
			}
			if s := summarize(got[0]); s != *tc.want {
				t.Errorf("conditions %+v, want %+v", s, *tc.want)
			}
			for _, c := range got[0].Conditions {
				if c.ObservedGeneration != 3 {
					t.Errorf("condition %s observedGeneration %d, want 3", c.Type, c.ObservedGeneration)
				}
			}
		})
	}
}

// Reconcile writes status once, and not again while nothing changes; a parent removed from the
// spec loses its status.
func TestReconcileWritesOnChange(t *testing.T) {
	ctx := context.Background()
	gw := gwfake.NewSimpleClientset()
	route := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "r", Generation: 1},
		Spec: gwv1.HTTPRouteSpec{CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{serviceParent("web")}},
			Rules: []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: backend("", "web")}}}}}}
	if _, err := gw.GatewayV1().HTTPRoutes("shop").Create(ctx, route, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(gw)
	services := []*corev1.Service{svc("shop", "web", 80)}
	reconcile := func() *gwv1.HTTPRoute {
		t.Helper()
		cur, err := gw.GatewayV1().HTTPRoutes("shop").Get(ctx, "r", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Reconcile(ctx, Input{HTTPRoutes: []*gwv1.HTTPRoute{cur}, Services: services}); err != nil {
			t.Fatal(err)
		}
		got, err := gw.GatewayV1().HTTPRoutes("shop").Get(ctx, "r", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	updates := func() int {
		n := 0
		for _, a := range gw.Actions() {
			if a.GetVerb() == "update" && a.GetSubresource() == "status" {
				n++
			}
		}
		return n
	}
	got := reconcile()
	if len(got.Status.Parents) != 1 || summarize(got.Status.Parents[0]) != (condSummary{"True", "Accepted", "True", "ResolvedRefs"}) {
		t.Fatalf("status %+v", got.Status.Parents)
	}
	reconcile()
	if n := updates(); n != 1 {
		t.Errorf("%d status updates after two passes over an unchanged route, want 1", n)
	}
	got.Spec.ParentRefs = nil
	if _, err := gw.GatewayV1().HTTPRoutes("shop").Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := reconcile(); len(got.Status.Parents) != 0 {
		t.Errorf("status of a removed parent kept: %+v", got.Status.Parents)
	}
}

func TestParentServiceNeedsNoGrant(t *testing.T) {
	svc := gwv1.Kind("Service")
	core := gwv1.Group("")
	ns := gwv1.Namespace("mesh")
	parents := []gwv1.ParentReference{{Group: &core, Kind: &svc, Namespace: &ns, Name: "echo"}}
	if !ParentService(parents, "consumer", "mesh", "echo") {
		t.Error("a consumer route's backend that is its parent Service needs no ReferenceGrant")
	}
	if ParentService(parents, "consumer", "mesh", "other") {
		t.Error("another Service of the producer's namespace still needs a ReferenceGrant")
	}
}
