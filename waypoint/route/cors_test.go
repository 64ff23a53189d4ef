// cors_test.go checks the rules of cors.go: origin matching, which requests are preflights, the
// headers of a preflight's answer and of an actual response, and every case of the Gateway API's
// HTTPRouteCORS conformance test (v1.6.3) against the routes of its manifest.

package route

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func mustCORS(t *testing.T, c *routev1.Cors) *CORS {
	t.Helper()
	p, err := CompileCORS(c)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// corsRequest is a request with method and headers given as name, value pairs.
func corsRequest(method string, header ...string) *http.Request {
	r := httptest.NewRequest(method, "http://echo.shop/cors", nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	return r
}

func TestCORSOrigins(t *testing.T) {
	tests := []struct {
		allowed []string
		origin  string
		want    bool
	}{
		// Exact: scheme, host and port.
		{[]string{"https://www.foo.com"}, "https://www.foo.com", true},
		{[]string{"https://www.foo.com"}, "http://www.foo.com", false},
		{[]string{"https://www.foo.com"}, "https://foo.com", false},
		{[]string{"https://www.foo.com"}, "https://www.foo.com.evil.com", false},
		{[]string{"https://www.foo.com"}, "https://evilwww.foo.com", false},
		{[]string{"https://www.foo.com"}, "https://WWW.Foo.COM", true},
		{[]string{"HTTPS://WWW.FOO.COM"}, "https://www.foo.com", true},
		// Default ports equal explicit ones; other ports do not.
		{[]string{"https://www.foo.com"}, "https://www.foo.com:443", true},
		{[]string{"https://www.foo.com:443"}, "https://www.foo.com", true},
		{[]string{"http://www.foo.com"}, "http://www.foo.com:80", true},
		{[]string{"http://www.foo.com:80"}, "http://www.foo.com", true},
		{[]string{"https://www.foo.com"}, "https://www.foo.com:80", false},
		{[]string{"http://www.foo.com"}, "http://www.foo.com:443", false},
		{[]string{"https://www.foo.com"}, "https://www.foo.com:8443", false},
		{[]string{"https://www.foo.com:8443"}, "https://www.foo.com:8443", true},
		{[]string{"https://www.foo.com:8443"}, "https://www.foo.com", false},
		{[]string{"http://localhost:3000"}, "http://localhost:3000", true},
		{[]string{"http://10.0.0.1"}, "http://10.0.0.1:80", true},
		// A leading "*" is any number of labels on its left, at least one.
		{[]string{"https://*.bar.com"}, "https://www.bar.com", true},
		{[]string{"https://*.bar.com"}, "https://xpto.www.bar.com", true},
		{[]string{"https://*.bar.com"}, "https://WWW.BAR.COM", true},
		{[]string{"https://*.bar.com"}, "https://bar.com", false},
		{[]string{"https://*.bar.com"}, "https://.bar.com", false},
		{[]string{"https://*.bar.com"}, "https://foobar.com", false},
		{[]string{"https://*.bar.com"}, "https://www.bar.com.evil.com", false},
		{[]string{"https://*.bar.com"}, "http://www.bar.com", false},
		{[]string{"https://*.bar.com"}, "https://www.bar.com:8443", false},
		{[]string{"https://*.bar.com:8443"}, "https://www.bar.com:8443", true},
		{[]string{"https://*"}, "https://anything.example", true},
		{[]string{"https://*"}, "http://anything.example", false},
		{[]string{"https://*"}, "https://anything.example:8443", false},
		// "*" alone allows every Origin, ports and odd schemes included.
		{[]string{"*"}, "https://foobar.com", true},
		{[]string{"*"}, "https://foobar.com:12345", true},
		{[]string{"*"}, "chrome-extension://abc", true},
		{[]string{"*"}, "null", true},
		// Several origins: any one.
		{[]string{"https://www.foo.com", "https://*.bar.com"}, "https://www.bar.com", true},
		{[]string{"https://www.foo.com", "https://*.bar.com"}, "https://foobar.com", false},
		// Request origins that are not origins.
		{[]string{"https://www.foo.com"}, "null", false},
		{[]string{"https://www.foo.com"}, "www.foo.com", false},
		{[]string{"https://www.foo.com"}, "https://www.foo.com/", false},
		{[]string{"https://www.foo.com"}, "https://www.foo.com:", false},
		{[]string{"https://www.foo.com"}, "https://www.foo.com:99999", false},
		{[]string{"https://www.foo.com"}, "https://user@www.foo.com", false},
		{[]string{"https://*.bar.com"}, "https://*.bar.com", false},
		{nil, "https://www.foo.com", false},
	}
	for _, tt := range tests {
		if got := mustCORS(t, &routev1.Cors{AllowOrigins: tt.allowed}).Allows(tt.origin); got != tt.want {
			t.Errorf("%q allows %q: %v, want %v", tt.allowed, tt.origin, got, tt.want)
		}
	}
}

func TestCompileCORSInvalidOrigins(t *testing.T) {
	valid := []string{"*", "https://www.foo.com", "http://foo.com:8080", "https://*.bar.com", "https://*", "https://*:8443",
		"http://localhost", "http://10.0.0.1:65535", "https://a-b.c-d.example"}
	if _, err := CompileCORS(&routev1.Cors{AllowOrigins: valid}); err != nil {
		t.Errorf("valid origins: %v", err)
	}
	for _, o := range []string{"", "www.foo.com", "ftp://foo.com", "https://", "https://foo.com/", "https://foo.com/path",
		"https://foo.com:0", "https://foo.com:65536", "https://foo.com:x", "https://foo*.bar.com", "https://*bar.com",
		"https://www.*.bar.com", "https://*.*.bar.com", "https://foo..com", "https://foo.com.", "https://[::1]",
		"https://foo_bar.com", "https://user@foo.com", "null", "**"} {
		c, err := CompileCORS(&routev1.Cors{AllowOrigins: []string{"https://ok.example", o}})
		if err == nil || !strings.Contains(err.Error(), `"`+o+`"`) {
			t.Errorf("origin %q: error %v, want one naming it", o, err)
			continue
		}
		// The policy stays usable: the origins that parse are allowed, the others allow nothing.
		if !c.Allows("https://ok.example") || c.Allows(o) {
			t.Errorf("origin %q: the policy returned with the error is not the valid origins'", o)
		}
	}
}

func TestCORSPreflight(t *testing.T) {
	lists := &routev1.Cors{AllowOrigins: []string{"https://www.foo.com"}, AllowMethods: []string{"GET", "PUT"},
		AllowHeaders: []string{"x-a", "X-B"}, ExposeHeaders: []string{"x-c"}, MaxAgeSeconds: 600}
	wild := &routev1.Cors{AllowOrigins: []string{"*"}, AllowMethods: []string{"*"}, AllowHeaders: []string{"*"},
		ExposeHeaders: []string{"*", "x-c"}}
	wildCred := &routev1.Cors{AllowOrigins: []string{"*"}, AllowMethods: []string{"*"}, AllowHeaders: []string{"*"},
		ExposeHeaders: []string{"*", "x-c"}, AllowCredentials: true}
	const origin = "https://www.foo.com"
	tests := []struct {
		name   string
		c      *routev1.Cors
		r      *http.Request
		answer bool
		want   http.Header
	}{
		{name: "no Origin: not a preflight", c: lists,
			r: corsRequest("OPTIONS", "Access-Control-Request-Method", "GET")},
		{name: "no Access-Control-Request-Method: an actual OPTIONS request", c: lists,
			r: corsRequest("OPTIONS", "Origin", origin)},
		{name: "not OPTIONS: an actual request", c: lists,
			r: corsRequest("GET", "Origin", origin, "Access-Control-Request-Method", "GET")},
		{name: "lists", c: lists, answer: true,
			r: corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "DELETE", "Access-Control-Request-Headers", "x-z"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Methods": {"GET, PUT"},
				"Access-Control-Allow-Headers": {"x-a, X-B"}, "Access-Control-Expose-Headers": {"x-c"},
				"Access-Control-Max-Age": {"600"}, "Vary": {"Origin"}}},
		{name: "origin not allowed: 200 without CORS headers", c: lists, answer: true,
			r:    corsRequest("OPTIONS", "Origin", "https://evil.com", "Access-Control-Request-Method", "GET"),
			want: http.Header{"Vary": {"Origin"}}},
		{name: "no origin allowed", c: &routev1.Cors{}, answer: true,
			r:    corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "GET"),
			want: http.Header{"Vary": {"Origin"}}},
		{name: "only origins: no methods, headers, max age or credentials", c: &routev1.Cors{AllowOrigins: []string{origin}}, answer: true,
			r:    corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "GET", "Access-Control-Request-Headers", "x-a"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Vary": {"Origin"}}},
		{name: "wildcards without credentials: *, and the origin echoed", c: wild, answer: true,
			r: corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "PATCH", "Access-Control-Request-Headers", "x-a, x-b"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Methods": {"*"},
				"Access-Control-Allow-Headers": {"*"}, "Access-Control-Expose-Headers": {"*, x-c"}, "Vary": {"Origin"}}},
		{name: "wildcard headers, none requested: no Allow-Headers", c: wild, answer: true,
			r: corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "PATCH"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Methods": {"*"},
				"Access-Control-Expose-Headers": {"*, x-c"}, "Vary": {"Origin"}}},
		{name: "wildcards with credentials: what was asked, echoed; no * exposed", c: wildCred, answer: true,
			r: corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "PATCH",
				"Access-Control-Request-Headers", "x-a", "Access-Control-Request-Headers", "x-b"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Methods": {"PATCH"},
				"Access-Control-Allow-Headers": {"x-a, x-b"}, "Access-Control-Expose-Headers": {"x-c"},
				"Access-Control-Allow-Credentials": {"true"}, "Vary": {"Origin"}}},
		{name: "wildcard headers with credentials, none requested: no Allow-Headers", c: wildCred, answer: true,
			r: corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "GET"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Methods": {"GET"},
				"Access-Control-Expose-Headers": {"x-c"}, "Access-Control-Allow-Credentials": {"true"}, "Vary": {"Origin"}}},
		{name: "only * exposed, with credentials: no Expose-Headers", answer: true,
			c: &routev1.Cors{AllowOrigins: []string{origin}, ExposeHeaders: []string{"*"}, AllowCredentials: true},
			r: corsRequest("OPTIONS", "Origin", origin, "Access-Control-Request-Method", "GET"),
			want: http.Header{"Access-Control-Allow-Origin": {origin}, "Access-Control-Allow-Credentials": {"true"},
				"Vary": {"Origin"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answer, m := mustCORS(t, tt.c).Preflight(tt.r)
			if answer != tt.answer {
				t.Fatalf("answered %v, want %v", answer, tt.answer)
			}
			if !answer && m != nil {
				t.Errorf("not answered, yet a modifier: %v", m)
			}
			var h http.Header
			if answer {
				h = http.Header{}
				ModifyHeaders(h, m)
			}
			if !equalHeaders(h, tt.want) {
				t.Errorf("headers %v, want %v", h, tt.want)
			}
			if !answer && mustCORS(t, tt.c).Response(tt.r) == nil && tt.r.Header.Get("Origin") != "" {
				t.Errorf("an actual request with an Origin got no response headers")
			}
		})
	}
}

func TestCORSResponse(t *testing.T) {
	c := &routev1.Cors{AllowOrigins: []string{"https://www.foo.com", "https://*.bar.com"}, AllowMethods: []string{"GET"},
		AllowHeaders: []string{"x-a"}, ExposeHeaders: []string{"x-c", "x-d"}, MaxAgeSeconds: 5}
	cred := &routev1.Cors{AllowOrigins: []string{"*"}, ExposeHeaders: []string{"*"}, AllowCredentials: true}
	// What the backend answered: its own Allow-Origin and Vary.
	backend := http.Header{"Access-Control-Allow-Origin": {"https://backend.example"}, "Vary": {"Accept-Encoding"},
		"Content-Type": {"text/plain"}}
	tests := []struct {
		name string
		c    *routev1.Cors
		r    *http.Request
		want http.Header // the backend's answer once modified; nil: no modifier at all
	}{
		{name: "no Origin: untouched", c: c, r: corsRequest("GET")},
		{name: "allowed: set, the backend's replaced", c: c, r: corsRequest("POST", "Origin", "https://a.b.bar.com"),
			want: http.Header{"Access-Control-Allow-Origin": {"https://a.b.bar.com"}, "Access-Control-Expose-Headers": {"x-c, x-d"},
				"Vary": {"Accept-Encoding", "Origin"}, "Content-Type": {"text/plain"}}},
		{name: "not allowed: none set, the backend's kept", c: c, r: corsRequest("GET", "Origin", "https://bar.com"),
			want: http.Header{"Access-Control-Allow-Origin": {"https://backend.example"}, "Vary": {"Accept-Encoding", "Origin"},
				"Content-Type": {"text/plain"}}},
		{name: "credentials: the origin echoed, never *", c: cred, r: corsRequest("GET", "Origin", "https://x.example"),
			want: http.Header{"Access-Control-Allow-Origin": {"https://x.example"}, "Access-Control-Allow-Credentials": {"true"},
				"Vary": {"Accept-Encoding", "Origin"}, "Content-Type": {"text/plain"}}},
		{name: "an actual OPTIONS request", c: c, r: corsRequest("OPTIONS", "Origin", "https://www.foo.com"),
			want: http.Header{"Access-Control-Allow-Origin": {"https://www.foo.com"}, "Access-Control-Expose-Headers": {"x-c, x-d"},
				"Vary": {"Accept-Encoding", "Origin"}, "Content-Type": {"text/plain"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustCORS(t, tt.c).Response(tt.r)
			if tt.want == nil {
				if m != nil {
					t.Fatalf("modifier %v, want none", m)
				}
				return
			}
			h := backend.Clone()
			ModifyHeaders(h, m)
			if !equalHeaders(h, tt.want) {
				t.Errorf("response headers %v, want %v", h, tt.want)
			}
		})
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, vs := range b {
		if !slices.Equal(a[k], vs) {
			return false
		}
	}
	return true
}

// TestCORSConformance runs the cases of the Gateway API's HTTPRouteCORS conformance test
// (conformance/tests/httproute-cors.go, v1.6.3) against the filters of its manifest: a preflight
// must be answered by the filter (200) with one of the values the test accepts for each header it
// checks (whitespace ignored, as the test does for lists) and none of the headers it wants absent;
// an actual request's response must carry the same.
func TestCORSConformance(t *testing.T) {
	// The CORS filters of httproute-cors.yaml, by the path prefix of their rule.
	routes := map[string]*routev1.Cors{
		"/cors-1": {AllowOrigins: []string{"https://www.foo.com", "https://*.bar.com"}, AllowMethods: []string{"GET", "OPTIONS"},
			AllowHeaders: []string{"x-header-1", "x-header-2"}, ExposeHeaders: []string{"x-header-3", "x-header-4"},
			AllowCredentials: true, MaxAgeSeconds: 3600},
		// maxAge unset: the CRD's default, 5, as istiod-lite sends it.
		"/cors-2":                               {AllowOrigins: []string{"https://www.foo.com"}, AllowMethods: []string{"*"}, MaxAgeSeconds: 5},
		"/cors-wildcard-origin":                 {AllowOrigins: []string{"*"}, AllowMethods: []string{"PUT"}, MaxAgeSeconds: 5},
		"/cors-wildcard-methods-headers":        {AllowOrigins: []string{"*"}, AllowMethods: []string{"*"}, AllowHeaders: []string{"*"}, AllowCredentials: true, MaxAgeSeconds: 5},
		"/cors-wildcard-methods-headers-unauth": {AllowOrigins: []string{"*"}, AllowMethods: []string{"*"}, AllowHeaders: []string{"*"}, MaxAgeSeconds: 5},
	}
	type tc struct {
		name    string
		path    string
		method  string
		headers []string            // name, value pairs
		valid   map[string][]string // header: the values accepted (its presence required)
		absent  []string
	}
	foo1 := map[string][]string{
		"access-control-allow-methods":     {"GET, OPTIONS", "OPTIONS, GET"},
		"access-control-allow-headers":     {"x-header-1, x-header-2", "x-header-2, x-header-1"},
		"access-control-expose-headers":    {"x-header-3, x-header-4", "x-header-4, x-header-3"},
		"access-control-max-age":           {"3600"},
		"access-control-allow-credentials": {"true"},
	}
	with := func(m map[string][]string, k string, vs ...string) map[string][]string {
		out := map[string][]string{k: vs}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	const acrm, acrh = "access-control-request-method", "access-control-request-headers"
	tests := []tc{
		{name: "CORS preflight request from an exact matching origin should be allowed", path: "/cors-1", method: "OPTIONS",
			headers: []string{"Origin", "https://www.foo.com", acrm, "GET", acrh, "x-header-1, x-header-2"},
			valid:   with(foo1, "access-control-allow-origin", "https://www.foo.com")},
		{name: "CORS preflight request from a wildcard matching origin should be allowed", path: "/cors-1", method: "OPTIONS",
			headers: []string{"Origin", "https://www.bar.com", acrm, "GET", acrh, "x-header-1, x-header-2"},
			valid:   with(foo1, "access-control-allow-origin", "https://www.bar.com")},
		{name: "CORS preflight request from a wildcard matching any number of periods left to '*' should be allowed", path: "/cors-1",
			method: "OPTIONS", headers: []string{"Origin", "https://xpto.www.bar.com", acrm, "GET", acrh, "x-header-1, x-header-2"},
			valid: with(foo1, "access-control-allow-origin", "https://xpto.www.bar.com")},
		{name: "CORS preflight request from a non-matching origin should not be allowed", path: "/cors-1", method: "OPTIONS",
			headers: []string{"Origin", "https://foobar.com", acrm, "GET"},
			absent:  []string{"access-control-allow-origin"}},
		{name: "Simple request from an exact matching origin should be allowed", path: "/cors-1", method: "GET",
			headers: []string{"Origin", "https://www.foo.com", acrm, "GET", acrh, "x-header-1, x-header-2"},
			valid:   map[string][]string{"access-control-allow-origin": {"https://www.foo.com"}}},
		{name: "Simple request from a wildcard matching origin should be allowed", path: "/cors-1", method: "GET",
			headers: []string{"Origin", "https://www.bar.com", acrm, "GET", acrh, "x-header-1, x-header-2"},
			valid:   map[string][]string{"access-control-allow-origin": {"https://www.bar.com"}}},
		{name: "Simple request from a non-matching origin should not be allowed", path: "/cors-1", method: "GET",
			headers: []string{"Origin", "https://foobar.com", acrm, "GET"},
			absent:  []string{"access-control-allow-origin"}},
		{name: "CORS preflight request with POST method should be allowed by allowMethods with wildcard", path: "/cors-2",
			method: "OPTIONS", headers: []string{"Origin", "https://www.foo.com", acrm, "POST"},
			valid:  map[string][]string{"access-control-allow-methods": {"POST", "*"}, "access-control-allow-origin": {"https://www.foo.com"}},
			absent: []string{"access-control-allow-credentials"}},
		{name: "CORS preflight request should not receive access-control-allow-credentials header without access-control-allow-credentials set to true",
			path: "/cors-2", method: "OPTIONS", headers: []string{"Origin", "https://www.foo.com", acrm, "POST"},
			absent: []string{"Access-Control-Allow-Credentials"}},
		{name: "CORS preflight request from a wildcard origin should return header with '*' or with the requested Origin",
			path: "/cors-wildcard-origin", method: "OPTIONS", headers: []string{"Origin", "https://foobar.com", acrm, "PUT"},
			valid:  map[string][]string{"access-control-allow-origin": {"https://foobar.com", "*"}, "access-control-allow-methods": {"PUT"}},
			absent: []string{"Access-Control-Allow-Credentials"}},
		{name: "CORS preflight request from a wildcard origin containing a port should return header with '*' or with the requested Origin",
			path: "/cors-wildcard-origin", method: "OPTIONS", headers: []string{"Origin", "https://foobar.com:12345", acrm, "PUT"},
			valid:  map[string][]string{"access-control-allow-origin": {"https://foobar.com:12345", "*"}, "access-control-allow-methods": {"PUT"}},
			absent: []string{"Access-Control-Allow-Credentials"}},
		{name: "Request from a wildcard origin containing a port should return header with '*' or with the requested Origin",
			path: "/cors-wildcard-origin", method: "PUT", headers: []string{"Origin", "https://foobar.com:12345"},
			valid: map[string][]string{"access-control-allow-origin": {"https://foobar.com:12345", "*"}}},
		{name: "Simple request from a wildcard origin should return header with '*' or with the requested Origin",
			path: "/cors-wildcard-origin", method: "PUT", headers: []string{"Origin", "https://foobar.com"},
			valid:  map[string][]string{"access-control-allow-origin": {"https://foobar.com", "*"}},
			absent: []string{"Access-Control-Allow-Credentials"}},
		{name: "CORS preflight request requesting specific method and headers should be allowed and always echo the origin with allowCredentials set to true",
			path: "/cors-wildcard-methods-headers", method: "OPTIONS",
			headers: []string{"Origin", "https://other.foo.com", acrm, "PUT", acrh, "x-header-1, x-header-2"},
			valid: map[string][]string{"access-control-allow-origin": {"https://other.foo.com"}, "access-control-allow-methods": {"PUT"},
				"access-control-allow-headers":     {"x-header-1, x-header-2", "x-header-2, x-header-1"},
				"access-control-allow-credentials": {"true"}}},
		{name: "CORS preflight request requesting specific method and headers should hide access-control-allow-credentials headers with allowCredentials set to false",
			path: "/cors-wildcard-methods-headers-unauth", method: "OPTIONS",
			headers: []string{"Origin", "https://other.foo.com", acrm, "PUT", acrh, "x-header-1, x-header-2"},
			valid: map[string][]string{"access-control-allow-origin": {"https://other.foo.com", "*"},
				"access-control-allow-methods": {"PUT", "*"},
				"access-control-allow-headers": {"x-header-1, x-header-2", "x-header-2, x-header-1", "*"}},
			absent: []string{"access-control-allow-credentials"}},
		{name: "CORS request should receive access-control-allow-credentials header with allowCredentials set to true",
			path: "/cors-wildcard-methods-headers", method: "GET", headers: []string{"Origin", "https://other.foo.com"},
			valid: map[string][]string{"access-control-allow-origin": {"https://other.foo.com"}, "access-control-allow-credentials": {"true"}}},
		{name: "CORS request should not receive access-control-allow-credentials header without allowCredentials set to true",
			path: "/cors-wildcard-methods-headers-unauth", method: "GET", headers: []string{"Origin", "https://other.foo.com"},
			valid:  map[string][]string{"access-control-allow-origin": {"https://other.foo.com", "*"}},
			absent: []string{"access-control-allow-credentials"}},
	}
	noSpace := func(s string) string { return strings.Join(strings.Fields(s), "") }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustCORS(t, routes[tt.path])
			r := corsRequest(tt.method, tt.headers...)
			answer, m := c.Preflight(r)
			if answer != (tt.method == "OPTIONS") {
				t.Fatalf("answered by the filter: %v", answer)
			}
			if !answer {
				m = c.Response(r)
			}
			h := http.Header{} // the echo server's answer sets no CORS header
			ModifyHeaders(h, m)
			for name, vs := range tt.valid {
				got := h.Values(name)
				if len(got) != 1 || !slices.ContainsFunc(vs, func(v string) bool { return noSpace(v) == noSpace(got[0]) }) {
					t.Errorf("%s: %q, want one of %q", name, got, vs)
				}
			}
			for _, name := range tt.absent {
				if got := h.Values(name); len(got) > 0 {
					t.Errorf("%s: %q, want none", name, got)
				}
			}
		})
	}
}
