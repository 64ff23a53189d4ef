package model

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// GRPCRoutes attached to Services are translated beside HTTPRoutes (httproutes.go), with which
// they share attachment, backends (ReferenceGrants from kind GRPCRoute), filters and reporting: a
// GRPCRoute's filters (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef)
// and backendRefs are an HTTPRoute's under other type names. What is a GRPCRoute's own is its
// match, translated to a match on the request path (gRPC's /<service>/<method>), its precedence,
// and the protocol of the ports it is attached to.

// flattenGRPC translates the rules of GRPCRoute r, one Rule per match, without what depends on
// the parent (ports, consumer namespace). A GRPCRoute rule has no timeouts or retries.
func (idx *gammaIndex) flattenGRPC(r meshRoute, rules []gwv1.GRPCRouteRule) []gammaRule {
	var out []gammaRule
	for i, rule := range rules {
		backends := make([]gwv1.HTTPBackendRef, 0, len(rule.BackendRefs))
		for _, b := range rule.BackendRefs {
			backends = append(backends, gwv1.HTTPBackendRef{BackendRef: b.BackendRef, Filters: httpFilters(b.Filters)})
		}
		base, where := idx.ruleBase(r, i, rule.Name, httpFilters(rule.Filters), backends)
		base.Session = idx.session(r, where, rule.SessionPersistence)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.GRPCRouteMatch{{}}
		}
		for j, m := range matches {
			match, service, method, ok := idx.grpcMatch(r, fmt.Sprintf("%s match %d", where, j), m)
			if !ok {
				continue // a match that cannot be translated matches nothing
			}
			rule := proto.Clone(base).(*routev1.Rule)
			rule.Match = match
			out = append(out, gammaRule{rule: rule, route: r, ruleIdx: i, matchIdx: j, service: service, method: method})
		}
	}
	return out
}

// grpcMatch translates m to a match on the request path, "/<service>/<method>" in gRPC, and
// returns the number of characters of its service and of its method, which rank it:
//
//	no method match                     PREFIX "/"
//	Exact, service S and method M       EXACT "/S/M"
//	Exact, service S only               PREFIX "/S" (whole segments: every method of S)
//	Exact, method M only                REGEX "/[^/]+/M" (M quoted)
//	RegularExpression S and M           REGEX "/(S)/(M)", an empty part "[^/]+" (one segment)
//
// The waypoint anchors a path expression at both ends. A method match naming neither a service
// nor a method (the CRD rejects it), an Exact value with a "/" (likewise), an unknown type or an
// expression that does not parse is reported and the match ignored.
func (idx *gammaIndex) grpcMatch(r meshRoute, where string, m gwv1.GRPCRouteMatch) (*routev1.Match, int, int, bool) {
	out := &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: "/"}}
	var service, method string
	if mm := m.Method; mm != nil {
		service, method = deref(mm.Service), deref(mm.Method)
		kind := gwv1.GRPCMethodMatchExact
		if mm.Type != nil {
			kind = *mm.Type
		}
		switch {
		case service == "" && method == "":
			idx.report(r, ReasonInvalidValue, "%s: the method match names neither a service nor a method; the match is ignored", where)
			return nil, 0, 0, false
		case kind == gwv1.GRPCMethodMatchExact:
			if strings.Contains(service, "/") || strings.Contains(method, "/") {
				idx.report(r, ReasonInvalidValue, "%s: service %q or method %q contains \"/\"; the match is ignored", where, service, method)
				return nil, 0, 0, false
			}
			switch {
			case method == "":
				out.Path.Value = "/" + service
			case service == "":
				out.Path = &routev1.PathMatch{Kind: routev1.PathMatch_REGEX, Value: "/[^/]+/" + regexp.QuoteMeta(method)}
			default:
				out.Path = &routev1.PathMatch{Kind: routev1.PathMatch_EXACT, Value: "/" + service + "/" + method}
			}
		case kind == gwv1.GRPCMethodMatchRegularExpression:
			if service != "" && !idx.validRegex(r, where+" service", service) ||
				method != "" && !idx.validRegex(r, where+" method", method) {
				return nil, 0, 0, false
			}
			out.Path = &routev1.PathMatch{Kind: routev1.PathMatch_REGEX,
				Value: "/(" + cmp.Or(service, "[^/]+") + ")/(" + cmp.Or(method, "[^/]+") + ")"}
		default:
			idx.report(r, ReasonUnsupportedValue, "%s: method match type %q is not supported; the match is ignored", where, kind)
			return nil, 0, 0, false
		}
	}
	headers := make([]gwv1.HTTPHeaderMatch, 0, len(m.Headers))
	for _, h := range m.Headers {
		hm := gwv1.HTTPHeaderMatch{Name: gwv1.HTTPHeaderName(h.Name), Value: h.Value}
		if h.Type != nil {
			hm.Type = new(gwv1.HeaderMatchType(*h.Type))
		}
		headers = append(headers, hm)
	}
	var ok bool
	if out.Headers, ok = idx.headerMatches(r, where, headers); !ok {
		return nil, 0, 0, false
	}
	return out, len(service), len(method), true
}

// httpFilters returns fs as HTTPRoute filters, which have the same types and fields (and more).
func httpFilters(fs []gwv1.GRPCRouteFilter) []gwv1.HTTPRouteFilter {
	if fs == nil {
		return nil
	}
	out := make([]gwv1.HTTPRouteFilter, 0, len(fs))
	for _, f := range fs {
		out = append(out, gwv1.HTTPRouteFilter{Type: gwv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier: f.RequestHeaderModifier, ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror: f.RequestMirror, ExtensionRef: f.ExtensionRef})
	}
	return out
}

// compareGRPCRules orders GRPCRoute rules by the Gateway API's GRPCRoute precedence: more
// characters in the matching service, then in the matching method (an expression counts as
// written), then more header matches; then the older route, "<namespace>/<name>" alphabetically,
// rule order and match order. Hostnames do not rank: a Service's routes have none that matter.
func compareGRPCRules(a, b gammaRule) int {
	return cmp.Or(
		cmp.Compare(b.service, a.service),
		cmp.Compare(b.method, a.method),
		cmp.Compare(len(b.rule.GetMatch().GetHeaders()), len(a.rule.GetMatch().GetHeaders())),
		compareRouteOrder(a, b))
}

// orderRules puts the rules of one Service in precedence order. The HTTPRoute rules are ordered
// by HTTPRoute precedence (compareGammaRules) and the GRPCRoute rules by GRPCRoute precedence
// (compareGRPCRules), which the specification forbids mixing. A Service normally has routes of
// one kind; when it has both (status accepts both, and Istio merges them), the two ordered lists
// are merged, each keeping its order: the next rule is the first of the two lists' heads by
// HTTPRoute precedence, which reads a GRPCRoute rule's translated path match, so that, say, a
// GRPCRoute's "/pkg.Svc/Method" goes before an HTTPRoute's catch-all "/" and an HTTPRoute's
// "/healthz" before a GRPCRoute's catch-all. On a complete tie the HTTPRoute rule goes first.
func orderRules(rules []gammaRule) []gammaRule {
	var http, grpc []gammaRule
	for _, r := range rules {
		if r.route.kind == KindGRPCRoute {
			grpc = append(grpc, r)
		} else {
			http = append(http, r)
		}
	}
	slices.SortStableFunc(http, compareGammaRules)
	slices.SortStableFunc(grpc, compareGRPCRules)
	out := make([]gammaRule, 0, len(rules))
	for len(http) > 0 && len(grpc) > 0 {
		if compareGammaRules(http[0], grpc[0]) <= 0 {
			out, http = append(out, http[0]), http[1:]
		} else {
			out, grpc = append(out, grpc[0]), grpc[1:]
		}
	}
	return append(append(out, http...), grpc...)
}

// grpcProtocols marks "http2" (gRPC is HTTP/2) the TCP ports of parent p a GRPCRoute is attached
// to (all of them when p names none) that declare neither a known protocol nor an appProtocol:
// a port's own declaration wins, and an appProtocol unknown here (https, say) keeps the port
// sniffed rather than read as cleartext HTTP/2 (see portProtocols).
func grpcProtocols(protocols map[uint32]string, p gammaParent) map[uint32]string {
	for _, sp := range p.svc.Spec.Ports {
		port := uint32(sp.Port)
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP || sp.AppProtocol != nil || protocols[port] != "" ||
			p.ports != nil && !slices.Contains(p.ports, port) {
			continue
		}
		if protocols == nil {
			protocols = map[uint32]string{}
		}
		protocols[port] = "http2"
	}
	return protocols
}
