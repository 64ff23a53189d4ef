// Package authz owns ztunnel's L4 authorization decision: whether one inbound connection to a
// workload is allowed, under the workloadv1.Authorization resources istiod-lite translates from
// AuthorizationPolicy and PeerAuthentication (DESIGN.md §2). Compile turns those resources into an
// immutable Policies; Policies.Check decides one connection.
//
// It must not do I/O, log, keep metrics per connection or speak xDS: the caller receives the
// resources, compiles them, publishes the result and acts on (and logs) the Decision. Check
// allocates nothing and a Policies is never modified, so any number of goroutines may call Check
// while the caller swaps in a new one:
//
//	var current atomic.Pointer[authz.Policies]
//	// on every change of the Authorization resources:
//	p, err := authz.Compile(auths) // err lists what was left out: NACK it, publish p anyway
//	current.Store(p)
//	// on every inbound connection:
//	d := current.Load().Check(target, &conn)
//
// A Store applies to every Check that starts after it, so a policy change applies to new
// connections as soon as the caller has compiled it. Connections already open are not re-checked.
//
// # Which policies apply
//
// To a workload (Target) apply: every GLOBAL-scope policy (istiod-lite gives that scope to policies
// in the root namespace without a selector); every NAMESPACE-scope policy of the workload's
// namespace; and every policy the workload names in Workload.authorization_policies, as
// "<namespace>/<name>", whatever its scope. istiod-lite names there the AuthorizationPolicies whose
// selector matches the pod and the Authorization of the pod's effective PeerAuthentication,
// "<namespace>/peerauthn:<name>", which may live in the pod's namespace or the root namespace.
//
// A name the workload lists that the Policies does not hold denies the connection
// (ReasonUnknownPolicy): it is a policy ztunnel was told applies but cannot enforce, usually one
// still on its way, and the translator's rule is to err on the side of denying. A caller should
// therefore apply new Authorizations before the Workloads that name them, and remove them after.
//
// # Decision
//
// As Istio's AuthorizationPolicy, without CUSTOM: a connection that matches any applicable DENY
// policy is denied; otherwise, if any ALLOW policy applies, it is allowed only if it matches one of
// them; otherwise it is allowed. AUDIT policies never change the decision; the first that matches
// is reported in Decision.Audit.
//
// # Matching
//
// A policy matches when any of its rules matches, so a policy with no rules matches nothing (an
// ALLOW policy without rules, Istio's "allow-nothing" `spec: {}`, therefore denies everything). A
// rule matches when every clause matches, so a rule with no clauses matches everything (Istio's
// empty rule `{}`, "allow-all"). A clause matches when any of its matches matches, so a clause with
// no matches matches nothing (istiod-lite never emits one). A match matches when every non-empty
// field holds and no non-empty not_ field holds; a match with no fields matches everything.
// istiod-lite emits one clause for a rule's from (one match per source), one for its to (one match
// per operation) and one per when condition.
//
// Field by field:
//   - principals: the peer's identity as istiod-lite writes it, the SPIFFE ID without its scheme,
//     "<trust-domain>/ns/<namespace>/sa/<service-account>" (Conn.Principal; a "spiffe://" prefix is
//     tolerated and ignored).
//   - namespaces: the namespace in that identity. A principal not of that form has no namespace.
//   - source_ips: prefixes containing the peer's address. A v4-mapped IPv6 peer address is matched
//     as the IPv4 address it carries, and a prefix within ::ffff:0:0/96 as the IPv4 prefix it
//     covers; other IPv6 prefixes never contain IPv4 addresses, nor IPv4 prefixes IPv6 ones.
//   - destination_ports: the port the connection was made to (Conn.DstPort).
//
// String matches are exact, prefix, suffix or presence (any non-empty value). The identity of a
// plaintext peer is absent, not an empty string: no string match of any kind matches it. So an ALLOW
// that requires principals or namespaces never matches plaintext, and a not_principals presence
// match always does: that is how istiod-lite's PeerAuthentication STRICT, a DENY of
// not_principals: [presence], denies plaintext and lets mTLS through, and how port-level PERMISSIVE
// (not_destination_ports) exempts ports from it.
//
// # Compile
//
// Compile reports every value it cannot use (an address that is not 4 or 16 bytes, a prefix length
// longer than the address, a port outside 1-65535, a string match without a kind) and compiles the
// rest, treating it as istiod-lite treats attributes ztunnel cannot enforce, so that enforcement errs
// on the side of denying: in an ALLOW or AUDIT policy the rule holding the value is dropped (it can
// then never allow); in a DENY policy the value is left out (a list left empty then matches
// everything, so the rule denies more). A policy with an unknown action or scope, or whose name
// repeats an earlier one, is left out whole.
package authz
