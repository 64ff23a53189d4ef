package authz

import (
	"net/netip"
	"slices"
	"strings"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Conn is what Check knows of one inbound connection.
type Conn struct {
	// SrcIP is the peer's address; a v4-mapped address is matched as IPv4, a zone is ignored.
	SrcIP netip.Addr
	// DstIP is the address the connection was made to. No Authorization field matches it today; it
	// is here so that callers describe a connection once.
	DstIP   netip.Addr
	DstPort uint16
	// Principal is the peer's authenticated identity, "" for a plaintext peer: the SPIFFE ID
	// without its scheme, "<trust-domain>/ns/<namespace>/sa/<service-account>", as istiod-lite
	// writes principals. A "spiffe://" prefix is ignored. The peer's namespace, for namespace
	// matches, is taken from it, so the two cannot disagree.
	Principal string
}

// Target is the workload a connection is made to.
type Target struct {
	Namespace string
	// PolicyNames are the policies bound to the workload by name, "<namespace>/<name>"
	// (Workload.authorization_policies).
	PolicyNames []string
}

// TargetOf returns w's Target. It shares w's slice of names, so w must not be modified while the
// Target is used (xDS resources are not).
func TargetOf(w *workloadv1.Workload) Target {
	return Target{Namespace: w.GetNamespace(), PolicyNames: w.GetAuthorizationPolicies()}
}

// Reason says why a Decision was made.
type Reason uint8

const (
	_ Reason = iota
	// ReasonNoAllowPolicy allows: no DENY matched and no ALLOW policy applies.
	ReasonNoAllowPolicy
	// ReasonAllowMatched allows: Decision.Policy is the ALLOW policy that matched.
	ReasonAllowMatched
	// ReasonDenyMatched denies: Decision.Policy is the DENY policy that matched.
	ReasonDenyMatched
	// ReasonNoAllowMatched denies: ALLOW policies apply and none matched.
	ReasonNoAllowMatched
	// ReasonUnknownPolicy denies: Decision.Policy is a name the workload lists that the Policies
	// does not hold.
	ReasonUnknownPolicy
)

var reasons = [...]string{
	ReasonNoAllowPolicy:  "no ALLOW policy applies",
	ReasonAllowMatched:   "ALLOW policy matched",
	ReasonDenyMatched:    "DENY policy matched",
	ReasonNoAllowMatched: "no ALLOW policy matched",
	ReasonUnknownPolicy:  "unknown policy",
}

func (r Reason) String() string {
	if int(r) < len(reasons) && reasons[r] != "" {
		return reasons[r]
	}
	return "unset"
}

// Decision is the outcome of Check. Its strings are the compiled policies' names (or the Target's),
// so it costs no allocation.
type Decision struct {
	Allow  bool
	Reason Reason
	// Policy is the "<namespace>/<name>" of the policy that decided (see Reason), "" when none did.
	Policy string
	// Audit is the first AUDIT policy that matched, "" when none did. It never changes Allow.
	Audit string
}

// peer is a Conn normalised for matching.
type peer struct {
	ip        netip.Addr
	port      uint16
	principal string // "" when absent
	namespace string // "" when absent
}

// Check decides whether c may connect to t. It allocates nothing and does not modify p; a nil
// Policies holds no policies. c must not be nil.
func (p *Policies) Check(t Target, c *Conn) Decision {
	principal := strings.TrimPrefix(c.Principal, "spiffe://")
	e := eval{peer: peer{
		ip:        c.SrcIP.Unmap().WithZone(""),
		port:      c.DstPort,
		principal: principal,
		namespace: namespaceOf(principal),
	}}
	if p != nil {
		for _, pol := range p.global {
			e.visit(pol)
		}
		for _, pol := range p.byNamespace[t.Namespace] {
			e.visit(pol)
		}
	}
	for _, name := range t.PolicyNames {
		var pol *policy
		if p != nil {
			pol = p.byName[name]
		}
		if pol == nil {
			if e.unknown == "" {
				e.unknown = name
			}
			continue
		}
		e.visit(pol)
	}
	return e.decision()
}

// eval accumulates one Check over the applicable policies. A policy visited twice (global or
// namespace-wide, and named by the workload) changes nothing.
type eval struct {
	peer
	deny, allow, audit *policy // first of each that matched
	unknown            string  // first listed name not held
	allowApplies       bool
}

func (e *eval) visit(pol *policy) {
	switch pol.action {
	case workloadv1.Action_DENY:
		if e.deny == nil && pol.matches(&e.peer) {
			e.deny = pol
		}
	case workloadv1.Action_ALLOW:
		e.allowApplies = true
		if e.allow == nil && e.deny == nil && pol.matches(&e.peer) {
			e.allow = pol
		}
	case workloadv1.Action_AUDIT:
		if e.audit == nil && pol.matches(&e.peer) {
			e.audit = pol
		}
	}
}

func (e *eval) decision() Decision {
	var d Decision
	if e.audit != nil {
		d.Audit = e.audit.name
	}
	switch {
	case e.deny != nil:
		d.Reason, d.Policy = ReasonDenyMatched, e.deny.name
	case e.unknown != "":
		d.Reason, d.Policy = ReasonUnknownPolicy, e.unknown
	case !e.allowApplies:
		d.Allow, d.Reason = true, ReasonNoAllowPolicy
	case e.allow != nil:
		d.Allow, d.Reason, d.Policy = true, ReasonAllowMatched, e.allow.name
	default:
		d.Reason = ReasonNoAllowMatched
	}
	return d
}

func (pol *policy) matches(c *peer) bool {
	for _, r := range pol.rules {
		if r.matches(c) {
			return true
		}
	}
	return false
}

func (r rule) matches(c *peer) bool {
	for _, cl := range r {
		if !cl.matches(c) {
			return false
		}
	}
	return true
}

func (cl clause) matches(c *peer) bool {
	for i := range cl {
		if cl[i].matches(c) {
			return true
		}
	}
	return false
}

// matches reports whether every non-empty field holds and no non-empty not_ field does.
func (m *match) matches(c *peer) bool {
	if len(m.ports) > 0 && !hasPort(m.ports, c.port) || hasPort(m.notPorts, c.port) {
		return false
	}
	if len(m.srcIPs) > 0 && !hasIP(m.srcIPs, c.ip) || hasIP(m.notSrcIPs, c.ip) {
		return false
	}
	if len(m.principals) > 0 && !anyString(m.principals, c.principal) || anyString(m.notPrincipals, c.principal) {
		return false
	}
	if len(m.namespaces) > 0 && !anyString(m.namespaces, c.namespace) || anyString(m.notNamespaces, c.namespace) {
		return false
	}
	return true
}

func hasPort(ports []uint16, p uint16) bool {
	_, found := slices.BinarySearch(ports, p)
	return found
}

func hasIP(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// anyString reports whether v matches any of ms. An empty v is an absent value (a plaintext peer's
// identity), which no match of any kind matches.
func anyString(ms []strMatch, v string) bool {
	if v == "" {
		return false
	}
	for _, m := range ms {
		switch m.kind {
		case exactMatch:
			if v == m.s {
				return true
			}
		case prefixMatch:
			if strings.HasPrefix(v, m.s) {
				return true
			}
		case suffixMatch:
			if strings.HasSuffix(v, m.s) {
				return true
			}
		case presenceMatch:
			return true
		}
	}
	return false
}

// namespaceOf returns the namespace of "<trust-domain>/ns/<namespace>/sa/<service-account>", or ""
// when principal is not of that form.
func namespaceOf(principal string) string {
	td, rest, ok := strings.Cut(principal, "/")
	if !ok || td == "" {
		return ""
	}
	if rest, ok = strings.CutPrefix(rest, "ns/"); !ok {
		return ""
	}
	ns, sa, ok := strings.Cut(rest, "/sa/")
	if !ok || ns == "" || strings.Contains(ns, "/") || sa == "" || strings.Contains(sa, "/") {
		return ""
	}
	return ns
}
