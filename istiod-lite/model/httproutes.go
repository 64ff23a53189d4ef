package model

import (
	"cmp"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/routes"
)

// serviceRoutes translates the HTTPRoutes and GRPCRoutes (grpcroutes.go) attached to Services
// (GAMMA: a parentRef of group "" and kind Service) into one ServiceRoutes per Service of in, keyed
// "<namespace>/<hostname>". Every Service gets one, with the protocols of its ports and possibly
// no rules: the xDS server sends a waypoint only those of the Services bound to it.
//
// Attachment follows routes.Check, so that what a waypoint does agrees with the status written:
// the Service must exist, a parentRef port must be one of its ports, and a sectionName is not
// accepted. Unresolved backends are already reported by routeProblems (ResolvedRefs); what is
// reported here is what only translation finds: filters it cannot apply, durations and regular
// expressions that do not parse, backends without a port.
func (t *translator) serviceRoutes(in Input) map[string]*routev1.ServiceRoutes {
	idx := &gammaIndex{t: t, services: make(map[string]*corev1.Service, len(in.Services)), grants: in.ReferenceGrants}
	for _, s := range in.Services {
		idx.services[s.Namespace+"/"+s.Name] = s
	}
	bySvc := map[string][]gammaRule{}         // "<namespace>/<name>" of the Service
	grpcParents := map[string][]gammaParent{} // the same, of GRPCRoutes: their ports carry gRPC
	attach := func(r meshRoute, parents []gammaParent, flat []gammaRule) {
		for _, p := range parents {
			key := p.svc.Namespace + "/" + p.svc.Name
			for _, f := range flat {
				f.rule = proto.Clone(f.rule).(*routev1.Rule)
				f.rule.Ports = p.ports
				if p.svc.Namespace != r.obj.GetNamespace() {
					f.rule.ConsumerNamespace = r.obj.GetNamespace()
				}
				bySvc[key] = append(bySvc[key], f)
			}
		}
	}
	// A route without parents is not the mesh's, or not accepted: nothing to report here.
	for _, r := range in.HTTPRoutes {
		mr := meshRoute{kind: KindHTTPRoute, obj: r, spec: &r.Spec.CommonRouteSpec}
		if parents := idx.parents(mr); len(parents) > 0 {
			attach(mr, parents, idx.flattenHTTP(mr, r.Spec.Rules))
		}
	}
	for _, r := range in.GRPCRoutes {
		mr := meshRoute{kind: KindGRPCRoute, obj: r, spec: &r.Spec.CommonRouteSpec}
		if parents := idx.parents(mr); len(parents) > 0 {
			attach(mr, parents, idx.flattenGRPC(mr, r.Spec.Rules))
			for _, p := range parents {
				key := p.svc.Namespace + "/" + p.svc.Name
				grpcParents[key] = append(grpcParents[key], p)
			}
		}
	}
	out := make(map[string]*routev1.ServiceRoutes, len(in.Services))
	for _, s := range in.Services {
		key := s.Namespace + "/" + s.Name
		sr := &routev1.ServiceRoutes{Namespace: s.Namespace, Hostname: t.hostname(s.Name, s.Namespace), Protocols: portProtocols(s)}
		for _, p := range grpcParents[key] {
			sr.Protocols = grpcProtocols(sr.Protocols, p)
		}
		for _, r := range orderRules(bySvc[key]) {
			sr.Rules = append(sr.Rules, r.rule)
		}
		out[s.Namespace+"/"+sr.Hostname] = sr
	}
	return out
}

// portProtocols returns the application protocol of each TCP port of s that declares a known one.
// An appProtocol decides alone, as in Istio: one that is not known here leaves the port to be
// sniffed rather than trusting a name that says otherwise (appProtocol https, name http-web).
func portProtocols(s *corev1.Service) map[uint32]string {
	var out map[uint32]string
	for _, p := range s.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		var proto string
		if p.AppProtocol != nil {
			switch strings.ToLower(*p.AppProtocol) {
			case "http", "grpc-web":
				proto = "http"
			case "http2", "grpc", "kubernetes.io/h2c":
				proto = "http2"
			case "tcp":
				proto = "tcp"
			}
		} else {
			name := strings.ToLower(p.Name)
			prefix, _, _ := strings.Cut(name, "-")
			switch {
			case name == "grpc-web" || strings.HasPrefix(name, "grpc-web-"): // gRPC-Web is HTTP/1.1
				proto = "http"
			case prefix == "http":
				proto = "http"
			case prefix == "http2" || prefix == "grpc":
				proto = "http2"
			case prefix == "tcp":
				proto = "tcp"
			}
		}
		if proto != "" {
			if out == nil {
				out = map[uint32]string{}
			}
			out[uint32(p.Port)] = proto
		}
	}
	return out
}

// meshRoute is what translation reads of a route of either kind besides its rules.
type meshRoute struct {
	kind string // KindHTTPRoute or KindGRPCRoute
	obj  metav1.Object
	spec *gwv1.CommonRouteSpec
}

// gammaRule is one match of one route rule, with what orders it among the rules of a Service.
type gammaRule struct {
	rule              *routev1.Rule
	route             meshRoute
	ruleIdx, matchIdx int
	// Of a GRPCRoute's match: the characters of its service and of its method.
	service, method int
}

// compareGammaRules orders rules by the Gateway API's HTTPRoute precedence: an Exact path first,
// then a RegularExpression path (the specification leaves its rank to implementations; here it is
// after Exact and before PathPrefix, a longer expression first), then PathPrefix, a longer prefix
// first; then a method match before none, more header matches, more query parameter matches; then
// the older route, "<namespace>/<name>" alphabetically, rule order and match order.
func compareGammaRules(a, b gammaRule) int {
	am, bm := a.rule.GetMatch(), b.rule.GetMatch()
	return cmp.Or(
		cmp.Compare(pathRank(am.GetPath()), pathRank(bm.GetPath())),
		cmp.Compare(pathLength(bm.GetPath()), pathLength(am.GetPath())),
		boolCompare(bm.GetMethod() != "", am.GetMethod() != ""),
		cmp.Compare(len(bm.GetHeaders()), len(am.GetHeaders())),
		cmp.Compare(len(bm.GetQueryParams()), len(am.GetQueryParams())),
		compareRouteOrder(a, b))
}

// compareRouteOrder breaks the ties of precedence, as the Gateway API does for every route kind:
// the older route, then "<namespace>/<name>" alphabetically, then rule order and match order.
func compareRouteOrder(a, b gammaRule) int {
	ao, bo := a.route.obj, b.route.obj
	return cmp.Or(
		ao.GetCreationTimestamp().Compare(bo.GetCreationTimestamp().Time),
		cmp.Compare(ao.GetNamespace()+"/"+ao.GetName(), bo.GetNamespace()+"/"+bo.GetName()),
		cmp.Compare(a.ruleIdx, b.ruleIdx),
		cmp.Compare(a.matchIdx, b.matchIdx))
}

func pathRank(p *routev1.PathMatch) int {
	switch p.GetKind() {
	case routev1.PathMatch_EXACT:
		return 0
	case routev1.PathMatch_REGEX:
		return 1
	}
	return 2
}

// pathLength is what orders paths of one rank: two exact paths never both match, so they tie.
func pathLength(p *routev1.PathMatch) int {
	if p.GetKind() == routev1.PathMatch_EXACT {
		return 0
	}
	return len(p.GetValue())
}

// gammaIndex is what translating routes looks up.
type gammaIndex struct {
	t        *translator
	services map[string]*corev1.Service // "<namespace>/<name>"
	grants   []*gwv1.ReferenceGrant
}

// gammaParent is a Service a route is attached to, and the ports it applies to (nil: all).
type gammaParent struct {
	svc   *corev1.Service
	ports []uint32
}

// parents returns the Services r is attached to, in parentRef order; none for a route being
// deleted. Several parentRefs to one Service merge: their ports are joined, and one without a
// port makes the route apply to all.
func (idx *gammaIndex) parents(r meshRoute) []gammaParent {
	if r.obj.GetDeletionTimestamp() != nil {
		return nil
	}
	var out []gammaParent
	all := map[int]bool{}
	for _, ref := range r.spec.ParentRefs {
		if ref.Group == nil || (*ref.Group != "" && *ref.Group != "core") || ref.Kind == nil || *ref.Kind != "Service" ||
			ref.SectionName != nil {
			continue
		}
		ns := r.obj.GetNamespace()
		if ref.Namespace != nil {
			ns = string(*ref.Namespace)
		}
		svc := idx.services[ns+"/"+string(ref.Name)]
		if svc == nil || ref.Port != nil && !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == *ref.Port }) {
			continue
		}
		i := slices.IndexFunc(out, func(p gammaParent) bool { return p.svc == svc })
		if i < 0 {
			i = len(out)
			out = append(out, gammaParent{svc: svc})
		}
		if ref.Port == nil {
			all[i] = true
		} else {
			out[i].ports = append(out[i].ports, uint32(*ref.Port))
		}
	}
	for i := range out {
		if all[i] {
			out[i].ports = nil
		} else {
			slices.Sort(out[i].ports)
			out[i].ports = slices.Compact(out[i].ports)
		}
	}
	return out
}

func (idx *gammaIndex) report(r meshRoute, reason, format string, args ...any) {
	idx.t.report(Problem{Kind: r.kind, Namespace: r.obj.GetNamespace(), Name: r.obj.GetName(), Reason: reason,
		Message: fmt.Sprintf(format, args...)})
}

// ruleBase translates what the i-th rule of r (named name, if not nil) does, the same for every
// route kind: its filters and backends. It returns the rule, without match, and how problems name
// the rule.
func (idx *gammaIndex) ruleBase(r meshRoute, i int, name *gwv1.SectionName, filters []gwv1.HTTPRouteFilter,
	backends []gwv1.HTTPBackendRef) (*routev1.Rule, string) {
	where := fmt.Sprintf("rule %d", i)
	base := &routev1.Rule{Route: r.kind + "/" + r.obj.GetNamespace() + "/" + r.obj.GetName()}
	if name != nil {
		base.Name = string(*name)
		where += fmt.Sprintf(" (%s)", base.Name)
	}
	fs, ok := idx.filters(r, where, filters, false)
	for _, br := range backends {
		b := idx.backend(r, where, br.BackendObjectReference, true)
		b.Weight = 1
		if br.Weight != nil {
			b.Weight = uint32(max(*br.Weight, 0))
		}
		// A backend filter that cannot be applied makes that backend's share answer 500.
		if bfs, bok := idx.filters(r, where+" backend "+string(br.Name), br.Filters, true); bok {
			b.Filters = bfs
		} else {
			b.Service = ""
		}
		base.Backends = append(base.Backends, b)
	}
	if ok {
		base.Filters = fs
	} else {
		base.Backends = nil // the Gateway API's answer to a filter that cannot be applied: 500
	}
	return base, where
}

// flattenHTTP translates the rules of HTTPRoute r, one Rule per match, without what depends on
// the parent (ports, consumer namespace).
func (idx *gammaIndex) flattenHTTP(r meshRoute, rules []gwv1.HTTPRouteRule) []gammaRule {
	var out []gammaRule
	for i, rule := range rules {
		base, where := idx.ruleBase(r, i, rule.Name, rule.Filters, rule.BackendRefs)
		if to := rule.Timeouts; to != nil {
			base.RequestTimeoutMs = idx.millis(r, where+" timeouts.request", to.Request)
			base.BackendRequestTimeoutMs = idx.millis(r, where+" timeouts.backendRequest", to.BackendRequest)
		}
		if rt := rule.Retry; rt != nil {
			base.Retry = &routev1.Retry{BackoffMs: idx.millis(r, where+" retry.backoff", rt.Backoff)}
			for _, c := range rt.Codes {
				base.Retry.Codes = append(base.Retry.Codes, uint32(c))
			}
			if rt.Attempts != nil { // unset: 0, the waypoint's default
				base.Retry.Attempts = uint32(max(*rt.Attempts, 0))
			}
		}
		base.Session = idx.session(r, where, rule.SessionPersistence)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.HTTPRouteMatch{{}}
		}
		for j, m := range matches {
			match, ok := idx.match(r, fmt.Sprintf("%s match %d", where, j), m)
			if !ok {
				continue // a match that cannot be translated matches nothing
			}
			rule := proto.Clone(base).(*routev1.Rule)
			rule.Match = match
			out = append(out, gammaRule{rule: rule, route: r, ruleIdx: i, matchIdx: j})
		}
	}
	return out
}

// defaultSessionName names the session token of a rule whose sessionPersistence names none.
const defaultSessionName = "ambient-session"

// session translates a rule's sessionPersistence (nil: none).
func (idx *gammaIndex) session(r meshRoute, where string, sp *gwv1.SessionPersistence) *routev1.SessionPersistence {
	if sp == nil {
		return nil
	}
	out := &routev1.SessionPersistence{Name: deref(sp.SessionName), Header: deref(sp.Type) == gwv1.HeaderBasedSessionPersistence}
	if out.Name == "" {
		out.Name = defaultSessionName
	}
	out.AbsoluteTimeoutS = (idx.millis(r, where+" sessionPersistence.absoluteTimeout", sp.AbsoluteTimeout) + 999) / 1000
	if c := sp.CookieConfig; c != nil && deref(c.LifetimeType) == gwv1.PermanentCookieLifetimeType {
		out.Permanent = true
	}
	return out
}

func (idx *gammaIndex) match(r meshRoute, where string, m gwv1.HTTPRouteMatch) (*routev1.Match, bool) {
	out := &routev1.Match{Path: &routev1.PathMatch{Kind: routev1.PathMatch_PREFIX, Value: "/"}}
	if p := m.Path; p != nil {
		if p.Value != nil {
			out.Path.Value = *p.Value
		}
		kind := gwv1.PathMatchPathPrefix
		if p.Type != nil {
			kind = *p.Type
		}
		switch kind {
		case gwv1.PathMatchPathPrefix:
		case gwv1.PathMatchExact:
			out.Path.Kind = routev1.PathMatch_EXACT
		case gwv1.PathMatchRegularExpression:
			out.Path.Kind = routev1.PathMatch_REGEX
			if !idx.validRegex(r, where+" path", out.Path.Value) {
				return nil, false
			}
		default:
			idx.report(r, ReasonUnsupportedValue, "%s: path match type %q is not supported; the match is ignored", where, kind)
			return nil, false
		}
	}
	var ok bool
	if out.Headers, ok = idx.headerMatches(r, where, m.Headers); !ok {
		return nil, false
	}
	// Only the first of several matches of one parameter counts.
	seen := map[string]bool{}
	for _, q := range m.QueryParams {
		if seen[string(q.Name)] {
			continue
		}
		seen[string(q.Name)] = true
		regex := q.Type != nil && *q.Type == gwv1.QueryParamMatchRegularExpression
		if q.Type != nil && !regex && *q.Type != gwv1.QueryParamMatchExact {
			idx.report(r, ReasonUnsupportedValue, "%s: query parameter match type %q is not supported; the match is ignored", where, *q.Type)
			return nil, false
		}
		if regex && !idx.validRegex(r, where+" query parameter "+string(q.Name), q.Value) {
			return nil, false
		}
		out.QueryParams = append(out.QueryParams, &routev1.HeaderMatch{Name: string(q.Name), Value: q.Value, Regex: regex})
	}
	if m.Method != nil {
		out.Method = strings.ToUpper(string(*m.Method))
	}
	return out, true
}

// headerMatches translates hs; false when one cannot be, which is reported. Only the first of
// several matches of one header (case-insensitive) counts.
func (idx *gammaIndex) headerMatches(r meshRoute, where string, hs []gwv1.HTTPHeaderMatch) ([]*routev1.HeaderMatch, bool) {
	var out []*routev1.HeaderMatch
	seen := map[string]bool{}
	for _, h := range hs {
		if seen[strings.ToLower(string(h.Name))] {
			continue
		}
		seen[strings.ToLower(string(h.Name))] = true
		regex := h.Type != nil && *h.Type == gwv1.HeaderMatchRegularExpression
		if h.Type != nil && !regex && *h.Type != gwv1.HeaderMatchExact {
			idx.report(r, ReasonUnsupportedValue, "%s: header match type %q is not supported; the match is ignored", where, *h.Type)
			return nil, false
		}
		if regex && !idx.validRegex(r, where+" header "+string(h.Name), h.Value) {
			return nil, false
		}
		out = append(out, &routev1.HeaderMatch{Name: string(h.Name), Value: h.Value, Regex: regex})
	}
	return out, true
}

func (idx *gammaIndex) validRegex(r meshRoute, where, expr string) bool {
	if _, err := regexp.Compile(expr); err != nil {
		idx.report(r, ReasonInvalidValue, "%s: %v; the match is ignored", where, err)
		return false
	}
	return true
}

// filters translates fs, a rule's filters or (onBackend) a backendRef's; false when one cannot be
// applied, which is reported.
func (idx *gammaIndex) filters(r meshRoute, where string, fs []gwv1.HTTPRouteFilter, onBackend bool) ([]*routev1.Filter, bool) {
	var out []*routev1.Filter
	for _, f := range fs {
		filter := &routev1.Filter{}
		switch {
		case f.Type == gwv1.HTTPRouteFilterRequestHeaderModifier && f.RequestHeaderModifier != nil:
			filter.Kind = &routev1.Filter_RequestHeaders{RequestHeaders: headerModifier(f.RequestHeaderModifier)}
		case f.Type == gwv1.HTTPRouteFilterResponseHeaderModifier && f.ResponseHeaderModifier != nil:
			filter.Kind = &routev1.Filter_ResponseHeaders{ResponseHeaders: headerModifier(f.ResponseHeaderModifier)}
		case f.Type == gwv1.HTTPRouteFilterRequestRedirect && f.RequestRedirect != nil:
			rr := f.RequestRedirect
			red := &routev1.Redirect{Scheme: deref(rr.Scheme), Hostname: string(deref(rr.Hostname)),
				Port: uint32(deref(rr.Port)), Path: pathModifier(rr.Path), StatusCode: 302}
			if rr.StatusCode != nil {
				red.StatusCode = uint32(*rr.StatusCode)
			}
			filter.Kind = &routev1.Filter_Redirect{Redirect: red}
		case f.Type == gwv1.HTTPRouteFilterURLRewrite && f.URLRewrite != nil:
			filter.Kind = &routev1.Filter_Rewrite{Rewrite: &routev1.Rewrite{Hostname: string(deref(f.URLRewrite.Hostname)),
				Path: pathModifier(f.URLRewrite.Path)}}
		case f.Type == gwv1.HTTPRouteFilterRequestMirror && f.RequestMirror != nil:
			m := &routev1.Mirror{Backend: idx.backend(r, where+" mirror", f.RequestMirror.BackendRef, false), FractionPpm: 1_000_000}
			m.Backend.Weight = 1 // the only backend of the mirror
			switch fr := f.RequestMirror.Fraction; {
			case fr != nil:
				den := int64(100)
				if fr.Denominator != nil {
					den = int64(*fr.Denominator)
				}
				if den <= 0 || fr.Numerator < 0 || int64(fr.Numerator) > den {
					idx.report(r, ReasonInvalidValue, "%s: mirror fraction %d/%d is not a fraction; requests are answered 500", where, fr.Numerator, den)
					return nil, false
				}
				m.FractionPpm = uint32(int64(fr.Numerator) * 1_000_000 / den)
			case f.RequestMirror.Percent != nil:
				m.FractionPpm = uint32(min(max(*f.RequestMirror.Percent, 0), 100)) * 10_000
			}
			filter.Kind = &routev1.Filter_Mirror{Mirror: m}
		case f.Type == gwv1.HTTPRouteFilterCORS && f.CORS != nil && onBackend:
			// The Gateway API (v1.6.3) lists CORS as Extended in HTTPBackendRef too, but a backendRef's
			// filters apply "if and only if the request is being forwarded to" that backend, and a
			// preflight is answered by the waypoint and forwarded nowhere: with weighted backends the
			// same preflight would be answered or not by the backend picked, and browsers would cache
			// whichever answer came. Not supported there: a valid value this implementation does not
			// apply (NotImplemented, not UnsupportedValue, which is for values the API does not know),
			// and that backend's share answers 500, like any backend filter that cannot be applied.
			idx.report(r, ReasonNotImplemented, "%s: filter CORS cannot be applied to a backendRef, only to a rule; requests are answered 500", where)
			return nil, false
		case f.Type == gwv1.HTTPRouteFilterCORS && f.CORS != nil:
			c, bad := corsFilter(f.CORS)
			if len(bad) > 0 {
				idx.report(r, ReasonInvalidValue, "%s: CORS allowOrigins %s: not \"*\" nor <scheme>://<host>[:<port>] with scheme http or https; requests are answered 500",
					where, strings.Join(bad, ", "))
				return nil, false
			}
			filter.Kind = &routev1.Filter_Cors{Cors: c}
		default:
			reason := ReasonNotImplemented
			switch f.Type {
			case gwv1.HTTPRouteFilterExtensionRef:
				reason = ReasonUnsupportedValue
			case gwv1.HTTPRouteFilterRequestHeaderModifier, gwv1.HTTPRouteFilterResponseHeaderModifier,
				gwv1.HTTPRouteFilterRequestRedirect, gwv1.HTTPRouteFilterURLRewrite, gwv1.HTTPRouteFilterRequestMirror,
				gwv1.HTTPRouteFilterCORS:
				reason = ReasonInvalidValue // the type's field is missing
			}
			idx.report(r, reason, "%s: filter %s cannot be applied; requests are answered 500", where, f.Type)
			return nil, false
		}
		out = append(out, filter)
	}
	return out, true
}

// corsOrigin is an allowed origin other than "*", as the Gateway API's CORSOrigin pattern has it:
// http or https, a host of DNS labels possibly led by "*." (or "*" alone), and a port; the port's
// range is checked apart.
var corsOrigin = regexp.MustCompile(`^https?://(\*|(\*\.)?[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)*)(:([0-9]{1,5}))?$`)

// corsFilter translates a CORS filter; it returns the allowed origins that are not origins,
// quoted. An unset maxAge is the API's default, 5 seconds.
func corsFilter(c *gwv1.HTTPCORSFilter) (*routev1.Cors, []string) {
	out := &routev1.Cors{AllowCredentials: deref(c.AllowCredentials), MaxAgeSeconds: 5}
	if c.MaxAge > 0 {
		out.MaxAgeSeconds = uint32(c.MaxAge)
	}
	var bad []string
	for _, o := range c.AllowOrigins {
		if m := corsOrigin.FindStringSubmatch(string(o)); o != "*" && (m == nil || m[5] != "" && !validPort(m[5])) {
			bad = append(bad, fmt.Sprintf("%q", o))
		}
		out.AllowOrigins = append(out.AllowOrigins, string(o))
	}
	for _, m := range c.AllowMethods {
		out.AllowMethods = append(out.AllowMethods, string(m))
	}
	for _, h := range c.AllowHeaders {
		out.AllowHeaders = append(out.AllowHeaders, string(h))
	}
	for _, h := range c.ExposeHeaders {
		out.ExposeHeaders = append(out.ExposeHeaders, string(h))
	}
	return out, bad
}

func validPort(s string) bool {
	p, err := strconv.Atoi(s)
	return err == nil && p >= 1 && p <= 65535
}

func headerModifier(h *gwv1.HTTPHeaderFilter) *routev1.HeaderModifier {
	out := &routev1.HeaderModifier{Remove: slices.Clone(h.Remove)}
	for _, s := range h.Set {
		out.Set = append(out.Set, &routev1.Header{Name: string(s.Name), Value: s.Value})
	}
	for _, a := range h.Add {
		out.Add = append(out.Add, &routev1.Header{Name: string(a.Name), Value: a.Value})
	}
	return out
}

func pathModifier(p *gwv1.HTTPPathModifier) *routev1.PathModifier {
	switch {
	case p == nil:
		return nil
	case p.Type == gwv1.PrefixMatchHTTPPathModifier:
		return &routev1.PathModifier{Kind: &routev1.PathModifier_Prefix{Prefix: deref(p.ReplacePrefixMatch)}}
	}
	return &routev1.PathModifier{Kind: &routev1.PathModifier_Full{Full: deref(p.ReplaceFullPath)}}
}

// backend resolves ref, from route r, to a Service: the Backend's service is empty when ref is
// not a Service that exists with a port or, across namespaces, no ReferenceGrant allows it.
// routeProblems reports the unresolved backendRefs (checked); the rest (mirrors) are reported
// here.
func (idx *gammaIndex) backend(r meshRoute, where string, ref gwv1.BackendObjectReference, checked bool) *routev1.Backend {
	ns := r.obj.GetNamespace()
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	out := &routev1.Backend{Port: uint32(deref(ref.Port))}
	var why string
	switch {
	case ref.Group != nil && *ref.Group != "" && *ref.Group != "core" || ref.Kind != nil && *ref.Kind != "Service":
		why = fmt.Sprintf("kind %s.%s is not supported (Service only)", deref(ref.Kind), deref(ref.Group))
	case ref.Port == nil:
		// The CRD's validation requires a port for a Service; without one it cannot resolve.
		why = "the reference gives no port"
	case ns != r.obj.GetNamespace() && !routes.ParentService(r.spec.ParentRefs, r.obj.GetNamespace(), ns, string(ref.Name)) &&
		!routes.Granted(idx.grants, r.kind, r.obj.GetNamespace(), ns, string(ref.Name)):
		why = fmt.Sprintf("no ReferenceGrant in %s allows %s from %s", ns, r.kind, r.obj.GetNamespace())
	case idx.services[ns+"/"+string(ref.Name)] == nil:
		why = fmt.Sprintf("Service %s/%s not found", ns, ref.Name)
	default:
		out.Service = ns + "/" + idx.t.hostname(string(ref.Name), ns)
	}
	if why != "" && !checked {
		idx.report(r, ReasonInvalidValue, "%s: backend %s/%s does not resolve: %s", where, ns, ref.Name, why)
	}
	return out
}

// millis converts a Gateway API duration to milliseconds, rounding up so that a duration is
// never 0 (none); one that does not parse is reported and left unset.
func (idx *gammaIndex) millis(r meshRoute, where string, d *gwv1.Duration) uint32 {
	if d == nil {
		return 0
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil || v < 0 {
		idx.report(r, ReasonInvalidValue, "%s: %q is not a duration; it is left unset", where, *d)
		return 0
	}
	return uint32(min((v+time.Millisecond-1)/time.Millisecond, math.MaxUint32))
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
