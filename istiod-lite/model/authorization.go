package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// peerAuthnPrefix marks Authorizations derived from PeerAuthentication. Kubernetes names cannot
// contain ':', so they never collide with an AuthorizationPolicy's.
const peerAuthnPrefix = "peerauthn:"

// authorizationPolicy translates the L4 part of an AuthorizationPolicy for ztunnel. Policies with
// targetRefs are enforced by waypoints at L7 and are not ztunnel's; CUSTOM is not supported.
//
// Attributes ztunnel cannot see (HTTP methods, paths, request principals, ...) or cannot parse are
// handled so that enforcement errs on the side of denying: in an ALLOW policy the rule that holds
// them is dropped (it can then never allow), in a DENY policy the attribute is ignored (the rule
// then denies more). AUDIT follows ALLOW, auditing less rather than more.
func (t *translator) authorizationPolicy(ap *secv1.AuthorizationPolicy) *workloadv1.Authorization {
	spec := &ap.Spec
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		return nil
	}
	out := &workloadv1.Authorization{Name: ap.Name, Namespace: ap.Namespace}
	switch spec.Action {
	case secapi.AuthorizationPolicy_ALLOW:
		out.Action = workloadv1.Action_ALLOW
	case secapi.AuthorizationPolicy_DENY:
		out.Action = workloadv1.Action_DENY
	case secapi.AuthorizationPolicy_AUDIT:
		out.Action = workloadv1.Action_AUDIT
	default:
		t.problem("AuthorizationPolicy", ap.Namespace, ap.Name, "action %s is not supported by ztunnel", spec.Action)
		return nil
	}
	out.Scope = t.scope(ap.Namespace, spec.Selector)
	lenient := out.Action == workloadv1.Action_DENY
	for i, r := range spec.Rules {
		rule, err := t.rule(r, lenient)
		if err != nil {
			t.problem("AuthorizationPolicy", ap.Namespace, ap.Name, "rule %d: %v", i, err)
			if !lenient {
				continue
			}
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

func (t *translator) scope(ns string, sel *typeapi.WorkloadSelector) workloadv1.Scope {
	switch {
	case sel != nil && len(sel.MatchLabels) > 0:
		return workloadv1.Scope_WORKLOAD_SELECTOR
	case ns == t.cfg.RootNamespace:
		return workloadv1.Scope_GLOBAL
	default:
		return workloadv1.Scope_NAMESPACE
	}
}

// rule translates one Istio rule: from AND to AND every when. With lenient, unsupported attributes
// are skipped and reported in the error; otherwise the first one fails the rule.
func (t *translator) rule(r *secapi.Rule, lenient bool) (*workloadv1.Rule, error) {
	var errs []string
	fail := func(format string, args ...any) error {
		errs = append(errs, fmt.Sprintf(format, args...))
		if lenient {
			return nil
		}
		return fmt.Errorf("%s", errs[len(errs)-1])
	}
	out := &workloadv1.Rule{}
	if len(r.From) > 0 {
		c := &workloadv1.Clause{}
		for _, f := range r.From {
			m, err := t.sourceMatch(f.GetSource(), fail)
			if err != nil {
				return nil, err
			}
			c.Matches = append(c.Matches, m)
		}
		out.Clauses = append(out.Clauses, c)
	}
	if len(r.To) > 0 {
		c := &workloadv1.Clause{}
		for _, to := range r.To {
			m, err := operationMatch(to.GetOperation(), fail)
			if err != nil {
				return nil, err
			}
			c.Matches = append(c.Matches, m)
		}
		out.Clauses = append(out.Clauses, c)
	}
	for _, w := range r.When {
		m, err := t.conditionMatch(w, fail)
		if err != nil {
			return nil, err
		}
		if m != nil {
			out.Clauses = append(out.Clauses, &workloadv1.Clause{Matches: []*workloadv1.Match{m}})
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return out, nil
}

type failFunc func(format string, args ...any) error

func (t *translator) sourceMatch(s *secapi.Source, fail failFunc) (*workloadv1.Match, error) {
	m := &workloadv1.Match{}
	if s == nil {
		return m, nil
	}
	m.Principals = stringMatches(s.Principals)
	m.NotPrincipals = stringMatches(s.NotPrincipals)
	m.Namespaces = stringMatches(s.Namespaces)
	m.NotNamespaces = stringMatches(s.NotNamespaces)
	for _, sa := range s.ServiceAccounts {
		p, err := t.saPrincipal(sa)
		if err != nil {
			if err := fail("%v", err); err != nil {
				return nil, err
			}
			continue
		}
		m.Principals = append(m.Principals, exact(p))
	}
	for _, sa := range s.NotServiceAccounts {
		p, err := t.saPrincipal(sa)
		if err != nil {
			if err := fail("%v", err); err != nil {
				return nil, err
			}
			continue
		}
		m.NotPrincipals = append(m.NotPrincipals, exact(p))
	}
	var err error
	// ztunnel sees the connection's peer: ipBlocks and remoteIpBlocks are the same thing at L4.
	if m.SourceIps, err = prefixes(append(append([]string{}, s.IpBlocks...), s.RemoteIpBlocks...), fail); err != nil {
		return nil, err
	}
	if m.NotSourceIps, err = prefixes(append(append([]string{}, s.NotIpBlocks...), s.NotRemoteIpBlocks...), fail); err != nil {
		return nil, err
	}
	if len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
		if err := fail("requestPrincipals need a waypoint"); err != nil {
			return nil, err
		}
	}
	if len(s.TrustDomains)+len(s.NotTrustDomains) > 0 {
		if err := fail("trustDomains are not supported"); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func operationMatch(o *secapi.Operation, fail failFunc) (*workloadv1.Match, error) {
	m := &workloadv1.Match{}
	if o == nil {
		return m, nil
	}
	var err error
	if m.DestinationPorts, err = ports(o.Ports, fail); err != nil {
		return nil, err
	}
	if m.NotDestinationPorts, err = ports(o.NotPorts, fail); err != nil {
		return nil, err
	}
	if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
		if err := fail("HTTP attributes need a waypoint"); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// conditionMatch translates the L4 condition keys; it returns nil, nil for a skipped key.
func (t *translator) conditionMatch(c *secapi.Condition, fail failFunc) (*workloadv1.Match, error) {
	m := &workloadv1.Match{}
	var err error
	switch c.Key {
	case "source.ip", "remote.ip":
		if m.SourceIps, err = prefixes(c.Values, fail); err == nil {
			m.NotSourceIps, err = prefixes(c.NotValues, fail)
		}
	case "source.namespace":
		m.Namespaces, m.NotNamespaces = stringMatches(c.Values), stringMatches(c.NotValues)
	case "source.principal":
		m.Principals, m.NotPrincipals = stringMatches(c.Values), stringMatches(c.NotValues)
	case "destination.port":
		if m.DestinationPorts, err = ports(c.Values, fail); err == nil {
			m.NotDestinationPorts, err = ports(c.NotValues, fail)
		}
	default:
		return nil, fail("condition %q needs a waypoint", c.Key)
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (t *translator) saPrincipal(sa string) (string, error) {
	ns, name, ok := strings.Cut(sa, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("service account %q is not <namespace>/<name>", sa)
	}
	return t.cfg.TrustDomain + "/ns/" + ns + "/sa/" + name, nil
}

func ports(in []string, fail failFunc) ([]uint32, error) {
	var out []uint32
	for _, s := range in {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || p == 0 {
			if err := fail("bad port %q", s); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, uint32(p))
	}
	return out, nil
}

func prefixes(in []string, fail failFunc) ([]*workloadv1.Address, error) {
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
		if err != nil {
			if err := fail("bad IP block %q", s); err != nil {
				return nil, err
			}
			continue
		}
		p = p.Masked()
		out = append(out, &workloadv1.Address{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())})
	}
	return out, nil
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

// peerAuthentication turns a PeerAuthentication into a DENY Authorization that rejects connections
// without a peer identity (plaintext), on the ports where the effective mode is STRICT. It is always
// bound per workload (WORKLOAD_SELECTOR): which PeerAuthentication applies to a pod follows Istio's
// precedence (workload selector over namespace over mesh-wide), so a namespace's STRICT can be
// relaxed by a workload's PERMISSIVE; see boundAuthorizations.
func (t *translator) peerAuthentication(pa *secv1.PeerAuthentication) *workloadv1.Authorization {
	mode := pa.Spec.GetMtls().GetMode()
	var strictPorts, relaxedPorts []uint32
	for port, m := range pa.Spec.PortLevelMtls {
		switch m.GetMode() {
		case secapi.PeerAuthentication_MutualTLS_STRICT:
			strictPorts = append(strictPorts, port)
		case secapi.PeerAuthentication_MutualTLS_PERMISSIVE, secapi.PeerAuthentication_MutualTLS_DISABLE:
			relaxedPorts = append(relaxedPorts, port)
		}
	}
	sortU32(strictPorts)
	sortU32(relaxedPorts)
	noIdentity := &workloadv1.Match{NotPrincipals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: true}}}}
	switch {
	case mode == secapi.PeerAuthentication_MutualTLS_STRICT:
		noIdentity.NotDestinationPorts = relaxedPorts
	case len(strictPorts) > 0:
		noIdentity.DestinationPorts = strictPorts
	default:
		return nil
	}
	return &workloadv1.Authorization{
		Name:      peerAuthnPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     workloadv1.Scope_WORKLOAD_SELECTOR,
		Action:    workloadv1.Action_DENY,
		Rules:     []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{noIdentity}}}}},
	}
}

func sortU32(s []uint32) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// boundAuthorizations lists the selector-scoped Authorizations that apply to pod, sorted: the
// AuthorizationPolicies whose selector matches it, and the Authorization of its effective
// PeerAuthentication, if that one has one.
func (t *translator) boundAuthorizations(pod *corev1.Pod, authz map[string]*workloadv1.Authorization) []string {
	var out []string
	for _, ap := range t.authzPolicies[pod.Namespace] {
		sel := ap.Spec.GetSelector().GetMatchLabels()
		if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(labels.Set(pod.Labels)) {
			continue
		}
		if name := pod.Namespace + "/" + ap.Name; authz[name] != nil {
			out = append(out, name)
		}
	}
	if pa := t.effectivePeerAuthn(pod); pa != nil {
		if name := pa.Namespace + "/" + peerAuthnPrefix + pa.Name; authz[name] != nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// effectivePeerAuthn picks the most specific PeerAuthentication for pod whose mode is set:
// a selector match in the pod's namespace, then the namespace's, then the root namespace's.
// Port-level settings make a workload PeerAuthentication effective even with mode UNSET.
func (t *translator) effectivePeerAuthn(pod *corev1.Pod) *secv1.PeerAuthentication {
	decides := func(pa *secv1.PeerAuthentication) bool {
		return pa.Spec.GetMtls().GetMode() != secapi.PeerAuthentication_MutualTLS_UNSET || len(pa.Spec.PortLevelMtls) > 0
	}
	for _, pa := range t.peerAuthns[pod.Namespace] {
		sel := pa.Spec.GetSelector().GetMatchLabels()
		if len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(pod.Labels)) && decides(pa) {
			return pa
		}
	}
	for _, ns := range []string{pod.Namespace, t.cfg.RootNamespace} {
		for _, pa := range t.peerAuthns[ns] {
			if len(pa.Spec.GetSelector().GetMatchLabels()) == 0 && decides(pa) {
				return pa
			}
		}
	}
	return nil
}
