package model

// AuthorizationPolicy → workloadv1.Authorization, the L4 part ztunnel enforces. The rules kept here
// (Istio's AuthorizationPolicy semantics; each has a row in semantics_test.go):
//
//   - Which workloads: no selector (or empty matchLabels) → every workload of the policy's namespace
//     (NAMESPACE), or of the mesh for the root namespace (GLOBAL). A selector → the matching
//     workloads of the policy's namespace, or of every namespace for the root namespace; they list
//     the policy by name (boundAuthorizations). targetRefs → the waypoint's (l7authz.go).
//   - Action: ALLOW, DENY and AUDIT as written. CUSTOM (an external authorizer) cannot be asked at
//     L4: its rules become a DENY, so what it might deny is denied. The istio.io/dry-run annotation
//     makes the policy AUDIT: its matches are logged, never enforced.
//   - Rules: a policy matches when any rule does; a rule when its from, its to and every when do;
//     from when any source does, to when any operation does; a source, operation or condition
//     when every field set holds and no not-field does. An empty rule matches everything; an ALLOW
//     with no rules matches nothing, so it denies everything it applies to.
//   - What ztunnel cannot see at L4 (hosts, methods, paths, requestPrincipals, remoteIpBlocks,
//     remote.ip, request.*, destination.ip, connection.sni ...): an ALLOW or AUDIT rule holding it
//     is dropped (it never allows); in a DENY it is left out, so the rule denies all the L4
//     traffic matching the rest. Values that do not parse are treated the same way. Either is a
//     Problem (UnsupportedValue or InvalidValue).
//   - serviceAccounts "ns/sa", or "sa" in the policy's namespace, are the principal
//     "<trust domain>/ns/<ns>/sa/<sa>"; trustDomains are matched on the principal's first segment.

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Kinds of the objects problems are reported on.
const (
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPeerAuthentication  = "PeerAuthentication"
	KindPod                 = "Pod"
	KindService             = "Service"
	KindNamespace           = "Namespace"
)

// annotationDryRun is Istio's annotation for a policy that is evaluated but not enforced.
const annotationDryRun = "istio.io/dry-run"

// authorizationPolicy translates ap for ztunnel, or returns nil when ztunnel has nothing to
// enforce for it; what it cannot translate as written is reported.
func (t *translator) authorizationPolicy(ap *secv1.AuthorizationPolicy) *workloadv1.Authorization {
	spec := &ap.Spec
	report := func(cond, reason string, rejected bool, format string, args ...any) {
		t.report(Problem{Kind: KindAuthorizationPolicy, Namespace: ap.Namespace, Name: ap.Name,
			Condition: cond, Reason: reason, Rejected: rejected, Message: fmt.Sprintf(format, args...)})
	}
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		// Enforced by the waypoint of its target at L7 (l7authz.go). It cannot be enforced at
		// L4 in its place: at the destination, traffic through a waypoint comes from the
		// waypoint's identity, not the client's.
		return nil
	}
	out := &workloadv1.Authorization{Name: ap.Name, Namespace: ap.Namespace, Scope: t.scope(ap.Namespace, spec.Selector)}
	dryRun := ap.Annotations[annotationDryRun] == "true"
	switch {
	case spec.Action < secapi.AuthorizationPolicy_ALLOW || spec.Action > secapi.AuthorizationPolicy_CUSTOM:
		report(ConditionZtunnelAccepted, ReasonUnsupportedValue, true, "unknown action %s", spec.Action)
		return nil
	case dryRun:
		// Evaluated and logged, never enforced: ztunnel's AUDIT is exactly that.
		out.Action = workloadv1.Action_AUDIT
	case spec.Action == secapi.AuthorizationPolicy_ALLOW:
		out.Action = workloadv1.Action_ALLOW
	case spec.Action == secapi.AuthorizationPolicy_DENY:
		out.Action = workloadv1.Action_DENY
	case spec.Action == secapi.AuthorizationPolicy_AUDIT:
		out.Action = workloadv1.Action_AUDIT
	case spec.Action == secapi.AuthorizationPolicy_CUSTOM:
		out.Action = workloadv1.Action_DENY
		report(ConditionZtunnelAccepted, ReasonUnsupportedValue, false,
			"ztunnel cannot ask an external authorizer (CUSTOM): the connections the rules match are denied")
	}
	for i, r := range spec.Rules {
		var is issues
		rule := t.rule(ap.Namespace, r, &is)
		switch {
		case is.empty():
			out.Rules = append(out.Rules, rule)
		case out.Action == workloadv1.Action_DENY:
			// What was left out made the rule broader: it denies all the matching L4 traffic.
			out.Rules = append(out.Rules, rule)
			report(ConditionZtunnelAccepted, is.reason(), false, "rule %d: %s: the rule is enforced without them, so it denies more than requested", i, &is)
		default:
			report(ConditionZtunnelAccepted, is.reason(), false, "rule %d: %s: the rule is left out, so it never allows (more restrictive than requested)", i, &is)
		}
	}
	return out
}

// scope is where a policy applies without a name binding it.
func (t *translator) scope(ns string, sel *typeapi.WorkloadSelector) workloadv1.Scope {
	switch {
	case len(sel.GetMatchLabels()) > 0:
		return workloadv1.Scope_WORKLOAD_SELECTOR
	case ns == t.cfg.RootNamespace:
		return workloadv1.Scope_GLOBAL
	default:
		return workloadv1.Scope_NAMESPACE
	}
}

// issues collects what in one rule ztunnel cannot enforce as written.
type issues struct {
	unsupported []string // attributes ztunnel cannot see at L4, named as in the spec
	invalid     []string // values that do not parse
}

func (is *issues) empty() bool { return len(is.unsupported)+len(is.invalid) == 0 }

func (is *issues) reason() string {
	if len(is.unsupported) > 0 {
		return ReasonUnsupportedValue
	}
	return ReasonInvalidValue
}

func (is *issues) String() string {
	var parts []string
	if len(is.unsupported) > 0 {
		u := slices.Compact(slices.Sorted(slices.Values(is.unsupported)))
		parts = append(parts, "ztunnel cannot enforce "+strings.Join(u, ", ")+" (a waypoint can)")
	}
	if len(is.invalid) > 0 {
		parts = append(parts, "invalid "+strings.Join(is.invalid, ", "))
	}
	return strings.Join(parts, "; ")
}

// rule translates one Istio rule: a clause for from (one match per source), one for to (one match
// per operation), one per when condition. What ztunnel cannot enforce is recorded in is and left
// out in the way that is right for a DENY: a not-value left out excludes less; a positive list
// with an attribute ztunnel cannot see is left out whole (the match then holds whatever the
// value); a value that does not parse, which could match nothing, is left out alone. An ALLOW
// drops a rule with issues altogether.
func (t *translator) rule(ns string, r *secapi.Rule, is *issues) *workloadv1.Rule {
	out := &workloadv1.Rule{}
	if len(r.From) > 0 {
		c := &workloadv1.Clause{}
		for _, f := range r.From {
			c.Matches = append(c.Matches, t.sourceMatch(ns, f.GetSource(), is))
		}
		out.Clauses = append(out.Clauses, c)
	}
	if len(r.To) > 0 {
		c := &workloadv1.Clause{}
		for _, to := range r.To {
			c.Matches = append(c.Matches, operationMatch(to.GetOperation(), is))
		}
		out.Clauses = append(out.Clauses, c)
	}
	for _, w := range r.When {
		if m := conditionMatch(w, is); m != nil {
			out.Clauses = append(out.Clauses, &workloadv1.Clause{Matches: []*workloadv1.Match{m}})
		}
	}
	return out
}

func (t *translator) sourceMatch(ns string, s *secapi.Source, is *issues) *workloadv1.Match {
	m := &workloadv1.Match{}
	if s == nil {
		return m
	}
	// principals, serviceAccounts and trustDomains all constrain the peer's principal, which a
	// Match holds as one list of alternatives: two of them in one source (an AND) cannot be
	// written. Their union, used in a DENY, denies more than the AND.
	set := 0
	for _, l := range [][]string{s.Principals, s.ServiceAccounts, s.TrustDomains} {
		if len(l) > 0 {
			set++
		}
	}
	if set > 1 {
		is.unsupported = append(is.unsupported, "more than one of principals, serviceAccounts and trustDomains in one source")
	}
	m.Principals = stringMatches(s.Principals)
	m.NotPrincipals = stringMatches(s.NotPrincipals)
	m.Namespaces = stringMatches(s.Namespaces)
	m.NotNamespaces = stringMatches(s.NotNamespaces)
	for _, sa := range s.ServiceAccounts {
		if p, ok := t.saPrincipal(ns, sa, is); ok {
			m.Principals = append(m.Principals, exact(p))
		}
	}
	for _, sa := range s.NotServiceAccounts {
		if p, ok := t.saPrincipal(ns, sa, is); ok {
			m.NotPrincipals = append(m.NotPrincipals, exact(p))
		}
	}
	if td, ok := trustDomainMatches("trustDomains", s.TrustDomains, is); ok {
		m.Principals = append(m.Principals, td...)
	}
	td, _ := trustDomainMatches("notTrustDomains", s.NotTrustDomains, is)
	m.NotPrincipals = append(m.NotPrincipals, td...)
	m.SourceIps = prefixes("ipBlocks", s.IpBlocks, is)
	m.NotSourceIps = prefixes("notIpBlocks", s.NotIpBlocks, is)
	// remoteIpBlocks come from X-Forwarded-For or the PROXY protocol, which ztunnel never reads
	// (Istio's rule too): they are not the peer's address.
	unsupported(is, "remoteIpBlocks", s.RemoteIpBlocks)
	unsupported(is, "notRemoteIpBlocks", s.NotRemoteIpBlocks)
	unsupported(is, "requestPrincipals", s.RequestPrincipals)
	unsupported(is, "notRequestPrincipals", s.NotRequestPrincipals)
	return m
}

func unsupported(is *issues, field string, values []string) {
	if len(values) > 0 {
		is.unsupported = append(is.unsupported, field)
	}
}

func operationMatch(o *secapi.Operation, is *issues) *workloadv1.Match {
	m := &workloadv1.Match{}
	if o == nil {
		return m
	}
	m.DestinationPorts = ports("ports", o.Ports, is)
	m.NotDestinationPorts = ports("notPorts", o.NotPorts, is)
	unsupported(is, "hosts", o.Hosts)
	unsupported(is, "notHosts", o.NotHosts)
	unsupported(is, "methods", o.Methods)
	unsupported(is, "notMethods", o.NotMethods)
	unsupported(is, "paths", o.Paths)
	unsupported(is, "notPaths", o.NotPaths)
	return m
}

// conditionMatch translates a when condition with an L4 key; it returns nil for the others, which
// it records as unsupported. Istio's L4 keys are source.ip, source.namespace, source.principal,
// destination.ip and destination.port; the workload API carries no destination address, so
// destination.ip is not enforced either.
func conditionMatch(c *secapi.Condition, is *issues) *workloadv1.Match {
	m := &workloadv1.Match{}
	field := func(neg bool) string {
		if neg {
			return "when " + c.Key + " notValues"
		}
		return "when " + c.Key + " values"
	}
	switch c.Key {
	case "source.ip":
		m.SourceIps = prefixes(field(false), c.Values, is)
		m.NotSourceIps = prefixes(field(true), c.NotValues, is)
	case "source.namespace":
		m.Namespaces, m.NotNamespaces = stringMatches(c.Values), stringMatches(c.NotValues)
	case "source.principal":
		m.Principals, m.NotPrincipals = stringMatches(c.Values), stringMatches(c.NotValues)
	case "destination.port":
		m.DestinationPorts = ports(field(false), c.Values, is)
		m.NotDestinationPorts = ports(field(true), c.NotValues, is)
	default:
		is.unsupported = append(is.unsupported, "when "+c.Key)
		return nil
	}
	return m
}

// saPrincipal turns a serviceAccounts entry, "<namespace>/<name>" or "<name>" in the policy's
// namespace ns, into a principal.
func (t *translator) saPrincipal(ns, sa string, is *issues) (string, bool) {
	name := sa
	if before, after, ok := strings.Cut(sa, "/"); ok {
		ns, name = before, after
	}
	if ns == "" || name == "" || strings.ContainsAny(name, "/*") || strings.Contains(ns, "*") {
		is.invalid = append(is.invalid, fmt.Sprintf("service account %q (want <namespace>/<name> or <name>, no wildcards)", sa))
		return "", false
	}
	return t.cfg.TrustDomain + "/ns/" + ns + "/sa/" + name, true
}

// trustDomainMatches turns trust-domain patterns into matches of the principal, whose first
// segment is the trust domain: "td" → prefix "td/", "td*" → prefix "td", "*" → presence. A suffix
// pattern ("*td") cannot be written on the principal. ok is false when a pattern was left out, in
// which case a positive list must be left out whole (see rule).
func trustDomainMatches(field string, in []string, is *issues) (out []*workloadv1.StringMatch, ok bool) {
	ok = true
	for _, s := range in {
		switch {
		case s == "*":
			out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{Presence: true}})
		case s == "" || strings.Contains(s, "/"):
			is.invalid = append(is.invalid, fmt.Sprintf("%s %q", field, s))
		case strings.HasPrefix(s, "*"):
			is.unsupported = append(is.unsupported, field+" suffix patterns")
			ok = false
		case strings.HasSuffix(s, "*"):
			out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s[:len(s)-1]}})
		default:
			out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s + "/"}})
		}
	}
	if !ok {
		return nil, false
	}
	return out, true
}

func ports(field string, in []string, is *issues) []uint32 {
	var out []uint32
	for _, s := range in {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			is.invalid = append(is.invalid, fmt.Sprintf("%s %q", field, s))
			continue
		}
		out = append(out, uint32(p))
	}
	return out
}

func prefixes(field string, in []string, is *issues) []*workloadv1.Address {
	var out []*workloadv1.Address
	for _, s := range in {
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || p.Addr().Zone() != "" {
			is.invalid = append(is.invalid, fmt.Sprintf("%s %q", field, s))
			continue
		}
		p = p.Masked()
		out = append(out, &workloadv1.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
	}
	return out
}

// stringMatches follows Istio's string syntax: "*" any value, "*x" suffix, "x*" prefix.
func stringMatches(in []string) []*workloadv1.StringMatch {
	var out []*workloadv1.StringMatch
	for _, s := range in {
		switch {
		case s == "*":
			out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{Presence: true}})
		case strings.HasPrefix(s, "*"):
			out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: s[1:]}})
		case strings.HasSuffix(s, "*"):
			out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s[:len(s)-1]}})
		default:
			out = append(out, exact(s))
		}
	}
	return out
}

func exact(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: s}}
}
