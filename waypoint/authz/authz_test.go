package authz

import (
	"net/http"
	"net/netip"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func pol(name string, action routev1.Policy_Action, rules ...*routev1.PolicyRule) *routev1.Policy {
	return &routev1.Policy{Name: name, Namespace: "shop", Action: action, Rules: rules}
}

func TestCheck(t *testing.T) {
	req := func(mod ...func(*Request)) *Request {
		r := &Request{Principal: "cluster.local/ns/shop/sa/client", Namespace: "shop",
			SourceIP: netip.MustParseAddr("10.1.0.5"), RemoteIP: netip.MustParseAddr("192.0.2.7"),
			Host: "echo.shop:80", Method: "GET", Path: "/public/x", Port: 80,
			Header: http.Header{"X-Env": {"prod"}}, Claims: map[string]any{"groups": []any{"dev", "ops"}, "org": map[string]any{"team": "pay"}}}
		for _, m := range mod {
			m(r)
		}
		return r
	}
	paths := func(p ...string) *routev1.PolicyRule {
		return &routev1.PolicyRule{To: []*routev1.Operation{{Paths: p}}}
	}
	denyAdmin := pol("deny-admin", routev1.Policy_DENY, paths("/admin*"))
	for _, tc := range []struct {
		name     string
		policies []*routev1.Policy
		req      *Request
		allow    bool
		policy   string
	}{
		{"no policy allows", nil, req(), true, ""},
		{"DENY by path prefix", []*routev1.Policy{denyAdmin}, req(func(r *Request) { r.Path = "/admin/users" }), false, "shop/deny-admin"},
		{"DENY not matching lets through", []*routev1.Policy{denyAdmin}, req(), true, ""},
		{"ALLOW that matches", []*routev1.Policy{pol("get", routev1.Policy_ALLOW, &routev1.PolicyRule{To: []*routev1.Operation{{Methods: []string{"GET"}}}})}, req(), true, "shop/get"},
		{"ALLOW that does not match denies", []*routev1.Policy{pol("post", routev1.Policy_ALLOW, &routev1.PolicyRule{To: []*routev1.Operation{{Methods: []string{"POST"}}}})}, req(), false, ""},
		{"ALLOW without rules denies all", []*routev1.Policy{pol("none", routev1.Policy_ALLOW)}, req(), false, ""},
		{"DENY before ALLOW", []*routev1.Policy{pol("all", routev1.Policy_ALLOW, &routev1.PolicyRule{}), denyAdmin}, req(func(r *Request) { r.Path = "/admin" }), false, "shop/deny-admin"},
		{"principal and notPaths", []*routev1.Policy{pol("p", routev1.Policy_ALLOW, &routev1.PolicyRule{
			From: []*routev1.Source{{Principals: []string{"cluster.local/ns/shop/*"}}}, To: []*routev1.Operation{{NotPaths: []string{"/private*"}}}})}, req(), true, "shop/p"},
		{"notPrincipals excludes", []*routev1.Policy{pol("p", routev1.Policy_ALLOW, &routev1.PolicyRule{
			From: []*routev1.Source{{NotPrincipals: []string{"*/sa/client"}}}})}, req(), false, ""},
		{"host without port, case-insensitive", []*routev1.Policy{pol("h", routev1.Policy_DENY, &routev1.PolicyRule{To: []*routev1.Operation{{Hosts: []string{"ECHO.shop"}}}})}, req(), false, "shop/h"},
		{"ipBlocks and remoteIpBlocks", []*routev1.Policy{pol("ip", routev1.Policy_ALLOW, &routev1.PolicyRule{
			From: []*routev1.Source{{IpBlocks: []string{"10.1.0.0/16"}, RemoteIpBlocks: []string{"192.0.2.7"}}}})}, req(), true, "shop/ip"},
		{"requestPrincipals need a token", []*routev1.Policy{pol("jwt", routev1.Policy_ALLOW, &routev1.PolicyRule{
			From: []*routev1.Source{{RequestPrincipals: []string{"*"}}}})}, req(), false, ""},
		{"requestPrincipals with a token", []*routev1.Policy{pol("jwt", routev1.Policy_ALLOW, &routev1.PolicyRule{
			From: []*routev1.Source{{RequestPrincipals: []string{"https://issuer/*"}}}})}, req(func(r *Request) { r.RequestPrincipal = "https://issuer/alice" }), true, "shop/jwt"},
		{"when header and claims", []*routev1.Policy{pol("w", routev1.Policy_ALLOW, &routev1.PolicyRule{When: []*routev1.Condition{
			{Key: "request.headers[x-env]", Values: []string{"prod"}},
			{Key: "request.auth.claims[groups]", Values: []string{"ops"}},
			{Key: "request.auth.claims[org][team]", NotValues: []string{"hr"}},
		}})}, req(), true, "shop/w"},
		{"when notValues excludes", []*routev1.Policy{pol("w", routev1.Policy_ALLOW, &routev1.PolicyRule{When: []*routev1.Condition{
			{Key: "source.ip", NotValues: []string{"10.1.0.0/24"}}}})}, req(), false, ""},
		{"unknown when key never matches", []*routev1.Policy{pol("w", routev1.Policy_ALLOW, &routev1.PolicyRule{When: []*routev1.Condition{
			{Key: "connection.sni", Values: []string{"*"}}}})}, req(), false, ""},
		{"ports", []*routev1.Policy{pol("p", routev1.Policy_DENY, &routev1.PolicyRule{To: []*routev1.Operation{{Ports: []string{"80"}}}})}, req(), false, "shop/p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Check(tc.policies, tc.req)
			if d.Allow != tc.allow || d.Policy != tc.policy {
				t.Errorf("Check = allow %v by %q (%s), want allow %v by %q", d.Allow, d.Policy, d.Reason, tc.allow, tc.policy)
			}
		})
	}
}

func TestAuditAndDryRunNeverDecide(t *testing.T) {
	audit := pol("audit", routev1.Policy_AUDIT, &routev1.PolicyRule{})
	dry := pol("dry", routev1.Policy_DENY, &routev1.PolicyRule{})
	dry.DryRun = true
	d := Check([]*routev1.Policy{audit, dry}, &Request{Path: "/"})
	if !d.Allow || len(d.Audited) != 2 {
		t.Errorf("Check = %+v, want allowed with both audited", d)
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, value string
		want           bool
	}{
		{"*", "x", true}, {"*", "", false}, {"/a*", "/ab", true}, {"*.com", "x.com", true},
		{"exact", "exact", true}, {"exact", "exactly", false},
	} {
		if got := Match(tc.pattern, tc.value); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.pattern, tc.value, got)
		}
	}
}

// TestTCPStreams: a TCP stream has no HTTP attributes; a DENY rule naming some denies it without
// them, an ALLOW rule naming some never allows it (Istio's semantics), and rules on what a stream
// has apply as they are.
func TestTCPStreams(t *testing.T) {
	tcp := &Request{Principal: "cluster.local/ns/shop/sa/client", Namespace: "shop", SourceIP: netip.MustParseAddr("10.1.0.5"),
		RemoteIP: netip.MustParseAddr("10.1.0.5"), Port: 5432, TCP: true}
	op := func(o *routev1.Operation) *routev1.PolicyRule {
		return &routev1.PolicyRule{To: []*routev1.Operation{o}}
	}
	for _, tc := range []struct {
		name     string
		policies []*routev1.Policy
		allow    bool
	}{
		{"a DENY by path denies every stream", []*routev1.Policy{pol("d", routev1.Policy_DENY, op(&routev1.Operation{Paths: []string{"/admin*"}}))}, false},
		{"a DENY by path on another port does not", []*routev1.Policy{pol("d", routev1.Policy_DENY,
			op(&routev1.Operation{Paths: []string{"/admin*"}, Ports: []string{"80"}}))}, true},
		{"a DENY by method and principal denies that principal's streams", []*routev1.Policy{pol("d", routev1.Policy_DENY,
			&routev1.PolicyRule{From: []*routev1.Source{{Principals: []string{"cluster.local/ns/shop/sa/client"}}},
				To: []*routev1.Operation{{Methods: []string{"POST"}}}})}, false},
		{"a DENY by request principal and namespace of others does not", []*routev1.Policy{pol("d", routev1.Policy_DENY,
			&routev1.PolicyRule{From: []*routev1.Source{{Namespaces: []string{"other"}, RequestPrincipals: []string{"*"}}}})}, true},
		{"a DENY on a header condition denies", []*routev1.Policy{pol("d", routev1.Policy_DENY,
			&routev1.PolicyRule{When: []*routev1.Condition{{Key: "request.headers[x-env]", Values: []string{"prod"}}}})}, false},
		{"an ALLOW by method never allows", []*routev1.Policy{pol("a", routev1.Policy_ALLOW, op(&routev1.Operation{Methods: []string{"GET"}}))}, false},
		{"an ALLOW by port allows", []*routev1.Policy{pol("a", routev1.Policy_ALLOW, op(&routev1.Operation{Ports: []string{"5432"}}))}, true},
		{"an ALLOW with one HTTP rule and one L4 rule allows by the L4 one", []*routev1.Policy{pol("a", routev1.Policy_ALLOW,
			op(&routev1.Operation{Paths: []string{"/"}}), &routev1.PolicyRule{From: []*routev1.Source{{Namespaces: []string{"shop"}}}})}, true},
	} {
		if d := Check(tc.policies, tcp); d.Allow != tc.allow {
			t.Errorf("%s: allow = %v (%s), want %v", tc.name, d.Allow, d.Reason, tc.allow)
		}
	}
}
