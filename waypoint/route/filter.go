// filter.go keeps the rules of the filters a waypoint applies once a rule is selected:
//   - header modifiers: set, then add, then remove; names case-insensitive.
//   - redirect: scheme, hostname, port and path replaced when set. Following the Gateway API, a
//     redirect that sets a scheme and no port sends the client to the scheme's well-known port;
//     one that sets neither keeps the port of r.Host. A port equal to the scheme's default is
//     left out of Location. The query string is kept; status 302 unless set.
//   - path modifiers (redirect and rewrite alike): Full replaces the path; Prefix replaces the part
//     the rule's PREFIX match matched, keeping the rest, with exactly one slash at the join and
//     "/" for an empty result.
//   - backend choice: by weight, from a random number the caller supplies.
//   - retry: listed codes, and failed attempts (status 0), when attempts > 0.

package route

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// ModifyHeaders applies m to h in Gateway API order: set, then add, then remove. Names
// case-insensitive: h's keys are expected canonical, as net/http makes them, and any
// non-canonical spelling of a name that is set or removed goes too. m may be nil.
func ModifyHeaders(h http.Header, m *routev1.HeaderModifier) {
	for _, s := range m.GetSet() {
		delFold(h, s.GetName())
		h.Set(s.GetName(), s.GetValue())
	}
	for _, a := range m.GetAdd() {
		h.Add(a.GetName(), a.GetValue())
	}
	for _, name := range m.GetRemove() {
		delFold(h, name)
	}
}

// delFold deletes every key of h equal to name under case folding.
func delFold(h http.Header, name string) {
	h.Del(name)
	for k := range h {
		if strings.EqualFold(k, name) {
			delete(h, k)
		}
	}
}

// RedirectTarget returns the status code and Location for a RequestRedirect filter applied to r
// matched by rule match m (nil: PREFIX "/").
//
// The request's scheme is r.URL.Scheme when the request was in absolute form, else "https" when
// r.TLS is set, else "http"; a waypoint that terminates mTLS itself should hand in a request whose
// TLS field reflects what the client asked for. The request's host and port come from r.Host (or
// r.URL.Host when r.Host is empty). Port rules, from the Gateway API: an explicit port wins; else a
// redirect that sets a scheme uses that scheme's well-known port (even when the scheme is the
// request's own); else the port of r.Host is kept. A port equal to the scheme's default is omitted.
// red may be nil: a plain 302 to the same URL.
func RedirectTarget(r *http.Request, m *routev1.Match, red *routev1.Redirect) (int, string) {
	scheme := requestScheme(r)
	hostport := r.Host
	if hostport == "" && r.URL != nil {
		hostport = r.URL.Host
	}
	host, port := splitHostPort(hostport)

	if red.GetScheme() != "" {
		scheme = strings.ToLower(red.GetScheme())
		port = ""
	}
	if red.GetHostname() != "" {
		host = red.GetHostname()
	}
	if red.GetPort() != 0 {
		port = strconv.FormatUint(uint64(red.GetPort()), 10)
	}
	if port == defaultPort(scheme) {
		port = ""
	}

	u := url.URL{Scheme: scheme, Host: joinHostPort(host, port)}
	if r.URL != nil {
		u.RawQuery = r.URL.RawQuery
		u.Path, u.RawPath = r.URL.Path, r.URL.RawPath
	}
	if p, ok := modifyPath(requestPath(r), m, red.GetPath()); ok {
		u.Path, u.RawPath = p, ""
	}
	if u.Path == "" {
		u.Path = "/"
	}

	code := int(red.GetStatusCode())
	if code == 0 {
		code = http.StatusFound
	}
	return code, u.String()
}

// Rewrite applies a URLRewrite filter to r in place: r.URL.Path (with r.URL.RawPath cleared) when
// rw has a path modifier, by the same rules as RedirectTarget; r.Host when rw sets a hostname. It
// leaves r.URL.Host alone, which a proxy uses as the address to dial. rw may be nil.
func Rewrite(r *http.Request, m *routev1.Match, rw *routev1.Rewrite) {
	if p, ok := modifyPath(requestPath(r), m, rw.GetPath()); ok {
		r.URL.Path, r.URL.RawPath = p, ""
	}
	if rw.GetHostname() != "" {
		r.Host = rw.GetHostname()
	}
}

// modifyPath returns the path pm makes of path, matched by m, and whether pm changes anything.
// A Prefix modifier on a path that the match's prefix does not cover (which Select and Compile
// rule out) leaves the path alone.
func modifyPath(path string, m *routev1.Match, pm *routev1.PathModifier) (string, bool) {
	switch k := pm.GetKind().(type) {
	case *routev1.PathModifier_Full:
		if k.Full == "" {
			return "/", true
		}
		return k.Full, true
	case *routev1.PathModifier_Prefix:
		pmatch := m.GetPath()
		if pmatch.GetKind() != routev1.PathMatch_PREFIX {
			return path, false
		}
		prefix := "/"
		if pmatch != nil {
			prefix = pmatch.GetValue()
		}
		return replacePrefix(path, prefix, k.Prefix)
	}
	return path, false
}

// replacePrefix replaces prefix (a PREFIX match value, trailing slash ignored) of path with repl,
// keeping the rest of the path, with exactly one slash where they join:
//
//	/foo/bar, /foo, /xyz -> /xyz/bar     /foo/, /foo, /xyz -> /xyz/
//	/foo/bar, /foo, ""   -> /bar         /foo,  /foo, ""   -> /
//	/foo/bar, /foo, /    -> /bar         /foo,  /foo, /    -> /
//	/bar,     /,    /xyz -> /xyz/bar     /,     /,    /xyz -> /xyz
func replacePrefix(path, prefix, repl string) (string, bool) {
	p := strings.TrimRight(prefix, "/")
	if !hasPathPrefix(path, p) {
		return path, false
	}
	rest := path[len(p):]
	if p == "" && rest == "/" {
		// The root prefix matched all of "/": nothing remains.
		rest = ""
	}
	out := strings.TrimRight(repl, "/")
	if rest != "" {
		out += "/" + strings.TrimLeft(rest, "/")
	}
	if out == "" {
		out = "/"
	} else if out[0] != '/' {
		out = "/" + out
	}
	return out, true
}

func requestScheme(r *http.Request) string {
	if r.URL != nil && r.URL.Scheme != "" {
		return strings.ToLower(r.URL.Scheme)
	}
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http":
		return "80"
	case "https":
		return "443"
	}
	return ""
}

// splitHostPort splits "host", "host:port", "[v6]" or "[v6]:port" into a host (without brackets)
// and a port ("" when absent).
func splitHostPort(hostport string) (host, port string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), ""
}

func joinHostPort(host, port string) string {
	if port != "" {
		return net.JoinHostPort(host, port)
	}
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// PickBackend chooses a backend by weight, with n a uniformly random number in [0, total weight)
// supplied by the caller (so tests are deterministic); nil when there are no backends or the
// weights sum to 0. A weight-0 backend is never chosen. The backend returned may have an empty
// Service (an unresolved reference), which the caller answers with 500. An n that returns a value
// out of range is reduced modulo the total; a nil n uses math/rand/v2.
func PickBackend(bs []*routev1.Backend, n func(total uint64) uint64) *routev1.Backend {
	var total uint64
	for _, b := range bs {
		total += uint64(b.GetWeight())
	}
	if total == 0 {
		return nil
	}
	if n == nil {
		n = rand.Uint64N
	}
	x := n(total) % total
	for _, b := range bs {
		w := uint64(b.GetWeight())
		if x < w {
			return b
		}
		x -= w
	}
	return nil // unreachable: x < total
}

// Retryable reports whether a response status (or, for status 0, a failed attempt with no
// response) should be retried under rt: codes listed; status 0 (connection failure) always
// retryable when rt has attempts>0. rt may be nil (no retries). Counting attempts and waiting the
// backoff are the caller's.
func Retryable(rt *routev1.Retry, status int) bool {
	if rt.GetAttempts() == 0 || status < 0 {
		return false
	}
	return status == 0 || slices.Contains(rt.GetCodes(), uint32(status))
}
