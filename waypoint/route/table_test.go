// table_test.go checks the rules of table.go: first match in the given order wins, ports and
// consumer namespaces filter rules before matching, protocols per port, and what Compile rejects.

package route

import (
	"net/http/httptest"
	"strings"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func mustCompile(t *testing.T, sr *routev1.ServiceRoutes) *Table {
	t.Helper()
	tab, err := Compile(sr)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tab
}

// selected is the name of the rule Select returns, or "" for none.
func selected(tab *Table, method, target string, port uint16, srcNS string) string {
	rule := tab.Select(httptest.NewRequest(method, target, nil), port, srcNS)
	if rule == nil {
		return ""
	}
	return rule.Proto.GetName()
}

func TestSelectOrder(t *testing.T) {
	// The order is istiod-lite's precedence order; a rule that would sort first under Gateway API
	// precedence but comes later must still lose, since the table never re-sorts.
	tab := mustCompile(t, &routev1.ServiceRoutes{Rules: []*routev1.Rule{
		{Name: "exact-login", Match: pathMatch(routev1.PathMatch_EXACT, "/login")},
		{Name: "api-post", Match: &routev1.Match{Path: &routev1.PathMatch{Value: "/api"}, Method: "POST"}},
		{Name: "api", Match: pathMatch(routev1.PathMatch_PREFIX, "/api")},
		{Name: "api-v1-shadowed", Match: pathMatch(routev1.PathMatch_PREFIX, "/api/v1")},
		{Name: "port-9090", Ports: []uint32{9090}, Match: pathMatch(routev1.PathMatch_PREFIX, "/")},
		{Name: "catch-all"},
	}})
	tests := []struct {
		method, target string
		port           uint16
		want           string
	}{
		{"GET", "/login", 80, "exact-login"},
		{"GET", "/login/x", 80, "catch-all"},
		{"POST", "/api/v1", 80, "api-post"},
		{"GET", "/api/v1", 80, "api"},
		{"GET", "/apis", 80, "catch-all"},
		{"GET", "/other", 9090, "port-9090"},
		{"GET", "/login", 9090, "exact-login"},
		{"GET", "/other", 80, "catch-all"},
	}
	for _, tt := range tests {
		if got := selected(tab, tt.method, tt.target, tt.port, ""); got != tt.want {
			t.Errorf("%s %s port %d: got %q, want %q", tt.method, tt.target, tt.port, got, tt.want)
		}
	}
}

func TestSelectNone(t *testing.T) {
	tab := mustCompile(t, &routev1.ServiceRoutes{Rules: []*routev1.Rule{
		{Name: "a", Ports: []uint32{8080}, Match: pathMatch(routev1.PathMatch_EXACT, "/a")},
	}})
	for _, c := range []struct {
		target string
		port   uint16
	}{{"/b", 8080}, {"/a", 80}} {
		if got := selected(tab, "GET", c.target, c.port, ""); got != "" {
			t.Errorf("%s port %d: got %q, want no rule", c.target, c.port, got)
		}
	}
	var nilTable *Table
	if got := nilTable.Select(httptest.NewRequest("GET", "/", nil), 80, ""); got != nil {
		t.Errorf("nil table selected %v", got.Proto)
	}
	empty := mustCompile(t, nil)
	if got := selected(empty, "GET", "/", 80, ""); got != "" {
		t.Errorf("empty table selected %q", got)
	}
}

func TestSelectConsumer(t *testing.T) {
	tab := mustCompile(t, &routev1.ServiceRoutes{Namespace: "prod", Rules: []*routev1.Rule{
		{Name: "frontend-v2", ConsumerNamespace: "frontend", Match: pathMatch(routev1.PathMatch_PREFIX, "/v2")},
		{Name: "frontend-8080", ConsumerNamespace: "frontend", Ports: []uint32{8080}},
		{Name: "batch-all", ConsumerNamespace: "batch"},
		{Name: "producer-v2", Match: pathMatch(routev1.PathMatch_PREFIX, "/v2")},
		{Name: "producer-all"},
	}})
	tests := []struct {
		name, srcNS, target string
		port                uint16
		want                string
	}{
		{"consumer rule matches", "frontend", "/v2/x", 80, "frontend-v2"},
		// A client with consumer rules never falls back to producer rules, even on a port none of
		// its rules covers.
		{"consumer rules only, no match", "frontend", "/v1", 80, ""},
		{"consumer rule on its port", "frontend", "/v1", 8080, "frontend-8080"},
		{"other consumer namespace", "batch", "/v2", 80, "batch-all"},
		{"namespace without consumer rules", "web", "/v2", 80, "producer-v2"},
		{"namespace without consumer rules, fallthrough", "web", "/x", 80, "producer-all"},
		{"unknown source namespace", "", "/v2", 80, "producer-v2"},
		{"same namespace as Service", "prod", "/x", 80, "producer-all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := selected(tab, "GET", tt.target, tt.port, tt.srcNS); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestProtocol(t *testing.T) {
	tab := mustCompile(t, &routev1.ServiceRoutes{Protocols: map[uint32]string{
		80: "http", 9090: "http2", 5432: "tcp", 70000: "http",
	}})
	for port, want := range map[uint16]string{80: "http", 9090: "http2", 5432: "tcp", 8080: "", 4464: ""} {
		if got := tab.Protocol(port); got != want {
			t.Errorf("Protocol(%d) = %q, want %q", port, got, want)
		}
	}
	var nilTable *Table
	if got := nilTable.Protocol(80); got != "" {
		t.Errorf("nil table Protocol(80) = %q, want \"\"", got)
	}
}

func TestCompileErrors(t *testing.T) {
	redirect := func(code uint32, pm *routev1.PathModifier) []*routev1.Filter {
		return []*routev1.Filter{{Kind: &routev1.Filter_Redirect{Redirect: &routev1.Redirect{StatusCode: code, Path: pm}}}}
	}
	prefixMod := &routev1.PathModifier{Kind: &routev1.PathModifier_Prefix{Prefix: "/x"}}
	fullMod := &routev1.PathModifier{Kind: &routev1.PathModifier_Full{Full: "/x"}}
	tests := []struct {
		name    string
		rule    *routev1.Rule
		wantErr string // substring; "" for no error
	}{
		{name: "valid", rule: &routev1.Rule{Match: pathMatch(routev1.PathMatch_REGEX, "/a+")}},
		{
			name: "CORS origin that is not one",
			rule: &routev1.Rule{Filters: []*routev1.Filter{{Kind: &routev1.Filter_Cors{Cors: &routev1.Cors{
				AllowOrigins: []string{"https://ok.example", "ftp://x"}}}}}},
			wantErr: "ftp://x",
		},
		{name: "bad path regex", rule: &routev1.Rule{Match: pathMatch(routev1.PathMatch_REGEX, "/(a")}, wantErr: "path regex"},
		{
			name:    "bad header regex",
			rule:    &routev1.Rule{Match: &routev1.Match{Headers: []*routev1.HeaderMatch{{Name: "x", Value: "[", Regex: true}}}},
			wantErr: `header match "x"`,
		},
		{
			name:    "bad query regex",
			rule:    &routev1.Rule{Match: &routev1.Match{QueryParams: []*routev1.HeaderMatch{{Name: "q", Value: "*", Regex: true}}}},
			wantErr: `query parameter match "q"`,
		},
		{
			name:    "non-regex value is not compiled",
			rule:    &routev1.Rule{Match: &routev1.Match{Headers: []*routev1.HeaderMatch{{Name: "x", Value: "["}}}},
			wantErr: "",
		},
		{
			name:    "empty header name",
			rule:    &routev1.Rule{Match: &routev1.Match{Headers: []*routev1.HeaderMatch{{Value: "v"}}}},
			wantErr: "empty name",
		},
		{
			name:    "empty query name",
			rule:    &routev1.Rule{Match: &routev1.Match{QueryParams: []*routev1.HeaderMatch{{Value: "v"}}}},
			wantErr: "empty name",
		},
		{
			name: "empty header modifier name",
			rule: &routev1.Rule{Filters: []*routev1.Filter{{Kind: &routev1.Filter_ResponseHeaders{
				ResponseHeaders: &routev1.HeaderModifier{Set: []*routev1.Header{{Value: "v"}}},
			}}}},
			wantErr: "empty header name",
		},
		{name: "redirect 301", rule: &routev1.Rule{Filters: redirect(301, nil)}},
		{name: "redirect 308", rule: &routev1.Rule{Filters: redirect(308, nil)}},
		{name: "redirect default", rule: &routev1.Rule{Filters: redirect(0, nil)}},
		{name: "redirect 200", rule: &routev1.Rule{Filters: redirect(200, nil)}, wantErr: "status code 200"},
		{name: "redirect 304", rule: &routev1.Rule{Filters: redirect(304, nil)}, wantErr: "status code 304"},
		{name: "prefix modifier, nil match", rule: &routev1.Rule{Filters: redirect(0, prefixMod)}},
		{
			name: "prefix modifier, prefix match",
			rule: &routev1.Rule{Match: pathMatch(routev1.PathMatch_PREFIX, "/a"), Filters: redirect(0, prefixMod)},
		},
		{
			name:    "prefix modifier, exact match",
			rule:    &routev1.Rule{Match: pathMatch(routev1.PathMatch_EXACT, "/a"), Filters: redirect(0, prefixMod)},
			wantErr: "prefix path modifier",
		},
		{
			name: "prefix rewrite, regex match",
			rule: &routev1.Rule{Match: pathMatch(routev1.PathMatch_REGEX, "/a"), Filters: []*routev1.Filter{{
				Kind: &routev1.Filter_Rewrite{Rewrite: &routev1.Rewrite{Path: prefixMod}},
			}}},
			wantErr: "prefix path modifier",
		},
		{
			name: "prefix rewrite in backend filter, exact match",
			rule: &routev1.Rule{Match: pathMatch(routev1.PathMatch_EXACT, "/a"), Backends: []*routev1.Backend{{
				Service: "ns/svc", Weight: 1,
				Filters: []*routev1.Filter{{Kind: &routev1.Filter_Rewrite{Rewrite: &routev1.Rewrite{Path: prefixMod}}}},
			}}},
			wantErr: "backend 0 filter 0",
		},
		{
			name: "full modifier, exact match",
			rule: &routev1.Rule{Match: pathMatch(routev1.PathMatch_EXACT, "/a"), Filters: redirect(0, fullMod)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.rule.Route = "HTTPRoute/shop/cart"
			_, err := Compile(&routev1.ServiceRoutes{Rules: []*routev1.Rule{tt.rule}})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("no error, want one containing %q", tt.wantErr)
			case err != nil:
				for _, want := range []string{tt.wantErr, "HTTPRoute/shop/cart"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
			}
		})
	}
}

func TestCompileReportsEveryRule(t *testing.T) {
	_, err := Compile(&routev1.ServiceRoutes{Namespace: "shop", Hostname: "cart.shop.svc.cluster.local", Rules: []*routev1.Rule{
		{Route: "HTTPRoute/shop/one", Name: "first", Match: pathMatch(routev1.PathMatch_REGEX, "(")},
		{Route: "HTTPRoute/shop/two", Match: pathMatch(routev1.PathMatch_REGEX, "/ok")},
		{Route: "HTTPRoute/shop/three", Match: pathMatch(routev1.PathMatch_REGEX, ")")},
	}})
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{"shop/cart.shop.svc.cluster.local", `HTTPRoute/shop/one rule "first"`, "HTTPRoute/shop/three rule #2"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "HTTPRoute/shop/two") {
		t.Errorf("error %q names the valid rule", msg)
	}
}
