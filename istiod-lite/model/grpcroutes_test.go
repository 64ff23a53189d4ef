package model

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// grpcRoute is a GRPCRoute in shop named name, attached to shop/web, with the rules given as YAML
// (the value of spec.rules, in flow style).
func grpcRoute(name, rules string) string {
	return "kind: GRPCRoute\nmetadata: {name: " + name + ", namespace: shop}\n" +
		"spec: {parentRefs: [{group: '', kind: Service, name: web}], rules: " + rules + "}"
}

func TestGRPCRouteRules(t *testing.T) {
	path := func(kind routev1.PathMatch_Kind, v string) *routev1.Match {
		return &routev1.Match{Path: &routev1.PathMatch{Kind: kind, Value: v}}
	}
	exact := func(v string) *routev1.Match { return path(routev1.PathMatch_EXACT, v) }
	regex := func(v string) *routev1.Match { return path(routev1.PathMatch_REGEX, v) }
	headers := func(m *routev1.Match, hs ...*routev1.HeaderMatch) *routev1.Match { m.Headers = hs; return m }
	rule := func(route string, m *routev1.Match, bs ...*routev1.Backend) *routev1.Rule {
		return &routev1.Rule{Route: "GRPCRoute/shop/" + route, Match: m, Backends: bs}
	}
	web := wantBackend(webKey, 9090, 1)
	tests := []struct {
		name     string
		docs     string
		want     []*routev1.Rule // of shop/web
		problems []string        // substrings of "<reason>: <message>" of the problems, in their sorted order
	}{{
		name: "method match forms, in precedence order",
		docs: grpcRoute("m", `[
			{name: forms, backendRefs: [{name: web, port: 9090}], matches: [
			  {method: {service: pkg.Svc, method: Get}},
			  {method: {type: Exact, service: pkg.Svc}},
			  {method: {method: Get}},
			  {method: {type: RegularExpression, service: 'pkg\.[A-Z].*', method: 'Get|List'}},
			  {method: {type: RegularExpression, method: 'L.*'}},
			  {method: {type: RegularExpression, service: a.b}},
			  {headers: [{name: x-v, value: "2"}, {name: X-V, value: ignored}, {name: env, type: RegularExpression, value: 'prod|canary'}]}]},
			{backendRefs: [{name: web, port: 9090}]}]`),
		want: func() []*routev1.Rule {
			named := func(m *routev1.Match) *routev1.Rule {
				r := rule("m", m, web)
				r.Name = "forms"
				return r
			}
			return []*routev1.Rule{
				named(regex(`/(pkg\.[A-Z].*)/(Get|List)`)), // service of 12 characters
				named(exact("/pkg.Svc/Get")),               // 7, method of 3
				named(wantPrefix("/pkg.Svc")),              // 7
				named(regex("/(a.b)/([^/]+)")),             // 3
				named(regex("/[^/]+/Get")),                 // method of 3, first match
				named(regex("/([^/]+)/(L.*)")),             // method of 3
				named(headers(wantPrefix("/"), &routev1.HeaderMatch{Name: "x-v", Value: "2"}, // 2 headers
					&routev1.HeaderMatch{Name: "env", Value: "prod|canary", Regex: true})),
				rule("m", wantPrefix("/"), web), // no match: every request
			}
		}(),
	}, {
		name: "precedence across routes",
		docs: `
kind: GRPCRoute
metadata: {name: zeta, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{method: {service: a.B}}]
  - matches: [{method: {service: a.B}, headers: [{name: h, value: "1"}]}]
---
kind: GRPCRoute
metadata: {name: alpha, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{method: {service: a.B}}, {method: {service: a.B, method: M}}]}]
---
kind: GRPCRoute
metadata: {name: beta, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{method: {service: a.B}}, {method: {service: a.Bc}}]}]`,
		want: []*routev1.Rule{
			rule("beta", wantPrefix("/a.Bc")), // the longest service
			rule("alpha", exact("/a.B/M")),    // then a method
			rule("zeta", headers(wantPrefix("/a.B"), &routev1.HeaderMatch{Name: "h", Value: "1"})), // then a header
			rule("zeta", wantPrefix("/a.B")),  // oldest
			rule("alpha", wantPrefix("/a.B")), // then by name
			rule("beta", wantPrefix("/a.B")),
		},
	}, {
		name: "consumer route, ports",
		docs: `
kind: GRPCRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 9090}, {group: "", kind: Service, name: web, namespace: shop, sectionName: grpc}]
  rules: [{backendRefs: [{name: db, port: 5432}]}]`,
		want: []*routev1.Rule{{Route: "GRPCRoute/other/consumer", Ports: []uint32{9090}, ConsumerNamespace: "other",
			Match: wantPrefix("/"), Backends: []*routev1.Backend{wantBackend(dbKey, 5432, 1)}}},
	}, {
		name: "backends and weights",
		docs: grpcRoute("b", `[{backendRefs: [
			{name: web, port: 9090, weight: 3}, {name: v2, port: 80, weight: 0}, {name: gone, port: 80},
			{name: db, namespace: other, port: 5432}, {name: web}, {group: example.com, kind: Bucket, name: b}]}]`) + `
---
kind: ReferenceGrant
metadata: {name: http-only, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service, name: db}]`,
		want: []*routev1.Rule{rule("b", wantPrefix("/"), wantBackend(webKey, 9090, 3), wantBackend(v2Key, 80, 0),
			wantBackend("", 80, 1), wantBackend("", 5432, 1), wantBackend("", 0, 1), wantBackend("", 0, 1))},
		problems: nil, // routeProblems reports unresolved backendRefs
	}, {
		name: "backend allowed by a ReferenceGrant from GRPCRoute",
		docs: grpcRoute("b", `[{backendRefs: [{name: db, namespace: other, port: 5432}]}]`) + `
---
kind: ReferenceGrant
metadata: {name: from-shop, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: shop}]
  to: [{group: "", kind: Service, name: db}]`,
		want: []*routev1.Rule{rule("b", wantPrefix("/"), wantBackend(dbKey, 5432, 1))},
	}, {
		name: "header filters, mirrors and backend filters",
		docs: grpcRoute("f", `[{
			filters: [
			  {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: "1"}], add: [{name: b, value: "2"}], remove: [c]}},
			  {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}},
			  {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, percent: 50}},
			  {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, fraction: {numerator: 1, denominator: 3}}},
			  {type: RequestMirror, requestMirror: {backendRef: {name: db, namespace: other, port: 5432}}}],
			backendRefs: [{name: web, port: 9090, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: to, value: web}]}}]}]}]`),
		want: []*routev1.Rule{{Route: "GRPCRoute/shop/f", Match: wantPrefix("/"), Filters: []*routev1.Filter{
			{Kind: &routev1.Filter_RequestHeaders{RequestHeaders: &routev1.HeaderModifier{Set: []*routev1.Header{{Name: "a", Value: "1"}},
				Add: []*routev1.Header{{Name: "b", Value: "2"}}, Remove: []string{"c"}}}},
			{Kind: &routev1.Filter_ResponseHeaders{ResponseHeaders: &routev1.HeaderModifier{Remove: []string{"server"}}}},
			{Kind: &routev1.Filter_Mirror{Mirror: &routev1.Mirror{Backend: wantBackend(v2Key, 80, 1), FractionPpm: 500000}}},
			{Kind: &routev1.Filter_Mirror{Mirror: &routev1.Mirror{Backend: wantBackend(v2Key, 80, 1), FractionPpm: 333333}}},
			{Kind: &routev1.Filter_Mirror{Mirror: &routev1.Mirror{Backend: wantBackend("", 5432, 1), FractionPpm: 1000000}}},
		}, Backends: []*routev1.Backend{{Service: webKey, Port: 9090, Weight: 1, Filters: []*routev1.Filter{
			{Kind: &routev1.Filter_RequestHeaders{RequestHeaders: &routev1.HeaderModifier{Set: []*routev1.Header{{Name: "to", Value: "web"}}}}}}}}}},
		problems: []string{"InvalidValue: rule 0 mirror: backend other/db does not resolve: no ReferenceGrant in other allows GRPCRoute from shop"},
	}, {
		name: "a filter that cannot be applied answers 500",
		docs: grpcRoute("x", `[
			{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}, {type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}],
			 backendRefs: [{name: web, port: 9090}]},
			{matches: [{method: {service: b.B}}], filters: [{type: RequestMirror}], backendRefs: [{name: web, port: 9090}]},
			{matches: [{method: {service: c.C}}], backendRefs: [{name: web, port: 9090}, {name: v2, port: 80, filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}]}]}]`),
		want: []*routev1.Rule{
			rule("x", wantPrefix("/b.B")),
			rule("x", wantPrefix("/c.C"), web, wantBackend("", 80, 1)),
			rule("x", wantPrefix("/")),
		},
		problems: []string{
			"UnsupportedValue: rule 0: filter ExtensionRef cannot be applied; requests are answered 500",
			"InvalidValue: rule 1: filter RequestMirror cannot be applied",
			"UnsupportedValue: rule 2 backend v2: filter ExtensionRef cannot be applied",
		},
	}, {
		name: "matches that cannot be translated are left out",
		docs: grpcRoute("m", `[{backendRefs: [{name: web, port: 9090}], matches: [
			{method: {type: Exact}},
			{method: {type: RegularExpression, service: "a(", method: M}},
			{method: {type: RegularExpression, service: ok, method: "[z"}},
			{method: {service: a/b}},
			{method: {type: Prefix, service: a}},
			{method: {service: ok}, headers: [{name: h, value: "(", type: RegularExpression}]},
			{method: {service: ok}, headers: [{name: h, value: v, type: Prefix}]},
			{method: {service: ok}}]}]`),
		want: []*routev1.Rule{rule("m", wantPrefix("/ok"), web)},
		problems: []string{
			"InvalidValue: rule 0 match 0: the method match names neither a service nor a method",
			"InvalidValue: rule 0 match 1 service: error parsing regexp",
			"InvalidValue: rule 0 match 2 method: error parsing regexp",
			`InvalidValue: rule 0 match 3: service "a/b" or method "" contains "/"`,
			`UnsupportedValue: rule 0 match 4: method match type "Prefix" is not supported`,
			"InvalidValue: rule 0 match 5 header h: error parsing regexp",
			`UnsupportedValue: rule 0 match 6: header match type "Prefix" is not supported`,
		},
	}, {
		name: "deleted routes and routes of Gateways are not the Service's",
		docs: `
kind: GRPCRoute
metadata: {name: deleted, namespace: shop, deletionTimestamp: "2024-01-01T00:00:00Z"}
spec: {parentRefs: [{group: "", kind: Service, name: web}], rules: [{backendRefs: [{name: web, port: 9090}]}]}
---
kind: GRPCRoute
metadata: {name: ingress, namespace: shop}
spec: {parentRefs: [{name: web}, {group: "", kind: Service, name: gone}], rules: [{filters: [{type: ExtensionRef}]}]}`,
	}, {
		// Each kind keeps its own order: the GRPCRoute's service "a.B" goes before its method-only
		// match although HTTPRoute precedence would put the expression first.
		name: "HTTPRoute and GRPCRoute rules of one Service",
		docs: `
kind: HTTPRoute
metadata: {name: h, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {value: /abcdefgh}}, {path: {value: /healthz}}]
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: v2, port: 80}]
---
kind: GRPCRoute
metadata: {name: g, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{method: {service: pkg.Svc, method: Get}}, {method: {service: a.B}}, {method: {method: M}}]
    backendRefs: [{name: web, port: 9090}]
  - backendRefs: [{name: web, port: 9090}]`,
		want: []*routev1.Rule{
			rule("g", exact("/pkg.Svc/Get"), web),
			{Route: "HTTPRoute/shop/h", Match: wantPrefix("/abcdefgh"), Backends: []*routev1.Backend{wantBackend(webKey, 80, 1)}},
			{Route: "HTTPRoute/shop/h", Match: wantPrefix("/healthz"), Backends: []*routev1.Backend{wantBackend(webKey, 80, 1)}},
			rule("g", wantPrefix("/a.B"), web),
			rule("g", regex("/[^/]+/M"), web),
			{Route: "HTTPRoute/shop/h", Match: wantPrefix("/"), Backends: []*routev1.Backend{wantBackend(v2Key, 80, 1)}}, // older
			rule("g", wantPrefix("/"), web),
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := gammaInput(t, gammaServices+"\n---\n"+tt.docs)
			tr := newTranslator(DefaultConfig(), in)
			got := tr.serviceRoutes(in)
			if diff := cmp.Diff(tt.want, got[webKey].GetRules(), protocmp.Transform()); diff != "" {
				t.Errorf("rules of %s (-want +got):\n%s", webKey, diff)
			}
			problems := sortProblems(tr.problems)
			if len(problems) != len(tt.problems) {
				t.Fatalf("problems: got %v, want %d: %q", problems, len(tt.problems), tt.problems)
			}
			for i, p := range problems {
				if p.Kind != KindGRPCRoute || !strings.Contains(p.Reason+": "+p.Message, tt.problems[i]) {
					t.Errorf("problem %d: got %v (%s), want one on a GRPCRoute containing %q", i, p, p.Reason, tt.problems[i])
				}
			}
		})
	}
}

// A port a GRPCRoute is attached to carries HTTP/2 unless it declares otherwise.
func TestGRPCRouteProtocols(t *testing.T) {
	in := gammaInput(t, gammaServices+`
---
kind: Service
metadata: {name: all, namespace: shop}
spec:
  ports:
  - {port: 1}
  - {name: metrics, port: 2}
  - {name: http, port: 3}
  - {name: tcp-db, port: 4}
  - {name: tls, port: 5, appProtocol: https}
  - {name: dns, port: 6, protocol: UDP}
---
kind: Service
metadata: {name: one, namespace: shop}
spec: {ports: [{port: 1}, {port: 2}, {port: 3}]}
---
kind: Service
metadata: {name: none, namespace: shop}
spec: {ports: [{port: 1}]}
---
kind: GRPCRoute
metadata: {name: all, namespace: shop}
spec: {parentRefs: [{group: "", kind: Service, name: all}]}
---
kind: GRPCRoute
metadata: {name: one, namespace: other}
spec: {parentRefs: [{group: "", kind: Service, name: one, namespace: shop, port: 2}, {group: "", kind: Service, name: one, namespace: shop, port: 3}]}
---
kind: GRPCRoute
metadata: {name: none, namespace: shop, deletionTimestamp: "2024-01-01T00:00:00Z"}
spec: {parentRefs: [{group: "", kind: Service, name: none}]}
---
kind: GRPCRoute
metadata: {name: none-section, namespace: shop}
spec: {parentRefs: [{group: "", kind: Service, name: none, sectionName: x}, {group: "", kind: Service, name: none, port: 9}]}
---
kind: HTTPRoute
metadata: {name: none-http, namespace: shop}
spec: {parentRefs: [{group: "", kind: Service, name: none}]}`)
	got := map[string]map[uint32]string{}
	for k, sr := range newTranslator(DefaultConfig(), in).serviceRoutes(in) {
		got[k] = sr.GetProtocols()
	}
	want := map[string]map[uint32]string{
		webKey:                             {80: "http", 9090: "http2"},
		v2Key:                              {80: "http"},
		dbKey:                              nil,
		"shop/all.shop.svc.cluster.local":  {1: "http2", 2: "http2", 3: "http", 4: "tcp"},
		"shop/one.shop.svc.cluster.local":  {2: "http2", 3: "http2"},
		"shop/none.shop.svc.cluster.local": nil,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("protocols (-want +got):\n%s", diff)
	}
}
