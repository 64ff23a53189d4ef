package model_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// One row per rule of waypoint binding (waypoint.go): istio.io/use-waypoint on a Namespace,
// Service or Pod, istio.io/use-waypoint-namespace for a waypoint elsewhere, which the waypoint's
// HBONE listener must admit through its allowedRoutes, as Istio decides.
func TestWaypointBinding(t *testing.T) {
	const waypoints = `
kind: Gateway
apiVersion: gateway.networking.k8s.io/v1
metadata: {name: same, namespace: other, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
kind: Gateway
apiVersion: gateway.networking.k8s.io/v1
metadata: {name: everyone, namespace: other, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}]}
---
kind: Gateway
apiVersion: gateway.networking.k8s.io/v1
metadata: {name: selected, namespace: other, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: blue}}}}}]
---
kind: Gateway
apiVersion: gateway.networking.k8s.io/v1
metadata: {name: services-only, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{port: 80}]}
`
	type bound struct {
		service, pod bool // whether shop's Service web and Pod web get a waypoint
	}
	tests := []struct {
		name    string
		objects string
		want    bound
		problem string // "" for none
	}{
		{
			name: "a waypoint in the object's namespace is bound (allowedRoutes default: Same)",
			objects: `
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: services-only}}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{port: 80}]}`,
			want: bound{service: true},
		},
		{
			name: "a waypoint elsewhere that admits only its own namespace refuses the binding",
			objects: `
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: same, istio.io/use-waypoint-namespace: other}}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{port: 80}]}`,
			problem: "Service shop/web: waypoint other/same does not admit namespace shop",
		},
		{
			name: "a waypoint elsewhere admitting All namespaces is bound",
			objects: `
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: everyone, istio.io/use-waypoint-namespace: other}}`,
			want: bound{service: true, pod: true},
		},
		{
			name: "a waypoint admitting a Selector of namespaces binds the namespaces whose labels match",
			objects: `
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, team: blue, istio.io/use-waypoint: selected, istio.io/use-waypoint-namespace: other}}`,
			want: bound{service: true, pod: true},
		},
		{
			name: "a waypoint admitting a Selector of namespaces refuses the others, reported once on the labelled Namespace and on each Service",
			objects: `
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, team: red, istio.io/use-waypoint: selected, istio.io/use-waypoint-namespace: other}}`,
			problem: "Namespace shop: waypoint other/selected does not admit namespace shop",
		},
		{
			name: "a binding on the pod itself is reported on the pod",
			objects: `
kind: Pod
metadata:
  name: api
  namespace: shop
  uid: shop-api
  labels: {istio.io/use-waypoint: same, istio.io/use-waypoint-namespace: other}
  annotations: {ambient.istio.io/redirection: enabled}
spec: {nodeName: node-1}
status: {phase: Running, podIP: 10.1.0.2}`,
			problem: "Pod shop/api: waypoint other/same does not admit namespace shop",
		},
		{
			name: "a binding to a Gateway that is not a waypoint binds nothing",
			objects: `
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: nope}}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{port: 80}]}`,
			problem: "Service shop/web: waypoint shop/nope (a Gateway of class istio-waypoint) not found",
		},
		{
			name: "a namespace bound to a waypoint for services leaves its pods alone, without a problem",
			objects: `
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: services-only}}`,
			want: bound{service: true},
		},
		{
			name: "a pod bound by its own label to a waypoint for services is a problem",
			objects: `
kind: Pod
metadata:
  name: api
  namespace: shop
  uid: shop-api
  labels: {istio.io/use-waypoint: services-only}
  annotations: {ambient.istio.io/redirection: enabled}
spec: {nodeName: node-1}
status: {phase: Running, podIP: 10.1.0.2}`,
			problem: "Pod shop/api: waypoint shop/services-only is for service traffic",
		},
		{
			name: "none on the object opts out of its namespace's waypoint",
			objects: `
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: services-only}}
---
kind: Service
apiVersion: v1
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{port: 80}]}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := withObjects(t, baseInput(), waypoints+"---"+tc.objects)
			// A row's Service web replaces the default one, which comes first.
			if slices.IndexFunc(in.Services[1:], func(s *corev1.Service) bool { return s.Name == "web" }) >= 0 {
				in.Services = in.Services[1:]
			}
			v := translate(t, in)
			svc := v.snap.Services["shop/web.shop.svc.cluster.local"]
			if got := svc.GetWaypoint() != nil; got != tc.want.service {
				t.Errorf("Service shop/web bound = %v, want %v", got, tc.want.service)
			}
			if got := v.pods["shop/web"].GetWaypoint() != nil; got != tc.want.pod {
				t.Errorf("Pod shop/web bound = %v, want %v", got, tc.want.pod)
			}
			got := v.problems()
			switch {
			case tc.problem == "" && len(got) > 0:
				t.Errorf("unexpected problems:\n%s", strings.Join(got, "\n"))
			case tc.problem != "" && !containsAny(got, tc.problem):
				t.Errorf("no problem contains %q; problems:\n%s", tc.problem, strings.Join(got, "\n"))
			}
			// A problem of a namespace's binding is reported once, on the Namespace.
			n := 0
			for _, p := range v.snap.Problems {
				if p.Kind == model.KindNamespace {
					n++
				}
			}
			if n > 1 {
				t.Errorf("%d problems on the Namespace, want at most one:\n%s", n, strings.Join(got, "\n"))
			}
		})
	}
}
