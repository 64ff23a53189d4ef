// match.go keeps the Gateway API matching rules of one rule's Match, a conjunction:
//   - path: nil is PREFIX "/"; EXACT compares r.URL.Path; PREFIX matches whole segments, with a
//     trailing slash of the prefix ignored; REGEX must match the whole path. Paths compare
//     case-sensitively, on the decoded r.URL.Path, with an empty path read as "/".
//   - headers: name case-insensitive, exact or whole-value regex, on the FIRST value of a header
//     that appears several times. "Host" and ":authority" match r.Host, since net/http moves the
//     Host header out of r.Header.
//   - query parameters: name exact (case-sensitive), on the first value.
//   - method: exact.
//
// A header or query parameter that is absent never matches, not even ".*". When several entries
// name the same header (or query parameter), only the first counts, as the specification says.

package route

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// matcher is a compiled routev1.Match.
type matcher struct {
	path    pathMatcher
	headers []valueMatcher
	query   []valueMatcher
	method  string
}

type pathMatcher struct {
	kind routev1.PathMatch_Kind
	// value is the EXACT path, or the PREFIX with trailing slashes removed ("" for "/").
	value string
	re    *regexp.Regexp
}

// valueMatcher matches one header or query parameter. For headers, name is canonical
// (textproto.CanonicalMIMEHeaderKey); for query parameters, as given.
type valueMatcher struct {
	name  string
	host  bool // the header is Host (or :authority): read r.Host
	value string
	re    *regexp.Regexp
}

func compileMatch(m *routev1.Match) (matcher, error) {
	var errs []error
	c := matcher{method: m.GetMethod()}

	pm := m.GetPath()
	c.path.kind = pm.GetKind()
	switch c.path.kind {
	case routev1.PathMatch_PREFIX:
		v := pm.GetValue()
		if pm == nil {
			v = "/"
		}
		c.path.value = strings.TrimRight(v, "/")
	case routev1.PathMatch_EXACT:
		c.path.value = pm.GetValue()
	case routev1.PathMatch_REGEX:
		re, err := wholeRegexp(pm.GetValue())
		if err != nil {
			errs = append(errs, fmt.Errorf("path regex: %w", err))
		}
		c.path.re = re
	default:
		errs = append(errs, fmt.Errorf("unknown path match kind %d", c.path.kind))
	}

	seen := make(map[string]bool)
	for i, h := range m.GetHeaders() {
		if h.GetName() == "" {
			errs = append(errs, fmt.Errorf("header match %d: empty name", i))
			continue
		}
		name := textproto.CanonicalMIMEHeaderKey(h.GetName())
		if seen[name] {
			continue
		}
		seen[name] = true
		vm, err := compileValue(name, h)
		if err != nil {
			errs = append(errs, fmt.Errorf("header match %q: %w", h.GetName(), err))
			continue
		}
		vm.host = strings.EqualFold(name, "host") || strings.EqualFold(name, ":authority")
		c.headers = append(c.headers, vm)
	}

	clear(seen)
	for i, q := range m.GetQueryParams() {
		if q.GetName() == "" {
			errs = append(errs, fmt.Errorf("query parameter match %d: empty name", i))
			continue
		}
		if seen[q.GetName()] {
			continue
		}
		seen[q.GetName()] = true
		vm, err := compileValue(q.GetName(), q)
		if err != nil {
			errs = append(errs, fmt.Errorf("query parameter match %q: %w", q.GetName(), err))
			continue
		}
		c.query = append(c.query, vm)
	}
	return c, errors.Join(errs...)
}

func compileValue(name string, h *routev1.HeaderMatch) (valueMatcher, error) {
	vm := valueMatcher{name: name, value: h.GetValue()}
	if h.GetRegex() {
		re, err := wholeRegexp(h.GetValue())
		if err != nil {
			return vm, err
		}
		vm.re = re
	}
	return vm, nil
}

// wholeRegexp compiles expr (RE2) anchored at both ends, so that it must match a whole value.
func wholeRegexp(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		// Report the expression as configured, not our anchored version of it.
		if _, err2 := regexp.Compile(expr); err2 != nil {
			return nil, err2
		}
		return nil, err
	}
	return re, nil
}

// matches reports whether r satisfies every part of c. *q caches r's parsed query across the
// rules of one Select.
func (c *matcher) matches(r *http.Request, q *url.Values) bool {
	if c.method != "" && r.Method != c.method {
		return false
	}
	if !c.path.matches(requestPath(r)) {
		return false
	}
	for i := range c.headers {
		h := &c.headers[i]
		var v string
		if h.host {
			if r.Host == "" {
				return false
			}
			v = r.Host
		} else {
			vs := r.Header[h.name]
			if len(vs) == 0 {
				return false
			}
			v = vs[0]
		}
		if !h.matchValue(v) {
			return false
		}
	}
	if len(c.query) > 0 && *q == nil {
		// A malformed pair is skipped; the well-formed ones still count.
		*q, _ = url.ParseQuery(r.URL.RawQuery)
	}
	for i := range c.query {
		vs := (*q)[c.query[i].name]
		if len(vs) == 0 || !c.query[i].matchValue(vs[0]) {
			return false
		}
	}
	return true
}

func (vm *valueMatcher) matchValue(v string) bool {
	if vm.re != nil {
		return vm.re.MatchString(v)
	}
	return v == vm.value
}

func (p *pathMatcher) matches(path string) bool {
	switch p.kind {
	case routev1.PathMatch_PREFIX:
		return hasPathPrefix(path, p.value)
	case routev1.PathMatch_EXACT:
		return path == p.value
	case routev1.PathMatch_REGEX:
		return p.re.MatchString(path)
	}
	return false
}

// hasPathPrefix reports whether prefix (without trailing slash; "" is the root) is a sequence of
// whole segments at the start of path: "/foo" is a prefix of "/foo", "/foo/" and "/foo/bar", not
// of "/foobar".
func hasPathPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	rest := path[len(prefix):]
	return rest == "" || rest[0] == '/'
}

// requestPath is the path routing sees: r.URL.Path, or "/" when it is empty.
func requestPath(r *http.Request) string {
	if r.URL == nil || r.URL.Path == "" {
		return "/"
	}
	return r.URL.Path
}
