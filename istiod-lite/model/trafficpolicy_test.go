package model

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func TestDestinationRules(t *testing.T) {
	dr := func(name, ns, spec string) string {
		return "kind: DestinationRule\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec: " + spec
	}
	lb := func(l routev1.TrafficPolicy_LoadBalancer) *routev1.TrafficPolicy {
		return &routev1.TrafficPolicy{LoadBalancer: l}
	}
	hash := func(f func(*routev1.TrafficPolicy)) *routev1.TrafficPolicy {
		p := lb(routev1.TrafficPolicy_CONSISTENT_HASH)
		f(p)
		return p
	}
	outlier := func(errs, intervalMs, baseMs, pct uint32) *routev1.TrafficPolicy {
		return &routev1.TrafficPolicy{OutlierDetection: &routev1.OutlierDetection{Consecutive_5XxErrors: errs,
			IntervalMs: intervalMs, BaseEjectionTimeMs: baseMs, MaxEjectionPercent: pct}}
	}
	const extraKey = "shop/extra.shop.svc.cluster.local"
	tests := []struct {
		name     string
		docs     string
		want     map[string]*routev1.TrafficPolicy // by ServiceRoutes key; the others have none
		problems []wantProblem
	}{{
		name: "host forms and simple load balancers",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}`) + "\n---\n" +
			dr("v2", "other", `{host: v2.shop, trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}}`) + "\n---\n" +
			dr("db", "shop", `{host: db.other.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`) + "\n---\n" +
			dr("extra", "shop", `{host: extra.shop.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}`),
		want: map[string]*routev1.TrafficPolicy{
			webKey:   lb(routev1.TrafficPolicy_ROUND_ROBIN),
			v2Key:    lb(routev1.TrafficPolicy_LEAST_REQUEST),
			dbKey:    lb(routev1.TrafficPolicy_RANDOM),
			extraKey: lb(routev1.TrafficPolicy_LEAST_REQUEST),
		},
	}, {
		name: "unset, UNSPECIFIED and PASSTHROUGH are the default; no trafficPolicy sets none",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}`) + "\n---\n" +
			dr("v2", "shop", `{host: v2, trafficPolicy: {loadBalancer: {simple: UNSPECIFIED}}}`) + "\n---\n" +
			dr("db", "other", `{host: db}`) + "\n---\n" +
			dr("extra", "shop", `{host: extra, trafficPolicy: {}}`),
		want: map[string]*routev1.TrafficPolicy{webKey: {}, v2Key: {}, extraKey: {}},
		problems: []wantProblem{
			{"", false, "loadBalancer.simple PASSTHROUGH: the waypoint balances over the Service's endpoints, by its default"},
		},
	}, {
		name: "consistent hash keys; the algorithm's parameters are ignored silently",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}}}}`) + "\n---\n" +
			dr("v2", "shop", `{host: v2, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 10s}}}}}`) + "\n---\n" +
			dr("db", "other", `{host: db, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}}`) + "\n---\n" +
			dr("extra", "shop", `{host: extra, trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: user}}}}`),
		want: map[string]*routev1.TrafficPolicy{
			webKey:   hash(func(p *routev1.TrafficPolicy) { p.HashHeader = "x-user" }),
			v2Key:    hash(func(p *routev1.TrafficPolicy) { p.HashCookie = "session" }),
			dbKey:    hash(func(p *routev1.TrafficPolicy) { p.HashSourceIp = true }),
			extraKey: hash(func(p *routev1.TrafficPolicy) { p.HashQueryParameter = "user" }),
		},
		problems: []wantProblem{
			{"", false, "trafficPolicy fields not applied: loadBalancer.consistentHash.httpCookie.ttl"},
		},
	}, {
		name: "a consistent hash without a key is the default",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: false}}}}`),
		want: map[string]*routev1.TrafficPolicy{webKey: {}},
		problems: []wantProblem{
			{"", false, "loadBalancer.consistentHash has no key: the waypoint's default applies"},
		},
	}, {
		name: "connection pool",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {connectionPool: {tcp: {maxConnections: 100, connectTimeout: 1s},
			http: {http2MaxRequests: 1000, http1MaxPendingRequests: 10, maxRetries: 3}}}}`),
		want: map[string]*routev1.TrafficPolicy{webKey: {MaxConnections: 100, Http2MaxRequests: 1000, MaxPendingRequests: 10}},
		problems: []wantProblem{
			{"", false, "trafficPolicy fields not applied: connectionPool.tcp.connectTimeout, connectionPool.http.maxRetries"},
		},
	}, {
		name: "outlier detection, from Istio's defaults",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 1m, maxEjectionPercent: 50}}}`) + "\n---\n" +
			dr("v2", "shop", `{host: v2, trafficPolicy: {outlierDetection: {}}}`) + "\n---\n" +
			dr("db", "other", `{host: db, trafficPolicy: {outlierDetection: {consecutiveErrors: 7, interval: 1500ms}}}`) + "\n---\n" +
			dr("extra", "shop", `{host: extra, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0, consecutiveErrors: 7}}}`),
		want: map[string]*routev1.TrafficPolicy{
			webKey:   outlier(3, 5000, 60000, 50),
			v2Key:    outlier(5, 10000, 30000, 10),
			dbKey:    outlier(7, 1500, 30000, 10),
			extraKey: outlier(0, 10000, 30000, 10), // consecutive5xxErrors wins, and 0 turns ejection off
		},
	}, {
		name: "values out of range are reported and left at their defaults",
		docs: dr("web", "shop", `{host: web, trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}},
			outlierDetection: {interval: 0s, baseEjectionTime: 0.0001s, maxEjectionPercent: 150}}}`),
		want: map[string]*routev1.TrafficPolicy{webKey: {OutlierDetection: &routev1.OutlierDetection{
			Consecutive_5XxErrors: 5, IntervalMs: 10000, BaseEjectionTimeMs: 30000, MaxEjectionPercent: 10}}},
		problems: []wantProblem{
			{"", false, "connectionPool.tcp.maxConnections -1 is negative"},
			{"", false, "outlierDetection.baseEjectionTime 100µs is not a duration of at least 1ms"},
			{"", false, "outlierDetection.interval 0s is not a duration of at least 1ms"},
			{"", false, "outlierDetection.maxEjectionPercent 150 is not a percentage"},
		},
	}, {
		name: "subsets, portLevelSettings, exportTo and other fields are reported; the top-level policy applies",
		docs: dr("web", "shop", `
  host: web
  exportTo: [.]
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}]`) + "\n---\n" +
			dr("v2", "shop", `{host: v2, exportTo: ["*"]}`),
		want: map[string]*routev1.TrafficPolicy{webKey: lb(routev1.TrafficPolicy_ROUND_ROBIN)},
		problems: []wantProblem{
			{"", false, "exportTo is not applied: the policy applies to requests from every namespace"},
			{"", false, "portLevelSettings are not applied: the top-level trafficPolicy applies to every port"},
			{"", false, "subsets (v1, v2) are not applied: only the top-level trafficPolicy is"},
			{"", false, "trafficPolicy fields not applied: tls, loadBalancer.localityLbSetting"},
		},
	}, {
		name: "of two rules for a host the oldest applies, then the first by name",
		docs: `
kind: DestinationRule
metadata: {name: a-newer, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec: {host: web, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
kind: DestinationRule
metadata: {name: z-older, namespace: other, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {host: web.shop.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
---
kind: DestinationRule
metadata: {name: b, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {host: v2, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
kind: DestinationRule
metadata: {name: a, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {host: v2, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}`,
		want: map[string]*routev1.TrafficPolicy{
			webKey: lb(routev1.TrafficPolicy_ROUND_ROBIN),
			v2Key:  lb(routev1.TrafficPolicy_LEAST_REQUEST),
		},
		problems: []wantProblem{
			{"", true, "DestinationRule other/z-older, older, already sets the traffic policy of web.shop.svc.cluster.local: this one is ignored"},
			{"", true, "DestinationRule shop/a, older, already sets the traffic policy of v2.shop.svc.cluster.local"},
		},
	}, {
		name: "wildcard and unknown hosts, and rules for sidecars, apply nowhere",
		docs: dr("wild", "shop", `{host: "*.shop.svc.cluster.local", trafficPolicy: {loadBalancer: {simple: RANDOM}}}`) + "\n---\n" +
			dr("gone", "shop", `{host: gone, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`) + "\n---\n" +
			dr("external", "shop", `{host: api.example.com, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`) + "\n---\n" +
			dr("sidecar", "shop", `{host: web, workloadSelector: {matchLabels: {app: client}}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}`),
		problems: []wantProblem{
			{"", true, `host "api.example.com" names no Service`},
			{"", true, `host "gone" names no Service`},
			{"", true, "a DestinationRule with a workloadSelector is for sidecars"},
			{"", true, `wildcard host "*.shop.svc.cluster.local"`},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := gammaInput(t, gammaServices+`
---
kind: Service
metadata: {name: extra, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
`+tt.docs)
			snap := Translate(DefaultConfig(), in)
			got := map[string]*routev1.TrafficPolicy{}
			for key, sr := range snap.Routes {
				if sr.TrafficPolicy != nil {
					got[key] = sr.TrafficPolicy
				}
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("traffic policies (-want +got):\n%s", diff)
			}
			checkProblems(t, KindDestinationRule, snap.Problems, tt.problems)
		})
	}
}

// A change of a RequestAuthentication or a DestinationRule is a change of context: the next
// translation is full, and sees it.
func TestPolicyChangesTranslateAgain(t *testing.T) {
	in := gammaInput(t, gammaServices+`
---
kind: DestinationRule
metadata: {name: web, namespace: shop, resourceVersion: "1"}
spec: {host: web, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
kind: RequestAuthentication
metadata: {name: web, namespace: shop, resourceVersion: "1"}
spec: {selector: {matchLabels: {app: web}}}`)
	for _, s := range in.Services {
		s.ResourceVersion = "1"
	}
	tr := NewTranslator(DefaultConfig())
	tr.Translate(in)
	if tr.Translate(in); tr.Stats().Full {
		t.Fatal("an unchanged input was translated in full")
	}
	for _, change := range []func(){
		func() {
			in.DestinationRules[0].ResourceVersion = "2"
			in.DestinationRules[0].Spec.TrafficPolicy.GetLoadBalancer().LbPolicy = nil
		},
		func() { in.RequestAuthentications[0].ResourceVersion = "2" },
	} {
		change()
		snap := tr.Translate(in)
		if !tr.Stats().Full {
			t.Error("a changed policy did not bring a full translation")
		}
		if got := snap.Routes[webKey].GetTrafficPolicy().GetLoadBalancer(); got != routev1.TrafficPolicy_DEFAULT {
			t.Errorf("load balancer of %s: got %v after the change, want DEFAULT", webKey, got)
		}
	}
}
