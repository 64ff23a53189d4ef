// fuzz_test.go holds the fuzz targets for the parts that read untrusted input (request paths,
// headers and query strings): they must never panic, and path replacement must always produce
// an absolute path. `go test` runs the seeds; `go test -fuzz` explores.

package route

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

func FuzzReplacePrefix(f *testing.F) {
	f.Add("/prefix/one/two", "/prefix/one", "/one")
	f.Add("/strip-prefix", "/strip-prefix", "")
	f.Add("/", "/", "/")
	f.Add("//", "", "//")
	f.Fuzz(func(t *testing.T, path, prefix, repl string) {
		got, ok := replacePrefix(path, prefix, repl)
		if !ok {
			if got != path {
				t.Fatalf("no match but path changed: %q -> %q", path, got)
			}
			return
		}
		if !strings.HasPrefix(got, "/") {
			t.Fatalf("replacePrefix(%q, %q, %q) = %q, not absolute", path, prefix, repl, got)
		}
	})
}

func FuzzSelect(f *testing.F) {
	tab, err := Compile(&routev1.ServiceRoutes{Rules: []*routev1.Rule{
		{Name: "regex", Match: &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_REGEX, Value: "/v[0-9]+/.*"}}},
		{Name: "query", Match: &routev1.Match{QueryParams: []*routev1.HeaderMatch{{Name: "id", Value: "[0-9]+", Regex: true}}}},
		{Name: "header", Match: &routev1.Match{Headers: []*routev1.HeaderMatch{{Name: "x-v", Value: "2"}}}},
		{Name: "prefix", Match: &routev1.Match{Path: &routev1.PathMatch{Value: "/api/"}}},
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("/v1/x", "id=1", "2", "svc")
	f.Add("", "%zz;&&=", "", "")
	f.Fuzz(func(t *testing.T, path, rawQuery, hv, host string) {
		r := &http.Request{
			Method: "GET",
			URL:    &url.URL{Path: path, RawQuery: rawQuery},
			Header: http.Header{"X-V": {hv}},
			Host:   host,
		}
		if rule := tab.Select(r, 80, ""); rule != nil {
			RedirectTarget(r, rule.Proto.GetMatch(), &routev1.Redirect{
				Path: &routev1.PathModifier{Kind: &routev1.PathModifier_Prefix{Prefix: "/x"}},
			})
		}
	})
}
