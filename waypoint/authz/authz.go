// Package authz decides whether the waypoint lets a request through: Istio's AuthorizationPolicy
// at L7, for the policies whose targetRefs name the waypoint or the Service a request is for.
//
// Rules kept here (Istio's semantics):
//   - Any matching DENY denies. Then, if any ALLOW policy applies, the request must match one of
//     them; otherwise it is allowed. AUDIT and dry-run policies are evaluated and reported, never
//     enforced. An ALLOW with no rules matches nothing, so it denies everything.
//   - A policy matches when any rule does; a rule when any of its from does, any of its to does
//     and every when holds (an absent list holds); a source, operation or condition when every
//     field set matches and no not-field does.
//   - Strings use Istio's syntax: "*" any non-empty value, "x*" prefix, "*x" suffix, otherwise
//     exact. Hosts are case-insensitive and match with or without the port. A condition key this
//     package does not know never matches (istiod-lite reports it on the policy).
//   - A TCP stream has no HTTP attributes (hosts, methods, paths, request principals, request
//     headers, JWT claims). As in Istio, a DENY rule is applied to it without them, so it denies
//     more, and an ALLOW rule that names one never matches it, so it allows less: a client cannot
//     escape an HTTP rule by not speaking HTTP.
//
// It does no I/O; it is a pure function of the policies and the request.
package authz

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// Request is what policies read of a request.
type Request struct {
	// Principal is the client's identity, "<trust domain>/ns/<ns>/sa/<sa>", from its certificate.
	Principal string
	Namespace string
	// SourceIP is the client's address; RemoteIP the original client's (X-Forwarded-For's first
	// entry) or SourceIP.
	SourceIP, RemoteIP netip.Addr
	// RequestPrincipal is "<iss>/<sub>" of the request's valid JWT, "" without one; Claims its
	// claims.
	RequestPrincipal string
	Claims           map[string]any
	Host, Method     string
	Path             string
	Port             uint16
	Header           http.Header
	// TCP marks a stream passed through as TCP, which has none of the HTTP attributes.
	TCP bool
}

// Decision is the outcome for one request.
type Decision struct {
	Allow bool
	// Policy names the deciding policy, "<namespace>/<name>", when one decided.
	Policy string
	// Reason says why, for the access log.
	Reason string
	// Audited lists the AUDIT and dry-run policies that matched.
	Audited []string
}

// Check applies policies to r.
func Check(policies []*routev1.Policy, r *Request) Decision {
	var d Decision
	anyAllow, allowed := false, ""
	for _, p := range policies {
		name := p.Namespace + "/" + p.Name
		m := matches(p, r)
		if p.DryRun || p.Action == routev1.Policy_AUDIT {
			if m {
				d.Audited = append(d.Audited, name)
			}
			continue
		}
		switch p.Action {
		case routev1.Policy_DENY:
			if m {
				d.Policy, d.Reason = name, "denied by policy"
				return d
			}
		case routev1.Policy_ALLOW:
			anyAllow = true
			if m && allowed == "" {
				allowed = name
			}
		}
	}
	switch {
	case !anyAllow:
		d.Allow, d.Reason = true, "no policy denies"
	case allowed != "":
		d.Allow, d.Policy, d.Reason = true, allowed, "allowed by policy"
	default:
		d.Reason = "no ALLOW policy matches"
	}
	return d
}

func matches(p *routev1.Policy, r *Request) bool {
	// On a TCP stream an ALLOW (or AUDIT) rule naming an HTTP attribute never matches; a DENY
	// rule matches without them.
	noHTTP := r.TCP && p.Action == routev1.Policy_DENY
	for _, rule := range p.Rules {
		if r.TCP && !noHTTP && namesHTTP(rule) {
			continue
		}
		if ruleMatches(rule, r, noHTTP) {
			return true
		}
	}
	return false
}

// ruleMatches evaluates a rule; with noHTTP, its HTTP attributes hold whatever they say.
func ruleMatches(rule *routev1.PolicyRule, r *Request, noHTTP bool) bool {
	if len(rule.From) > 0 && !slices.ContainsFunc(rule.From, func(s *routev1.Source) bool { return sourceMatches(s, r, noHTTP) }) {
		return false
	}
	if len(rule.To) > 0 && !slices.ContainsFunc(rule.To, func(o *routev1.Operation) bool { return operationMatches(o, r, noHTTP) }) {
		return false
	}
	for _, c := range rule.When {
		if !(noHTTP && httpCondition(c.Key)) && !conditionHolds(c, r) {
			return false
		}
	}
	return true
}

// namesHTTP reports whether a rule names an attribute only HTTP requests have.
func namesHTTP(rule *routev1.PolicyRule) bool {
	for _, s := range rule.From {
		if len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
			return true
		}
	}
	for _, o := range rule.To {
		if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
			return true
		}
	}
	return slices.ContainsFunc(rule.When, func(c *routev1.Condition) bool { return httpCondition(c.Key) })
}

// httpCondition reports whether a when key reads the HTTP request (its headers or JWT).
func httpCondition(key string) bool { return strings.HasPrefix(key, "request.") }

// field checks one positive and one negative list against the request's values: the positive
// list, when set, must match one of the values; the negative must match none.
func field(pos, neg []string, match func(pattern string) bool) bool {
	if len(pos) > 0 && !slices.ContainsFunc(pos, match) {
		return false
	}
	return !slices.ContainsFunc(neg, match)
}

func sourceMatches(s *routev1.Source, r *Request, noHTTP bool) bool {
	return field(s.Principals, s.NotPrincipals, str(r.Principal)) &&
		(noHTTP || field(s.RequestPrincipals, s.NotRequestPrincipals, str(r.RequestPrincipal))) &&
		field(s.Namespaces, s.NotNamespaces, str(r.Namespace)) &&
		field(s.IpBlocks, s.NotIpBlocks, cidr(r.SourceIP)) &&
		field(s.RemoteIpBlocks, s.NotRemoteIpBlocks, cidr(r.RemoteIP))
}

func operationMatches(o *routev1.Operation, r *Request, noHTTP bool) bool {
	port := strconv.Itoa(int(r.Port))
	if !field(o.Ports, o.NotPorts, func(p string) bool { return p == port }) {
		return false
	}
	return noHTTP || field(o.Hosts, o.NotHosts, host(r.Host)) &&
		field(o.Methods, o.NotMethods, str(r.Method)) &&
		field(o.Paths, o.NotPaths, str(r.Path))
}

// conditionHolds evaluates a when clause.
func conditionHolds(c *routev1.Condition, r *Request) bool {
	var values []string
	key := c.Key
	switch {
	case key == "source.ip":
		return field(c.Values, c.NotValues, cidr(r.SourceIP))
	case key == "remote.ip":
		return field(c.Values, c.NotValues, cidr(r.RemoteIP))
	case key == "source.namespace":
		values = []string{r.Namespace}
	case key == "source.principal":
		values = []string{r.Principal}
	case key == "request.auth.principal":
		values = []string{r.RequestPrincipal}
	case key == "destination.port":
		values = []string{strconv.Itoa(int(r.Port))}
	case key == "request.auth.audiences":
		values = claimStrings(r.Claims["aud"])
	case key == "request.auth.presenter":
		values = claimStrings(r.Claims["azp"])
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		values = r.Header.Values(key[len("request.headers[") : len(key)-1])
	case strings.HasPrefix(key, "request.auth.claims[") && strings.HasSuffix(key, "]"):
		values = claimStrings(claimAt(r.Claims, strings.Split(key[len("request.auth.claims["):len(key)-1], "][")))
	default:
		return false
	}
	any := func(pattern string) bool {
		return slices.ContainsFunc(values, func(v string) bool { return str(v)(pattern) })
	}
	return field(c.Values, c.NotValues, any)
}

// claimAt follows a path of claim names into nested objects.
func claimAt(claims map[string]any, path []string) any {
	var cur any = claims
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func claimStrings(v any) []string {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return []string{x}
	case []string:
		return x
	case []any:
		var out []string
		for _, e := range x {
			out = append(out, claimStrings(e)...)
		}
		return out
	default:
		return []string{fmt.Sprint(x)}
	}
}

// str returns a matcher of value against an Istio string pattern.
func str(value string) func(string) bool {
	return func(p string) bool { return Match(p, value) }
}

// Match reports whether value matches pattern in Istio's syntax.
func Match(pattern, value string) bool {
	switch {
	case pattern == "*":
		return value != ""
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(value, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(value, pattern[:len(pattern)-1])
	}
	return value == pattern
}

func host(h string) func(string) bool {
	h = strings.ToLower(h)
	bare := h
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		bare = h[:i]
	}
	return func(p string) bool {
		p = strings.ToLower(p)
		return Match(p, h) || Match(p, bare)
	}
}

func cidr(a netip.Addr) func(string) bool {
	return func(s string) bool {
		if !a.IsValid() {
			return false
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			return p.Contains(a)
		}
		b, err := netip.ParseAddr(s)
		return err == nil && b == a
	}
}
