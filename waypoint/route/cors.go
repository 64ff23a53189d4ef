// cors.go keeps the rules of the CORS filter (Gateway API HTTPCORSFilter), as the waypoint
// applies it:
//   - A request without Origin is left alone.
//   - A preflight is an OPTIONS request with Origin and Access-Control-Request-Method. The waypoint
//     answers it itself, 200, and never forwards it: with the CORS headers when its origin is
//     allowed, without any when it is not (the browser then refuses the actual request).
//   - Origins: the scheme must be the same; a port left out is the scheme's default (http 80,
//     https 443), so "https://a.com" and "https://a.com:443" are one origin; hosts compare
//     case-insensitively; a "*" leading an allowed host stands for one or more labels on its left,
//     greedily ("https://*.bar.com" allows https://x.www.bar.com, not https://bar.com), and a host
//     "*" for any host; the origin "*" alone allows every Origin, even one that is not
//     <scheme>://<host>[:<port>] ("null"). A client's Origin with a "*" in its host is no origin.
//   - Access-Control-Allow-Origin echoes the request's Origin, never "*": the Gateway API allows
//     either without credentials and requires the echo with them.
//   - Preflight answers only: Access-Control-Allow-Methods and -Allow-Headers are the configured
//     lists joined with ", ". For "*", with credentials (where browsers take "*" literally), they
//     echo the request's Access-Control-Request-Method and -Request-Headers; without, they are
//     "*"; either way Allow-Headers is left out when the request names no header.
//     Access-Control-Max-Age when above 0.
//   - Preflight answers and actual responses: Access-Control-Expose-Headers, the configured list
//     (a "*" in it dropped with credentials, where browsers would not take it as a wildcard), and
//     Access-Control-Allow-Credentials: true when credentials are allowed.
//   - Vary: Origin goes with every answer to a request that has an Origin, allowed or not, since
//     the answer depends on it. Vary is not a CORS header: a refused origin gets no Access-Control-*.
//   - The response to an actual request with an allowed Origin gets the headers set (the
//     backend's own values for them replaced); a refused one gets none and the backend's are kept.

package route

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// CORS headers.
const (
	hdrOrigin           = "Origin"
	hdrRequestMethod    = "Access-Control-Request-Method"
	hdrRequestHeaders   = "Access-Control-Request-Headers"
	hdrAllowOrigin      = "Access-Control-Allow-Origin"
	hdrAllowMethods     = "Access-Control-Allow-Methods"
	hdrAllowHeaders     = "Access-Control-Allow-Headers"
	hdrExposeHeaders    = "Access-Control-Expose-Headers"
	hdrAllowCredentials = "Access-Control-Allow-Credentials"
	hdrMaxAge           = "Access-Control-Max-Age"
	hdrVary             = "Vary"
)

// CORS is a compiled CORS filter. Compiling is cheap (the allowed origins are split in place, in
// one slice), so a caller without a place to keep one may compile it per request. Immutable.
type CORS struct {
	c         *routev1.Cors
	anyOrigin bool
	origins   []origin
}

// origin is an origin split into its parts. port is the scheme's default when the origin gives
// none (0 for a scheme without a default). In an allowed origin, a host "*" is any host and a host
// "*.<suffix>" any host that ends with ".<suffix>" and is longer.
type origin struct {
	scheme, host string
	port         int
}

// CompileCORS compiles c (nil: a filter that allows no origin). It returns an error naming every
// allowed origin that is not "*" nor "<scheme>://<host>[:<port>]" with scheme http or https, a
// host of DNS labels possibly led by "*." (or "*" alone) and a port from 1 to 65535. The policy
// returned with an error is usable: an origin that does not parse allows nothing.
func CompileCORS(c *routev1.Cors) (*CORS, error) {
	out := &CORS{c: c}
	var bad []string
	for _, s := range c.GetAllowOrigins() {
		if s == "*" {
			out.anyOrigin = true
			continue
		}
		o, ok := parseAllowedOrigin(s)
		if !ok {
			bad = append(bad, strconv.Quote(s))
			continue
		}
		out.origins = append(out.origins, o)
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("CORS allowed origins %s: not <scheme>://<host>[:<port>] with scheme http or https", strings.Join(bad, ", "))
	}
	return out, nil
}

// Preflight reports whether r is a CORS preflight request, which the caller answers itself, 200,
// with the headers m makes (on top of the answer's others), instead of forwarding it: the CORS
// headers set when r's origin is allowed, and Vary: Origin added. m is nil when r is not a
// preflight.
func (c *CORS) Preflight(r *http.Request) (answer bool, m *routev1.HeaderModifier) {
	o := r.Header.Get(hdrOrigin)
	method := r.Header.Get(hdrRequestMethod)
	if r.Method != http.MethodOptions || o == "" || method == "" {
		return false, nil
	}
	m = &routev1.HeaderModifier{Add: []*routev1.Header{{Name: hdrVary, Value: hdrOrigin}}}
	if !c.Allows(o) {
		return true, m
	}
	set := func(name, value string) { m.Set = append(m.Set, &routev1.Header{Name: name, Value: value}) }
	set(hdrAllowOrigin, o)
	cred := c.c.GetAllowCredentials()
	switch ms := c.c.GetAllowMethods(); {
	case slices.Contains(ms, "*") && cred:
		set(hdrAllowMethods, method)
	case slices.Contains(ms, "*"):
		set(hdrAllowMethods, "*")
	case len(ms) > 0:
		set(hdrAllowMethods, strings.Join(ms, ", "))
	}
	requested := strings.Join(r.Header.Values(hdrRequestHeaders), ", ")
	switch hs := c.c.GetAllowHeaders(); {
	case slices.Contains(hs, "*") && strings.TrimSpace(requested) == "":
	case slices.Contains(hs, "*") && cred:
		set(hdrAllowHeaders, requested)
	case slices.Contains(hs, "*"):
		set(hdrAllowHeaders, "*")
	case len(hs) > 0:
		set(hdrAllowHeaders, strings.Join(hs, ", "))
	}
	if e := c.expose(); e != "" {
		set(hdrExposeHeaders, e)
	}
	if s := c.c.GetMaxAgeSeconds(); s > 0 {
		set(hdrMaxAge, strconv.FormatUint(uint64(s), 10))
	}
	if cred {
		set(hdrAllowCredentials, "true")
	}
	return true, m
}

// Response returns what to do to the headers of the response to r, an actual request (one
// Preflight does not answer): with an allowed Origin, set Access-Control-Allow-Origin,
// -Allow-Credentials and -Expose-Headers; with any Origin, add Vary: Origin. nil when r has no
// Origin.
func (c *CORS) Response(r *http.Request) *routev1.HeaderModifier {
	o := r.Header.Get(hdrOrigin)
	if o == "" {
		return nil
	}
	m := &routev1.HeaderModifier{Add: []*routev1.Header{{Name: hdrVary, Value: hdrOrigin}}}
	if !c.Allows(o) {
		return m
	}
	set := func(name, value string) { m.Set = append(m.Set, &routev1.Header{Name: name, Value: value}) }
	set(hdrAllowOrigin, o)
	if c.c.GetAllowCredentials() {
		set(hdrAllowCredentials, "true")
	}
	if e := c.expose(); e != "" {
		set(hdrExposeHeaders, e)
	}
	return m
}

// Allows reports whether the request origin o (an Origin header's value) is allowed.
func (c *CORS) Allows(o string) bool {
	if c.anyOrigin {
		return true
	}
	ro, ok := parseOrigin(o)
	if !ok || strings.Contains(ro.host, "*") { // a wildcard is the configuration's, not a client's
		return false
	}
	return slices.ContainsFunc(c.origins, func(a origin) bool { return a.allows(ro) })
}

// expose is the value of Access-Control-Expose-Headers, "" for none.
func (c *CORS) expose() string {
	hs := c.c.GetExposeHeaders()
	if c.c.GetAllowCredentials() && slices.Contains(hs, "*") {
		hs = slices.DeleteFunc(slices.Clone(hs), func(h string) bool { return h == "*" })
	}
	return strings.Join(hs, ", ")
}

// allows reports whether the allowed origin a allows the request origin o.
func (a origin) allows(o origin) bool {
	if !strings.EqualFold(a.scheme, o.scheme) || a.port != o.port {
		return false
	}
	switch {
	case a.host == "*":
		return true
	case strings.HasPrefix(a.host, "*."):
		suffix := a.host[1:] // ".bar.com"
		return len(o.host) > len(suffix) && strings.EqualFold(o.host[len(o.host)-len(suffix):], suffix)
	}
	return strings.EqualFold(a.host, o.host)
}

// parseOrigin splits a request's origin, "<scheme>://<host>[:<port>]" (an IPv6 host in brackets);
// false when o is not one (such as "null").
func parseOrigin(o string) (origin, bool) {
	scheme, hostport, ok := strings.Cut(o, "://")
	if !ok || scheme == "" || hostport == "" || strings.ContainsAny(hostport, "/?#@ ") {
		return origin{}, false
	}
	out := origin{scheme: scheme, host: hostport, port: schemePort(scheme)}
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.HasSuffix(hostport, "]") {
		p, err := parsePort(hostport[i+1:])
		if err != nil {
			return origin{}, false
		}
		out.host, out.port = hostport[:i], p
	}
	return out, out.host != ""
}

// parseAllowedOrigin parses an allowed origin other than "*", as the Gateway API's CORSOrigin
// defines it.
func parseAllowedOrigin(s string) (origin, bool) {
	o, ok := parseOrigin(s)
	if !ok || !strings.EqualFold(o.scheme, "http") && !strings.EqualFold(o.scheme, "https") {
		return origin{}, false
	}
	if o.host == "*" {
		return o, true
	}
	labels := strings.Split(strings.TrimPrefix(o.host, "*."), ".")
	for _, l := range labels {
		if l == "" || strings.IndexFunc(l, func(c rune) bool {
			return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-')
		}) >= 0 {
			return origin{}, false
		}
	}
	return o, true
}

func schemePort(scheme string) int {
	p, _ := strconv.Atoi(defaultPort(strings.ToLower(scheme)))
	return p
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a port")
	}
	p, _ := strconv.Atoi(s)
	if p < 1 || p > 65535 {
		return 0, errors.New("not a port")
	}
	return p, nil
}
