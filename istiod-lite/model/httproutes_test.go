package model

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	netv1 "istio.io/client-go/pkg/apis/networking/v1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// The Services every TestHTTPRouteRules row starts from; the rows check what shop/web gets.
const gammaServices = `
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80}, {name: grpc-api, port: 9090}]}
---
kind: Service
metadata: {name: v2, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: db, namespace: other}
spec: {ports: [{port: 5432}]}
`

const (
	webKey = "shop/web.shop.svc.cluster.local"
	v2Key  = "shop/v2.shop.svc.cluster.local"
	dbKey  = "other/db.other.svc.cluster.local"
)

// gammaInput decodes the Services, HTTPRoutes, GRPCRoutes, ReferenceGrants, Gateways,
// RequestAuthentications and DestinationRules of a multi-document YAML.
func gammaInput(t *testing.T, docs string) Input {
	t.Helper()
	var in Input
	for _, doc := range strings.Split(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		var err error
		switch tm.Kind {
		case "Service":
			s := &corev1.Service{}
			err, in.Services = yaml.Unmarshal([]byte(doc), s), append(in.Services, s)
		case "HTTPRoute":
			r := &gwv1.HTTPRoute{}
			err, in.HTTPRoutes = yaml.Unmarshal([]byte(doc), r), append(in.HTTPRoutes, r)
		case "GRPCRoute":
			r := &gwv1.GRPCRoute{}
			err, in.GRPCRoutes = yaml.Unmarshal([]byte(doc), r), append(in.GRPCRoutes, r)
		case "ReferenceGrant":
			g := &gwv1.ReferenceGrant{}
			err, in.ReferenceGrants = yaml.Unmarshal([]byte(doc), g), append(in.ReferenceGrants, g)
		case "Gateway":
			g := &gwv1.Gateway{}
			err, in.Gateways = yaml.Unmarshal([]byte(doc), g), append(in.Gateways, g)
		case "RequestAuthentication":
			ra := &secv1.RequestAuthentication{}
			err, in.RequestAuthentications = yaml.Unmarshal([]byte(doc), ra), append(in.RequestAuthentications, ra)
		case "DestinationRule":
			dr := &netv1.DestinationRule{}
			err, in.DestinationRules = yaml.Unmarshal([]byte(doc), dr), append(in.DestinationRules, dr)
		default:
			t.Fatalf("unknown kind %q in:\n%s", tm.Kind, doc)
		}
		if err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
	}
	return in
}

// gammaRoute is an HTTPRoute in shop named name, attached to shop/web, with the rules given as
// YAML (the value of spec.rules, in flow style).
func gammaRoute(name, rules string) string {
	return "kind: HTTPRoute\nmetadata: {name: " + name + ", namespace: shop}\n" +
		"spec: {parentRefs: [{group: '', kind: Service, name: web}], rules: " + rules + "}"
}

func wantPrefix(v string) *routev1.Match {
	return &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: v}}
}

func wantBackend(svc string, port, weight uint32) *routev1.Backend {
	return &routev1.Backend{Service: svc, Port: port, Weight: weight}
}

func TestHTTPRouteRules(t *testing.T) {
	exact := func(v string) *routev1.Match {
		return &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_EXACT, Value: v}}
	}
	regex := func(v string) *routev1.Match {
		return &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_REGEX, Value: v}}
	}
	with := func(m *routev1.Match, f func(*routev1.Match)) *routev1.Match { f(m); return m }
	rule := func(route string, m *routev1.Match, bs ...*routev1.Backend) *routev1.Rule {
		return &routev1.Rule{Route: "HTTPRoute/shop/" + route, Match: m, Backends: bs}
	}
	filter := func(f *routev1.Filter) *routev1.Rule {
		return &routev1.Rule{Route: "HTTPRoute/shop/f", Match: wantPrefix("/"), Filters: []*routev1.Filter{f}}
	}
	tests := []struct {
		name     string
		docs     string
		want     []*routev1.Rule // of shop/web
		problems []string        // substrings of the problems, in their sorted order
		reasons  []string        // when set, the problems' reasons, in the same order
	}{{
		name: "precedence across routes",
		docs: `
kind: HTTPRoute
metadata: {name: zeta, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {value: /api}}, {path: {type: Exact, value: /api/v1}}]
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: v2, port: 80}]
---
kind: HTTPRoute
metadata: {name: alpha, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches:
    - {path: {value: /api}, headers: [{name: x-v, value: "2"}, {name: X-V, value: ignored}]}
    - {path: {type: RegularExpression, value: /api/.*}}
    - {path: {value: /api}, method: GET}
    - {path: {value: /api}, queryParams: [{name: q, value: "1", type: RegularExpression}]}
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {value: /api}}]
    backendRefs: [{name: v2, port: 80}]
---
kind: HTTPRoute
metadata: {name: beta, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{path: {value: /api}}], backendRefs: [{name: v2, port: 80}]}]`,
		want: []*routev1.Rule{
			rule("zeta", exact("/api/v1"), wantBackend(webKey, 80, 1)),
			rule("alpha", regex("/api/.*"), wantBackend(v2Key, 80, 1)),
			rule("alpha", with(wantPrefix("/api"), func(m *routev1.Match) { m.Method = "GET" }), wantBackend(v2Key, 80, 1)),
			rule("alpha", with(wantPrefix("/api"), func(m *routev1.Match) {
				m.Headers = []*routev1.HeaderMatch{{Name: "x-v", Value: "2"}}
			}), wantBackend(v2Key, 80, 1)),
			rule("alpha", with(wantPrefix("/api"), func(m *routev1.Match) {
				m.QueryParams = []*routev1.HeaderMatch{{Name: "q", Value: "1", Regex: true}}
			}), wantBackend(v2Key, 80, 1)),
			rule("zeta", wantPrefix("/api"), wantBackend(webKey, 80, 1)), // oldest
			rule("alpha", wantPrefix("/api"), wantBackend(v2Key, 80, 1)), // then by name
			rule("beta", wantPrefix("/api"), wantBackend(v2Key, 80, 1)),  //
			rule("zeta", wantPrefix("/"), wantBackend(v2Key, 80, 1)),     // shortest prefix last
		},
	}, {
		name: "consumer and producer routes, ports",
		docs: `
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop, port: 9090}, {group: "", kind: Service, name: web, namespace: shop, port: 80}]
  rules: [{matches: [{path: {type: Exact, value: /c}}], backendRefs: [{name: db, port: 5432}]}]
---
` + gammaRoute("producer", `[{backendRefs: [{name: web, port: 80}]}]`) + `
---
kind: HTTPRoute
metadata: {name: wrong-port, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 81}, {name: web}, {group: "", kind: Service, name: web, sectionName: http}]
  rules: [{backendRefs: [{name: web, port: 80}]}]`,
		want: []*routev1.Rule{
			{Route: "HTTPRoute/other/consumer", Ports: []uint32{80, 9090}, ConsumerNamespace: "other", Match: exact("/c"),
				Backends: []*routev1.Backend{wantBackend(dbKey, 5432, 1)}},
			rule("producer", wantPrefix("/"), wantBackend(webKey, 80, 1)),
		},
	}, {
		name: "backends",
		docs: gammaRoute("b", `[{name: split, backendRefs: [
			{name: web, port: 80, weight: 3}, {name: v2, port: 80, weight: 0}, {name: gone, port: 80},
			{name: db, namespace: other, port: 5432}, {name: web}, {group: example.com, kind: Bucket, name: b}]}]`),
		want: []*routev1.Rule{{Route: "HTTPRoute/shop/b", Name: "split", Match: wantPrefix("/"), Backends: []*routev1.Backend{
			wantBackend(webKey, 80, 3), wantBackend(v2Key, 80, 0), wantBackend("", 80, 1),
			wantBackend("", 5432, 1), wantBackend("", 0, 1), wantBackend("", 0, 1)}}},
		problems: nil, // the CRD requires a port for a Service; routeProblems reports the rest
	}, {
		name: "backend allowed by a ReferenceGrant",
		docs: gammaRoute("b", `[{backendRefs: [{name: db, namespace: other, port: 5432}]}]`) + `
---
kind: ReferenceGrant
metadata: {name: from-shop, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service, name: db}]`,
		want: []*routev1.Rule{rule("b", wantPrefix("/"), wantBackend(dbKey, 5432, 1))},
	}, {
		name: "header filters, rewrite, mirror and backend filters",
		docs: gammaRoute("f", `[{
			filters: [
			  {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: "1"}], add: [{name: b, value: "2"}], remove: [c]}},
			  {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}},
			  {type: URLRewrite, urlRewrite: {hostname: api.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}},
			  {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, percent: 50}},
			  {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, fraction: {numerator: 1, denominator: 3}}},
			  {type: RequestMirror, requestMirror: {backendRef: {name: db, namespace: other, port: 5432}}}],
			backendRefs: [{name: web, port: 80, filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /x}}}]}]}]`),
		want: []*routev1.Rule{{Route: "HTTPRoute/shop/f", Match: wantPrefix("/"), Filters: []*routev1.Filter{
			{Kind: &routev1.Filter_RequestHeaders{RequestHeaders: &routev1.HeaderModifier{Set: []*routev1.Header{{Name: "a", Value: "1"}},
				Add: []*routev1.Header{{Name: "b", Value: "2"}}, Remove: []string{"c"}}}},
			{Kind: &routev1.Filter_ResponseHeaders{ResponseHeaders: &routev1.HeaderModifier{Remove: []string{"server"}}}},
			{Kind: &routev1.Filter_Rewrite{Rewrite: &routev1.Rewrite{Hostname: "api.example",
				Path: &routev1.PathModifier{Kind: &routev1.PathModifier_Prefix{Prefix: "/v2"}}}}},
			{Kind: &routev1.Filter_Mirror{Mirror: &routev1.Mirror{Backend: wantBackend(v2Key, 80, 1), FractionPpm: 500000}}},
			{Kind: &routev1.Filter_Mirror{Mirror: &routev1.Mirror{Backend: wantBackend(v2Key, 80, 1), FractionPpm: 333333}}},
			{Kind: &routev1.Filter_Mirror{Mirror: &routev1.Mirror{Backend: wantBackend("", 5432, 1), FractionPpm: 1000000}}},
		}, Backends: []*routev1.Backend{{Service: webKey, Port: 80, Weight: 1, Filters: []*routev1.Filter{
			{Kind: &routev1.Filter_Rewrite{Rewrite: &routev1.Rewrite{Path: &routev1.PathModifier{Kind: &routev1.PathModifier_Full{Full: "/x"}}}}}}}}}},
		problems: []string{"rule 0 mirror: backend other/db does not resolve: no ReferenceGrant in other allows HTTPRoute from shop"},
	}, {
		name: "redirect",
		docs: gammaRoute("f", `[{filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.com, port: 443,
			path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]}]`),
		want: []*routev1.Rule{filter(&routev1.Filter{Kind: &routev1.Filter_Redirect{Redirect: &routev1.Redirect{Scheme: "https",
			Hostname: "example.com", Port: 443, StatusCode: 301, Path: &routev1.PathModifier{Kind: &routev1.PathModifier_Full{Full: "/new"}}}}})},
	}, {
		name: "redirect with defaults",
		docs: gammaRoute("f", `[{filters: [{type: RequestRedirect, requestRedirect: {}}]}]`),
		want: []*routev1.Rule{filter(&routev1.Filter{Kind: &routev1.Filter_Redirect{Redirect: &routev1.Redirect{StatusCode: 302}}})},
	}, {
		// A CORS filter is applied on a rule only: on a backendRef (which the Gateway API allows,
		// with Extended support) it would decide preflights by the backend picked, so it is reported
		// NotImplemented and that backend's share answers 500.
		name: "a filter that cannot be applied answers 500",
		docs: gammaRoute("x", `[
			{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}, {type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}],
			 backendRefs: [{name: web, port: 80}]},
			{matches: [{path: {value: /b}}], backendRefs: [{name: web, port: 80}, {name: v2, port: 80, filters: [{type: CORS, cors: {allowOrigins: ["*"]}}]}]}]`),
		want: []*routev1.Rule{
			rule("x", wantPrefix("/b"), wantBackend(webKey, 80, 1), wantBackend("", 80, 1)),
			rule("x", wantPrefix("/")),
		},
		problems: []string{
			"rule 0: filter ExtensionRef cannot be applied; requests are answered 500",
			"rule 1 backend v2: filter CORS cannot be applied to a backendRef, only to a rule",
		},
		reasons: []string{ReasonUnsupportedValue, ReasonNotImplemented},
	}, {
		name: "CORS",
		docs: gammaRoute("f", `[{filters: [{type: CORS, cors: {
			allowOrigins: ["https://www.foo.com", "https://*.bar.com", "http://localhost:3000"], allowMethods: [GET, OPTIONS],
			allowHeaders: [x-header-1, x-header-2], exposeHeaders: [x-header-3], allowCredentials: true, maxAge: 3600}}]},
			{matches: [{path: {value: /any}}], filters: [{type: CORS, cors: {allowOrigins: ["*"], allowMethods: ["*"]}}]}]`),
		want: []*routev1.Rule{
			{Route: "HTTPRoute/shop/f", Match: wantPrefix("/any"), Filters: []*routev1.Filter{{Kind: &routev1.Filter_Cors{Cors: &routev1.Cors{
				AllowOrigins: []string{"*"}, AllowMethods: []string{"*"}, MaxAgeSeconds: 5}}}}}, // maxAge unset: 5
			filter(&routev1.Filter{Kind: &routev1.Filter_Cors{Cors: &routev1.Cors{
				AllowOrigins: []string{"https://www.foo.com", "https://*.bar.com", "http://localhost:3000"}, AllowMethods: []string{"GET", "OPTIONS"},
				AllowHeaders: []string{"x-header-1", "x-header-2"}, ExposeHeaders: []string{"x-header-3"}, AllowCredentials: true,
				MaxAgeSeconds: 3600}}}),
		},
	}, {
		name: "CORS with an origin that is not one answers 500",
		docs: gammaRoute("x", `[
			{filters: [{type: CORS, cors: {allowOrigins: ["https://www.foo.com", "ftp://files.foo.com", "https://foo*.bar.com",
			  "https://www.foo.com:65536", "https://www.foo.com/path"]}}], backendRefs: [{name: web, port: 80}]},
			{matches: [{path: {value: /b}}], filters: [{type: CORS}], backendRefs: [{name: web, port: 80}]}]`),
		want: []*routev1.Rule{rule("x", wantPrefix("/b")), rule("x", wantPrefix("/"))},
		problems: []string{
			`rule 0: CORS allowOrigins "ftp://files.foo.com", "https://foo*.bar.com", "https://www.foo.com:65536", "https://www.foo.com/path": not`,
			"rule 1: filter CORS cannot be applied; requests are answered 500",
		},
		reasons: []string{ReasonInvalidValue, ReasonInvalidValue},
	}, {
		name: "sessionPersistence",
		docs: gammaRoute("s", `[{sessionPersistence: {sessionName: sticky, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}},
			backendRefs: [{name: web, port: 80}]},
			{matches: [{path: {value: /h}}], sessionPersistence: {type: Header}, backendRefs: [{name: web, port: 80}]}]`),
		want: []*routev1.Rule{
			{Route: "HTTPRoute/shop/s", Match: wantPrefix("/h"), Backends: []*routev1.Backend{wantBackend(webKey, 80, 1)},
				Session: &routev1.SessionPersistence{Name: "ambient-session", Header: true}},
			{Route: "HTTPRoute/shop/s", Match: wantPrefix("/"), Backends: []*routev1.Backend{wantBackend(webKey, 80, 1)},
				Session: &routev1.SessionPersistence{Name: "sticky", AbsoluteTimeoutS: 3600, Permanent: true}},
		},
	}, {
		name: "timeouts and retries",
		docs: gammaRoute("t", `[
			{timeouts: {request: 1s, backendRequest: 1m500ms}, retry: {codes: [503, 502], attempts: 3, backoff: 100ms}, backendRefs: [{name: web, port: 80}]},
			{matches: [{path: {value: /x}}], timeouts: {request: 1d, backendRequest: 0s}, retry: {codes: [500]}}]`),
		want: []*routev1.Rule{
			{Route: "HTTPRoute/shop/t", Match: wantPrefix("/x"), Retry: &routev1.Retry{Codes: []uint32{500}}},
			{Route: "HTTPRoute/shop/t", Match: wantPrefix("/"), RequestTimeoutMs: 1000, BackendRequestTimeoutMs: 60500,
				Retry:    &routev1.Retry{Codes: []uint32{503, 502}, Attempts: 3, BackoffMs: 100},
				Backends: []*routev1.Backend{wantBackend(webKey, 80, 1)}},
		},
		problems: []string{`rule 1 timeouts.request: "1d" is not a duration`},
	}, {
		name: "matches that do not parse are left out",
		docs: gammaRoute("m", `[{matches: [{path: {type: RegularExpression, value: "/a("}}, {headers: [{name: h, value: "[", type: RegularExpression}]},
			{path: {value: /ok}}], backendRefs: [{name: web, port: 80}]}]`),
		want:     []*routev1.Rule{rule("m", wantPrefix("/ok"), wantBackend(webKey, 80, 1))},
		problems: []string{"rule 0 match 0 path: error parsing regexp", "rule 0 match 1 header h: error parsing regexp"},
	}, {
		name: "deleted routes and routes of Gateways are not the Service's",
		docs: `
kind: HTTPRoute
metadata: {name: deleted, namespace: shop, deletionTimestamp: "2024-01-01T00:00:00Z"}
spec: {parentRefs: [{group: "", kind: Service, name: web}], rules: [{backendRefs: [{name: web, port: 80}]}]}
---
kind: HTTPRoute
metadata: {name: ingress, namespace: shop}
spec: {parentRefs: [{name: web}, {group: "", kind: Service, name: gone}], rules: [{filters: [{type: ExtensionRef}]}]}`,
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
				if p.Kind != KindHTTPRoute || !strings.Contains(p.Message, tt.problems[i]) {
					t.Errorf("problem %d: got %v, want one on an HTTPRoute containing %q", i, p, tt.problems[i])
				}
				if tt.reasons != nil && p.Reason != tt.reasons[i] {
					t.Errorf("problem %d: reason %s, want %s", i, p.Reason, tt.reasons[i])
				}
			}
		})
	}
}

// Every Service gets its ServiceRoutes, with the protocols of its ports and no rules without routes.
func TestServiceRoutesProtocols(t *testing.T) {
	in := gammaInput(t, gammaServices+`
---
kind: Service
metadata: {name: mixed, namespace: shop}
spec:
  ports:
  - {name: a, port: 1, appProtocol: http}
  - {name: b, port: 2, appProtocol: kubernetes.io/h2c}
  - {name: c, port: 3, appProtocol: grpc}
  - {name: http-d, port: 4, appProtocol: TCP}
  - {name: http-e, port: 5, appProtocol: https}
  - {name: http-web, port: 6}
  - {name: http2, port: 7}
  - {name: grpc-web, port: 8}
  - {name: GRPC-api, port: 9}
  - {name: tcp-db, port: 10}
  - {name: metrics, port: 11}
  - {name: http, port: 12, protocol: UDP}
  - {name: httpx, port: 13}`)
	got := newTranslator(DefaultConfig(), in).serviceRoutes(in)
	want := map[string]*routev1.ServiceRoutes{
		webKey: {Namespace: "shop", Hostname: "web.shop.svc.cluster.local", Protocols: map[uint32]string{80: "http", 9090: "http2"}},
		v2Key:  {Namespace: "shop", Hostname: "v2.shop.svc.cluster.local", Protocols: map[uint32]string{80: "http"}},
		dbKey:  {Namespace: "other", Hostname: "db.other.svc.cluster.local"},
		"shop/mixed.shop.svc.cluster.local": {Namespace: "shop", Hostname: "mixed.shop.svc.cluster.local", Protocols: map[uint32]string{
			1: "http", 2: "http2", 3: "http2", 4: "tcp", 6: "http", 7: "http2", 8: "http", 9: "http2", 10: "tcp"}},
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("service routes (-want +got):\n%s", diff)
	}
}
