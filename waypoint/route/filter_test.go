// filter_test.go checks the rules of filter.go: header modification order, redirect Location
// building, path replacement (the Gateway API's table and conformance cases), rewrite in place,
// weighted backend choice and retry eligibility.

package route

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func TestModifyHeaders(t *testing.T) {
	h := http.Header{
		"X-Keep":    {"k"},
		"X-Set":     {"old1", "old2"},
		"X-Add":     {"a1"},
		"X-Remove":  {"r"},
		"x-set":     {"non-canonical"},
		"X-Set-Add": {"x"},
	}
	ModifyHeaders(h, &routev1.HeaderModifier{
		Set: []*routev1.Header{{Name: "x-SET", Value: "new"}, {Name: "X-New", Value: "n"}, {Name: "x-set-add", Value: "s"}},
		Add: []*routev1.Header{{Name: "x-add", Value: "a2"}, {Name: "X-Set-Add", Value: "a"}, {Name: "x-gone", Value: "g"}},
		// Remove runs last, so a header added in the same filter can be removed again.
		Remove: []string{"X-REMOVE", "x-gone", "x-absent"},
	})
	want := http.Header{
		"X-Keep":    {"k"},
		"X-Set":     {"new"},
		"X-New":     {"n"},
		"X-Add":     {"a1", "a2"},
		"X-Set-Add": {"s", "a"},
	}
	if len(h) != len(want) {
		t.Errorf("got %d headers %v, want %v", len(h), h, want)
	}
	for k, vs := range want {
		if !slices.Equal(h[k], vs) {
			t.Errorf("%s: got %q, want %q", k, h[k], vs)
		}
	}
	ModifyHeaders(h, nil) // a nil modifier does nothing
	if len(h) != len(want) {
		t.Errorf("nil modifier changed headers: %v", h)
	}
}

func prefixMatch(v string) *routev1.Match { return pathMatch(routev1.PathMatch_PREFIX, v) }

func prefixMod(v string) *routev1.PathModifier {
	return &routev1.PathModifier{Kind: &routev1.PathModifier_Prefix{Prefix: v}}
}

func fullMod(v string) *routev1.PathModifier {
	return &routev1.PathModifier{Kind: &routev1.PathModifier_Full{Full: v}}
}

func TestReplacePrefix(t *testing.T) {
	tests := []struct{ path, prefix, repl, want string }{
		// Gateway API conformance (HTTPRouteRewritePath, HTTPRouteRedirectPath).
		{"/prefix/one/two", "/prefix/one", "/one", "/one/two"},
		{"/prefix/one/two", "/prefix/one", "/", "/two"},
		{"/prefix/one", "/prefix/one", "/", "/"},
		{"/strip-prefix/three", "/strip-prefix", "", "/three"},
		{"/strip-prefix", "/strip-prefix", "", "/"},
		// The specification's ReplacePrefixMatch table.
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		// Root prefix and joins.
		{"/bar", "/", "/xyz", "/xyz/bar"},
		{"/", "/", "/xyz", "/xyz"},
		{"/bar/", "/", "/xyz", "/xyz/bar/"},
		{"/foo//bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "xyz", "/xyz/bar"},
	}
	for _, tt := range tests {
		got, ok := replacePrefix(tt.path, tt.prefix, tt.repl)
		if !ok || got != tt.want {
			t.Errorf("replacePrefix(%q, %q, %q) = %q, %v; want %q", tt.path, tt.prefix, tt.repl, got, ok, tt.want)
		}
	}
	if got, ok := replacePrefix("/foobar", "/foo", "/x"); ok || got != "/foobar" {
		t.Errorf("prefix not covering the path: got %q, %v; want it unchanged", got, ok)
	}
}

func TestRedirectTarget(t *testing.T) {
	tests := []struct {
		name     string
		target   string // request URL; its host becomes r.Host
		tls      bool
		match    *routev1.Match
		red      *routev1.Redirect
		wantCode int
		wantLoc  string
	}{
		{"nil redirect keeps the URL", "http://svc.ns/a?b=c", false, nil, nil, 302, "http://svc.ns/a?b=c"},
		{"scheme https, port 443 omitted", "http://svc.ns/a", false, nil,
			&routev1.Redirect{Scheme: "https", Port: 443}, 302, "https://svc.ns/a"},
		{"scheme change drops the request port", "http://svc.ns:8080/a?x=1", false, nil,
			&routev1.Redirect{Scheme: "https"}, 302, "https://svc.ns/a?x=1"},
		{"scheme set to the same scheme still uses its default port", "http://svc.ns:8080/a", false, nil,
			&routev1.Redirect{Scheme: "http"}, 302, "http://svc.ns/a"},
		{"explicit port kept", "http://svc.ns/a", false, nil,
			&routev1.Redirect{Scheme: "https", Port: 8443}, 302, "https://svc.ns:8443/a"},
		{"port 80 omitted for http", "http://svc.ns:8080/a", false, nil,
			&routev1.Redirect{Port: 80}, 302, "http://svc.ns/a"},
		{"request port kept without scheme", "http://svc.ns:8080/a", false, nil,
			&routev1.Redirect{Hostname: "example.org"}, 302, "http://example.org:8080/a"},
		{"request default port omitted", "http://svc.ns:80/a", false, nil,
			&routev1.Redirect{Hostname: "example.org"}, 302, "http://example.org/a"},
		{"tls request is https", "https://svc.ns/a", true, nil,
			&routev1.Redirect{Hostname: "example.org"}, 302, "https://example.org/a"},
		{"https to http", "https://svc.ns/a", true, nil,
			&routev1.Redirect{Scheme: "http", StatusCode: 301}, 301, "http://svc.ns/a"},
		{"status 308", "http://svc.ns/a", false, nil,
			&routev1.Redirect{StatusCode: 308, Path: fullMod("/b")}, 308, "http://svc.ns/b"},
		{"full path, query kept", "http://svc.ns/a/b?q=1&r=2", false, prefixMatch("/a"),
			&routev1.Redirect{Path: fullMod("/full")}, 302, "http://svc.ns/full?q=1&r=2"},
		{"prefix path", "http://svc.ns/prefix/one/two", false, prefixMatch("/prefix/one"),
			&routev1.Redirect{Path: prefixMod("/one")}, 302, "http://svc.ns/one/two"},
		{"prefix path, strip", "http://svc.ns/strip-prefix", false, prefixMatch("/strip-prefix"),
			&routev1.Redirect{Path: prefixMod("")}, 302, "http://svc.ns/"},
		{"prefix path, nil match is /", "http://svc.ns/a", false, nil,
			&routev1.Redirect{Path: prefixMod("/v2")}, 302, "http://svc.ns/v2/a"},
		{"escaped path kept when unchanged", "http://svc.ns/a%2Fb", false, nil,
			&routev1.Redirect{Hostname: "example.org"}, 302, "http://example.org/a%2Fb"},
		{"everything at once", "http://svc.ns:8080/api/v1/users?page=2", false, prefixMatch("/api/v1"),
			&routev1.Redirect{Scheme: "https", Hostname: "api.example.org", Port: 8443, Path: prefixMod("/v1"), StatusCode: 301},
			301, "https://api.example.org:8443/v1/users?page=2"},
		{"ipv6 host with port", "http://[fd00::1]:8080/a", false, nil,
			&routev1.Redirect{Scheme: "https"}, 302, "https://[fd00::1]/a"},
		{"ipv6 host, explicit port", "http://[fd00::1]/a", false, nil,
			&routev1.Redirect{Port: 9000}, 302, "http://[fd00::1]:9000/a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.target, nil)
			// A server-side request carries its target in origin form: no scheme in the URL.
			r.URL.Scheme, r.URL.Host = "", ""
			if tt.tls {
				r.TLS = &tls.ConnectionState{}
			} else {
				r.TLS = nil
			}
			code, loc := RedirectTarget(r, tt.match, tt.red)
			if code != tt.wantCode || loc != tt.wantLoc {
				t.Errorf("got %d %q, want %d %q", code, loc, tt.wantCode, tt.wantLoc)
			}
		})
	}
}

func TestRedirectTargetAbsoluteForm(t *testing.T) {
	// A request in absolute form (an HTTP proxy request) carries its scheme and host in the URL.
	r := httptest.NewRequest("GET", "https://svc.ns:8443/a", nil)
	r.TLS = nil
	r.Host = ""
	code, loc := RedirectTarget(r, nil, &routev1.Redirect{Path: fullMod("/b")})
	if want := "https://svc.ns:8443/b"; code != 302 || loc != want {
		t.Errorf("got %d %q, want 302 %q", code, loc, want)
	}
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name               string
		target             string
		match              *routev1.Match
		rw                 *routev1.Rewrite
		wantPath, wantHost string
	}{
		{"nil rewrite", "/a%2Fb", nil, nil, "/a/b", "svc.ns"},
		{"hostname only keeps the path", "/a", nil, &routev1.Rewrite{Hostname: "other.ns"}, "/a", "other.ns"},
		{"full", "/a/b", prefixMatch("/a"), &routev1.Rewrite{Path: fullMod("/c")}, "/c", "svc.ns"},
		{"prefix", "/prefix/one/two", prefixMatch("/prefix/one"), &routev1.Rewrite{Path: prefixMod("/one")}, "/one/two", "svc.ns"},
		{"prefix to /", "/prefix/one/two", prefixMatch("/prefix/one"), &routev1.Rewrite{Path: prefixMod("/")}, "/two", "svc.ns"},
		{"prefix to / on the prefix", "/prefix/one", prefixMatch("/prefix/one"), &routev1.Rewrite{Path: prefixMod("/")}, "/", "svc.ns"},
		{"strip", "/strip-prefix/three", prefixMatch("/strip-prefix"), &routev1.Rewrite{Path: prefixMod("")}, "/three", "svc.ns"},
		{"strip to /", "/strip-prefix", prefixMatch("/strip-prefix"), &routev1.Rewrite{Path: prefixMod("")}, "/", "svc.ns"},
		{"path and host", "/a/x", prefixMatch("/a/"), &routev1.Rewrite{Hostname: "b.ns", Path: prefixMod("/b")}, "/b/x", "b.ns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "http://svc.ns"+tt.target+"?q=1", nil)
			r.URL.Host = "10.0.0.7:8080" // where a proxy dials: Rewrite must leave it
			Rewrite(r, tt.match, tt.rw)
			if r.URL.Path != tt.wantPath || r.Host != tt.wantHost {
				t.Errorf("got path %q host %q, want %q %q", r.URL.Path, r.Host, tt.wantPath, tt.wantHost)
			}
			if tt.rw.GetPath() != nil && r.URL.RawPath != "" {
				t.Errorf("RawPath %q not cleared", r.URL.RawPath)
			}
			if r.URL.RawQuery != "q=1" || r.URL.Host != "10.0.0.7:8080" {
				t.Errorf("query %q or URL host %q changed", r.URL.RawQuery, r.URL.Host)
			}
		})
	}
}

func TestRewriteClearsRawPath(t *testing.T) {
	r := httptest.NewRequest("GET", "/a/b%2Fc", nil)
	if r.URL.RawPath == "" {
		t.Fatal("test request has no RawPath")
	}
	Rewrite(r, prefixMatch("/a"), &routev1.Rewrite{Path: prefixMod("/z")})
	if r.URL.Path != "/z/b/c" || r.URL.RawPath != "" {
		t.Errorf("got Path %q RawPath %q, want /z/b/c and empty", r.URL.Path, r.URL.RawPath)
	}
}

func TestPickBackend(t *testing.T) {
	a := &routev1.Backend{Service: "ns/a", Weight: 90}
	b := &routev1.Backend{Service: "ns/b", Weight: 10}
	zero := &routev1.Backend{Service: "ns/zero", Weight: 0}
	unresolved := &routev1.Backend{Weight: 5}

	count := func(bs []*routev1.Backend) map[*routev1.Backend]int {
		var total uint64
		for _, be := range bs {
			total += uint64(be.GetWeight())
		}
		got := make(map[*routev1.Backend]int)
		for i := range total {
			be := PickBackend(bs, func(tot uint64) uint64 {
				if tot != total {
					t.Fatalf("n called with total %d, want %d", tot, total)
				}
				return i
			})
			got[be]++
		}
		return got
	}

	got := count([]*routev1.Backend{zero, a, zero, b, zero})
	if got[a] != 90 || got[b] != 10 || got[zero] != 0 || got[nil] != 0 {
		t.Errorf("90/10 with zero weights: got a=%d b=%d zero=%d nil=%d", got[a], got[b], got[zero], got[nil])
	}
	got = count([]*routev1.Backend{b, unresolved})
	if got[b] != 10 || got[unresolved] != 5 {
		t.Errorf("unresolved backend keeps its share: got b=%d unresolved=%d", got[b], got[unresolved])
	}

	never := func(uint64) uint64 { t.Fatal("n called without weight"); return 0 }
	if be := PickBackend(nil, never); be != nil {
		t.Errorf("no backends: got %v", be)
	}
	if be := PickBackend([]*routev1.Backend{zero, zero}, never); be != nil {
		t.Errorf("zero weights: got %v", be)
	}
	if be := PickBackend([]*routev1.Backend{a, b}, func(uint64) uint64 { return 195 }); be != b {
		t.Errorf("out-of-range n (195 mod 100 = 95): got %v, want b", be)
	}
	for range 100 {
		if be := PickBackend([]*routev1.Backend{zero, a, zero}, nil); be != a {
			t.Fatalf("nil n: got %v, want a", be)
		}
	}
}

func TestRetryable(t *testing.T) {
	rt := &routev1.Retry{Codes: []uint32{502, 503}, Attempts: 2}
	tests := []struct {
		name   string
		rt     *routev1.Retry
		status int
		want   bool
	}{
		{"listed code", rt, 503, true},
		{"other listed code", rt, 502, true},
		{"unlisted code", rt, 500, false},
		{"success", rt, 200, false},
		{"connection failure", rt, 0, true},
		{"connection failure without codes", &routev1.Retry{Attempts: 1}, 0, true},
		{"no attempts", &routev1.Retry{Codes: []uint32{503}}, 503, false},
		{"no attempts, connection failure", &routev1.Retry{Codes: []uint32{503}}, 0, false},
		{"nil retry", nil, 503, false},
		{"nil retry, connection failure", nil, 0, false},
		{"negative status", rt, -1, false},
	}
	for _, tt := range tests {
		if got := Retryable(tt.rt, tt.status); got != tt.want {
			t.Errorf("%s: Retryable(%v, %d) = %v, want %v", tt.name, tt.rt, tt.status, got, tt.want)
		}
	}
}
