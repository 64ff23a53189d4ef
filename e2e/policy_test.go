//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPolicyProblemsSurfaced runs istiod-lite from deploy/ against the real API server (its RBAC,
// the CRDs' status subresource) and checks that what it cannot translate as written is surfaced
// on the objects: a policy with an HTTP attribute gets ZtunnelAccepted (UnsupportedValue) and a
// Warning Event, a targetRefs policy WaypointAccepted False, a Service bound to a waypoint whose
// allowedRoutes do not admit its namespace istio.io/WaypointBound False and an Event, one bound to
// a waypoint of its own namespace WaypointBound True; the waypoint's pods opt out of the mesh.
func TestPolicyProblemsSurfaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cs := client(t)
	deployIstiod(t, cs, 1)
	ns := newNamespace(t, cs, "shop")
	other := newNamespace(t, cs, "other")
	apply(t, ns, []byte(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET], ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: `+other+`}}
spec: {selector: {app: web}, ports: [{port: 80}]}
`))
	apply(t, other, []byte(`
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: api, labels: {istio.io/use-waypoint: wp}}
spec: {selector: {app: api}, ports: [{port: 80}]}
`))

	condition := func(kind, ns, name, typ string) string {
		return kubectl(t, "-n", ns, "get", kind, name, "-o",
			`jsonpath={range .status.conditions[?(@.type=="`+typ+`")]}{.status}/{.reason}{end}`)
	}
	for _, c := range []struct{ kind, ns, name, typ, want string }{
		{"authorizationpolicy", ns, "get-only", "ZtunnelAccepted", "True/UnsupportedValue"},
		{"authorizationpolicy", ns, "l7", "WaypointAccepted", "False/NotImplemented"},
		{"service", ns, "web", "istio.io/WaypointBound", "False/AttachmentDenied"},
		{"service", other, "api", "istio.io/WaypointBound", "True/Bound"},
	} {
		eventually(t, 60*time.Second, c.kind+" "+c.name+" "+c.typ+" "+c.want, func() bool {
			return condition(c.kind, c.ns, c.name, c.typ) == c.want
		})
	}
	for _, e := range []struct{ kind, name, reason string }{
		{"AuthorizationPolicy", "get-only", "UnsupportedValue"},
		{"AuthorizationPolicy", "l7", "NotImplemented"},
		{"Service", "web", "AttachmentDenied"},
	} {
		eventually(t, 30*time.Second, "a Warning Event on "+e.kind+" "+e.name, func() bool {
			evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false
			}
			for _, ev := range evs.Items {
				if ev.InvolvedObject.Kind == e.kind && ev.InvolvedObject.Name == e.name && ev.Type == "Warning" &&
					ev.Reason == e.reason && ev.Source.Component == "istiod-lite" {
					return true
				}
			}
			return false
		})
	}
	eventually(t, 60*time.Second, "the waypoint's Deployment", func() bool {
		d, err := cs.AppsV1().Deployments(other).Get(ctx, "wp", metav1.GetOptions{})
		if err != nil {
			return false
		}
		if got := d.Spec.Template.Labels["istio.io/dataplane-mode"]; got != "none" {
			t.Fatalf("waypoint pod template istio.io/dataplane-mode = %q, want none", got)
		}
		return true
	})
	if out := kubectl(t, "-n", ns, "get", "authorizationpolicy", "get-only", "-o", "jsonpath={.status.conditions[0].message}"); !strings.Contains(out, "methods") {
		t.Errorf("ZtunnelAccepted message %q does not name the attribute", out)
	}
}
