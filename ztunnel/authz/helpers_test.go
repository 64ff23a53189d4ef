package authz

import (
	"net/netip"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Builders for the workloadv1 messages istiod-lite emits; the tests build them by hand because
// nothing may import istiod-lite.

const trustDomain = "cluster.local"

func principal(ns, sa string) string { return trustDomain + "/ns/" + ns + "/sa/" + sa }

func exact(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: s}}
}

func prefix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s}}
}

func suffix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: s}}
}

func presence() *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{Presence: true}}
}

func strs(ms ...*workloadv1.StringMatch) []*workloadv1.StringMatch { return ms }

// cidr is an Address as istiod-lite writes one: 4 bytes for IPv4, 16 for IPv6 (so a v4-mapped
// prefix stays 16 bytes).
func cidr(s string) *workloadv1.Address {
	p := netip.MustParsePrefix(s)
	return &workloadv1.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}

func cidrs(ss ...string) []*workloadv1.Address {
	var out []*workloadv1.Address
	for _, s := range ss {
		out = append(out, cidr(s))
	}
	return out
}

func clauseOf(ms ...*workloadv1.Match) *workloadv1.Clause { return &workloadv1.Clause{Matches: ms} }

func ruleOf(cs ...*workloadv1.Clause) *workloadv1.Rule { return &workloadv1.Rule{Clauses: cs} }

// one is the rules of a policy with one rule of one clause of one match.
func one(m *workloadv1.Match) []*workloadv1.Rule { return []*workloadv1.Rule{ruleOf(clauseOf(m))} }

func authz(scope workloadv1.Scope, action workloadv1.Action, ns, name string, rules ...*workloadv1.Rule) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action, Rules: rules}
}

// Shorthands for the common scopes. allowNS and denyNS are namespace-wide in "server", the
// namespace of the workload the tests connect to.
func allowNS(name string, rules ...*workloadv1.Rule) *workloadv1.Authorization {
	return authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW, serverNS, name, rules...)
}

func denyNS(name string, rules ...*workloadv1.Rule) *workloadv1.Authorization {
	return authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY, serverNS, name, rules...)
}

func auditNS(name string, rules ...*workloadv1.Rule) *workloadv1.Authorization {
	return authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_AUDIT, serverNS, name, rules...)
}

// peerAuthn is istiod-lite's translation of a PeerAuthentication: a selector-bound DENY of
// connections without a peer identity, on the STRICT ports. With strict, relaxed are the
// port-level PERMISSIVE/DISABLE ports; without, strictPorts are the port-level STRICT ones.
func peerAuthn(ns, name string, strict bool, ports ...uint32) *workloadv1.Authorization {
	m := &workloadv1.Match{NotPrincipals: strs(presence())}
	if strict {
		m.NotDestinationPorts = ports
	} else {
		m.DestinationPorts = ports
	}
	return authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY, ns, "peerauthn:"+name, one(m)...)
}

const (
	serverNS = "server"
	rootNS   = "istio-system"
)

var (
	clientIP   = netip.MustParseAddr("10.0.0.5")
	serverIP   = netip.MustParseAddr("10.1.0.9")
	sleepPrinc = principal("client", "sleep")
)

// mtls is a connection from client/sleep to port 8080; plain the same without an identity.
func mtls() Conn {
	return Conn{SrcIP: clientIP, DstIP: serverIP, DstPort: 8080, Principal: sleepPrinc}
}

func plain() Conn {
	c := mtls()
	c.Principal = ""
	return c
}
