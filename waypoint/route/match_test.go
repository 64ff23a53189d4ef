// match_test.go checks the matching rules of match.go, one rule at a time: every path kind with
// its segment edge cases, headers, query parameters and method.

package route

import (
	"net/http"
	"net/http/httptest"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func pathMatch(kind routev1.PathMatch_Kind, v string) *routev1.Match {
	return &routev1.Match{Path: &routev1.PathMatch{Kind: kind, Value: v}}
}

// matchOne reports whether a table holding only a rule with match m selects r.
func matchOne(t *testing.T, m *routev1.Match, r *http.Request) bool {
	t.Helper()
	tab, err := Compile(&routev1.ServiceRoutes{Rules: []*routev1.Rule{{Route: "HTTPRoute/ns/r", Match: m}}})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tab.Select(r, 80, "") != nil
}

func TestPathMatch(t *testing.T) {
	const (
		prefix = routev1.PathMatch_PREFIX
		exact  = routev1.PathMatch_EXACT
		regex  = routev1.PathMatch_REGEX
	)
	tests := []struct {
		name  string
		match *routev1.Match
		path  string
		want  bool
	}{
		{"nil match is prefix /", nil, "/anything/at/all", true},
		{"nil path is prefix /", &routev1.Match{}, "/", true},
		{"root prefix", pathMatch(prefix, "/"), "/x", true},
		{"root prefix on root", pathMatch(prefix, "/"), "/", true},
		{"prefix itself", pathMatch(prefix, "/foo"), "/foo", true},
		{"prefix with slash", pathMatch(prefix, "/foo"), "/foo/", true},
		{"prefix deeper", pathMatch(prefix, "/foo"), "/foo/bar", true},
		{"prefix not mid-segment", pathMatch(prefix, "/foo"), "/foobar", false},
		{"prefix not parent", pathMatch(prefix, "/foo"), "/", false},
		{"prefix case-sensitive", pathMatch(prefix, "/foo"), "/Foo", false},
		{"trailing slash ignored, bare", pathMatch(prefix, "/foo/"), "/foo", true},
		{"trailing slash ignored, deeper", pathMatch(prefix, "/foo/"), "/foo/bar", true},
		{"trailing slash ignored, mid-segment", pathMatch(prefix, "/foo/"), "/foobar", false},
		{"multi-segment prefix", pathMatch(prefix, "/a/b"), "/a/b/c", true},
		{"multi-segment prefix, partial last", pathMatch(prefix, "/a/b"), "/a/bc", false},
		{"multi-segment prefix, shorter path", pathMatch(prefix, "/a/b"), "/a", false},
		{"prefix with double slash after", pathMatch(prefix, "/foo"), "/foo//bar", true},
		{"exact", pathMatch(exact, "/foo"), "/foo", true},
		{"exact not prefix", pathMatch(exact, "/foo"), "/foo/bar", false},
		{"exact trailing slash differs", pathMatch(exact, "/foo"), "/foo/", false},
		{"exact case-sensitive", pathMatch(exact, "/foo"), "/FOO", false},
		{"exact root", pathMatch(exact, "/"), "/", true},
		{"exact on decoded path", pathMatch(exact, "/a b"), "/a%20b", true},
		{"regex whole", pathMatch(regex, "/v[0-9]+/.*"), "/v1/users", true},
		{"regex anchored start", pathMatch(regex, "/v[0-9]+"), "/api/v1", false},
		{"regex anchored end", pathMatch(regex, "/v[0-9]+"), "/v1/users", false},
		{"regex alternation anchored", pathMatch(regex, "/a|/b"), "/bc", false},
		{"regex alternation", pathMatch(regex, "/a|/b"), "/b", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.path, nil)
			if got := matchOne(t, tt.match, r); got != tt.want {
				t.Errorf("path %q against %v: got %v, want %v", tt.path, tt.match.GetPath(), got, tt.want)
			}
		})
	}
}

func TestEmptyPathIsRoot(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.URL.Path = ""
	if !matchOne(t, pathMatch(routev1.PathMatch_EXACT, "/"), r) {
		t.Error("empty path did not match EXACT /")
	}
}

func TestHeaderQueryMethodMatch(t *testing.T) {
	hdr := func(name, value string, regex bool) *routev1.Match {
		return &routev1.Match{Headers: []*routev1.HeaderMatch{{Name: name, Value: value, Regex: regex}}}
	}
	qp := func(name, value string, regex bool) *routev1.Match {
		return &routev1.Match{QueryParams: []*routev1.HeaderMatch{{Name: name, Value: value, Regex: regex}}}
	}
	tests := []struct {
		name   string
		match  *routev1.Match
		method string
		target string
		header http.Header
		host   string
		want   bool
	}{
		{name: "header exact", match: hdr("x-version", "v2", false), header: http.Header{"X-Version": {"v2"}}, want: true},
		{name: "header name case-insensitive", match: hdr("X-VERSION", "v2", false), header: http.Header{"X-Version": {"v2"}}, want: true},
		{name: "header value case-sensitive", match: hdr("x-version", "v2", false), header: http.Header{"X-Version": {"V2"}}, want: false},
		{name: "header absent", match: hdr("x-version", "v2", false), want: false},
		{name: "header absent, regex .*", match: hdr("x-version", ".*", true), want: false},
		{name: "header regex whole", match: hdr("x-version", "v[0-9]", true), header: http.Header{"X-Version": {"v7"}}, want: true},
		{name: "header regex anchored", match: hdr("x-version", "v[0-9]", true), header: http.Header{"X-Version": {"v77"}}, want: false},
		{name: "header repeated, first matches", match: hdr("x-v", "a", false), header: http.Header{"X-V": {"a", "b"}}, want: true},
		{name: "header repeated, only later matches", match: hdr("x-v", "b", false), header: http.Header{"X-V": {"a", "b"}}, want: false},
		{name: "header comma list is one value", match: hdr("x-v", "a", false), header: http.Header{"X-V": {"a,b"}}, want: false},
		{name: "host header reads r.Host", match: hdr("Host", "svc.ns:8080", false), host: "svc.ns:8080", want: true},
		{name: ":authority reads r.Host", match: hdr(":authority", "svc.*", true), host: "svc.ns", want: true},
		{
			name: "duplicate header entries, first counts",
			match: &routev1.Match{Headers: []*routev1.HeaderMatch{
				{Name: "x-v", Value: "a"}, {Name: "X-V", Value: "b"},
			}},
			header: http.Header{"X-V": {"a"}},
			want:   true,
		},
		{
			name: "every header must match",
			match: &routev1.Match{Headers: []*routev1.HeaderMatch{
				{Name: "x-a", Value: "1"}, {Name: "x-b", Value: "2"},
			}},
			header: http.Header{"X-A": {"1"}, "X-B": {"3"}},
			want:   false,
		},
		{name: "query exact", match: qp("user", "alice", false), target: "/?user=alice", want: true},
		{name: "query name case-sensitive", match: qp("User", "alice", false), target: "/?user=alice", want: false},
		{name: "query first value", match: qp("user", "alice", false), target: "/?user=alice&user=bob", want: true},
		{name: "query later value ignored", match: qp("user", "bob", false), target: "/?user=alice&user=bob", want: false},
		{name: "query decoded", match: qp("q", "a b", false), target: "/?q=a%20b", want: true},
		{name: "query regex", match: qp("id", "[0-9]+", true), target: "/?id=123", want: true},
		{name: "query regex anchored", match: qp("id", "[0-9]+", true), target: "/?id=123x", want: false},
		{name: "query absent", match: qp("id", "1", false), target: "/?other=1", want: false},
		{name: "query malformed pair skipped", match: qp("id", "1", false), target: "/?%zz=1&id=1", want: true},
		{name: "method exact", match: &routev1.Match{Method: "POST"}, method: "POST", want: true},
		{name: "method differs", match: &routev1.Match{Method: "POST"}, method: "GET", want: false},
		{
			name: "all parts together",
			match: &routev1.Match{
				Path:        &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: "/api"},
				Headers:     []*routev1.HeaderMatch{{Name: "x-env", Value: "canary"}},
				QueryParams: []*routev1.HeaderMatch{{Name: "debug", Value: "1"}},
				Method:      "PUT",
			},
			method: "PUT",
			target: "/api/x?debug=1",
			header: http.Header{"X-Env": {"canary"}},
			want:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, target := tt.method, tt.target
			if method == "" {
				method = "GET"
			}
			if target == "" {
				target = "/"
			}
			r := httptest.NewRequest(method, target, nil)
			for k, vs := range tt.header {
				r.Header[k] = vs
			}
			if tt.host != "" {
				r.Host = tt.host
			}
			if got := matchOne(t, tt.match, r); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
