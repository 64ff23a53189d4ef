package model

import (
	"testing"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// FuzzAuthorizationPolicy translates policies with user-written values. Translation must not panic,
// and an ALLOW rule must never come out broader than written: a rule that had an IP block or a port
// keeps a constraint on it, or is dropped.
func FuzzAuthorizationPolicy(f *testing.F) {
	f.Add("10.0.0.0/8", "8080", "cluster.local/ns/a/sa/b", "source.ip", "1.2.3.4", true)
	f.Add("bogus", "http", "*", "request.headers[x]", "v", false)
	f.Add("::1", "0", "ns/*", "destination.port", "99999", true)
	f.Fuzz(func(t *testing.T, ip, port, principal, key, value string, allow bool) {
		action := secapi.AuthorizationPolicy_DENY
		if allow {
			action = secapi.AuthorizationPolicy_ALLOW
		}
		ap := &secv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
			Spec: secapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "x"}},
				Action:   action,
				Rules: []*secapi.Rule{{
					From: []*secapi.Rule_From{{Source: &secapi.Source{IpBlocks: []string{ip}, Principals: []string{principal}}}},
					To:   []*secapi.Rule_To{{Operation: &secapi.Operation{Ports: []string{port}}}},
					When: []*secapi.Condition{{Key: key, Values: []string{value}}},
				}},
			},
		}
		snap := Translate(DefaultConfig(), Input{AuthorizationPolicies: []*secv1.AuthorizationPolicy{ap}})
		a := snap.Authorizations["ns/p"]
		if a == nil {
			t.Fatal("policy dropped entirely")
		}
		if a.Action != workloadv1.Action_ALLOW {
			return
		}
		for _, r := range a.Rules {
			var hasIP, hasPort bool
			for _, c := range r.Clauses {
				for _, m := range c.Matches {
					hasIP = hasIP || len(m.SourceIps) > 0
					hasPort = hasPort || len(m.DestinationPorts) > 0
				}
			}
			if !hasIP || !hasPort {
				t.Fatalf("ALLOW rule lost a constraint (ip %q port %q): %v", ip, port, r)
			}
		}
	})
}
