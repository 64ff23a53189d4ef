package authz

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// Policies is a compiled, immutable set of Authorizations. The zero value and nil hold no
// policies. Build one with Compile.
type Policies struct {
	byName      map[string]*policy   // every policy, by "<namespace>/<name>"
	global      []*policy            // GLOBAL scope, by name
	byNamespace map[string][]*policy // NAMESPACE scope, by the policy's namespace, then name
}

// policy is one compiled Authorization.
type policy struct {
	name   string // "<namespace>/<name>", the xDS resource name
	action workloadv1.Action
	rules  []rule
}

// A rule matches when every clause matches; a clause when any of its matches matches.
type (
	rule   []clause
	clause []match
)

type match struct {
	principals, notPrincipals []strMatch
	namespaces, notNamespaces []strMatch
	srcIPs, notSrcIPs         []netip.Prefix // IPv4 prefixes are never v4-mapped
	ports, notPorts           []uint16       // sorted, unique
}

type strKind uint8

const (
	exactMatch strKind = iota + 1
	prefixMatch
	suffixMatch
	presenceMatch
)

type strMatch struct {
	kind strKind
	s    string
}

// Problem is a part of an Authorization that Compile could not use.
type Problem struct {
	// Policy is the Authorization's resource name, "<namespace>/<name>".
	Policy string
	Detail string
}

func (p Problem) Error() string { return p.Policy + ": " + p.Detail }

// Problems is the error Compile returns: every Problem, in input order.
type Problems []Problem

func (ps Problems) Error() string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

// Compile compiles auths into a Policies. It always returns a usable Policies; the error, when
// not nil, is a Problems listing what it left out or narrowed and why (see the package
// documentation), which a caller reports to the control plane as a NACK of those resources.
// Compile keeps no reference to auths.
func Compile(auths []*workloadv1.Authorization) (*Policies, error) {
	c := compiler{out: &Policies{byName: make(map[string]*policy, len(auths)), byNamespace: map[string][]*policy{}}}
	for i, a := range auths {
		if a == nil {
			c.problem(fmt.Sprintf("#%d", i), "nil Authorization")
			continue
		}
		c.authorization(a)
	}
	byName := func(a, b *policy) int { return cmp.Compare(a.name, b.name) }
	slices.SortFunc(c.out.global, byName)
	for _, ps := range c.out.byNamespace {
		slices.SortFunc(ps, byName)
	}
	if len(c.problems) > 0 {
		return c.out, c.problems
	}
	return c.out, nil
}

type compiler struct {
	out      *Policies
	problems Problems
	name     string // of the Authorization being compiled
}

func (c *compiler) problem(name, format string, args ...any) {
	c.problems = append(c.problems, Problem{Policy: name, Detail: fmt.Sprintf(format, args...)})
}

func (c *compiler) authorization(a *workloadv1.Authorization) {
	c.name = a.GetNamespace() + "/" + a.GetName()
	if c.out.byName[c.name] != nil {
		c.problem(c.name, "duplicate name: left out")
		return
	}
	switch a.GetAction() {
	case workloadv1.Action_ALLOW, workloadv1.Action_DENY, workloadv1.Action_AUDIT:
	default:
		c.problem(c.name, "unknown action %d: left out", a.GetAction())
		return
	}
	switch a.GetScope() {
	case workloadv1.Scope_GLOBAL, workloadv1.Scope_NAMESPACE, workloadv1.Scope_WORKLOAD_SELECTOR:
	default:
		c.problem(c.name, "unknown scope %d: left out", a.GetScope())
		return
	}
	p := &policy{name: c.name, action: a.GetAction()}
	// lenient: a DENY leaves out a value it cannot use (denying more); ALLOW and AUDIT drop the rule.
	lenient := p.action == workloadv1.Action_DENY
	for i, r := range a.GetRules() {
		rl, ok := c.rule(r, lenient, fmt.Sprintf("rules[%d]", i))
		if ok || lenient {
			p.rules = append(p.rules, rl)
		}
	}
	switch a.GetScope() {
	case workloadv1.Scope_GLOBAL:
		c.out.global = append(c.out.global, p)
	case workloadv1.Scope_NAMESPACE:
		c.out.byNamespace[a.GetNamespace()] = append(c.out.byNamespace[a.GetNamespace()], p)
	}
	c.out.byName[c.name] = p
}

// rule compiles r; ok is false when something in it could not be used.
func (c *compiler) rule(r *workloadv1.Rule, lenient bool, where string) (rl rule, ok bool) {
	ok = true
	for i, cl := range r.GetClauses() {
		ms := make(clause, 0, len(cl.GetMatches()))
		for j, m := range cl.GetMatches() {
			cm, mok := c.match(m, fmt.Sprintf("%s.clauses[%d].matches[%d]", where, i, j))
			ok = ok && mok
			ms = append(ms, cm)
		}
		rl = append(rl, ms)
	}
	if !ok && !lenient {
		c.problem(c.name, "%s: rule left out", where)
	}
	return rl, ok
}

func (c *compiler) match(m *workloadv1.Match, where string) (match, bool) {
	ok := true
	strs := func(field string, in []*workloadv1.StringMatch) []strMatch {
		var out []strMatch
		for i, sm := range in {
			s, err := compileString(sm)
			if err != nil {
				c.problem(c.name, "%s.%s[%d]: %v", where, field, i, err)
				ok = false
				continue
			}
			out = append(out, s)
		}
		return out
	}
	ips := func(field string, in []*workloadv1.Address) []netip.Prefix {
		var out []netip.Prefix
		for i, a := range in {
			p, err := compilePrefix(a)
			if err != nil {
				c.problem(c.name, "%s.%s[%d]: %v", where, field, i, err)
				ok = false
				continue
			}
			out = append(out, p)
		}
		return out
	}
	ports := func(field string, in []uint32) []uint16 {
		var out []uint16
		for i, p := range in {
			if p == 0 || p > 65535 {
				c.problem(c.name, "%s.%s[%d]: port %d is not in 1-65535", where, field, i, p)
				ok = false
				continue
			}
			out = append(out, uint16(p))
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	out := match{
		principals:    strs("principals", m.GetPrincipals()),
		notPrincipals: strs("not_principals", m.GetNotPrincipals()),
		namespaces:    strs("namespaces", m.GetNamespaces()),
		notNamespaces: strs("not_namespaces", m.GetNotNamespaces()),
		srcIPs:        ips("source_ips", m.GetSourceIps()),
		notSrcIPs:     ips("not_source_ips", m.GetNotSourceIps()),
		ports:         ports("destination_ports", m.GetDestinationPorts()),
		notPorts:      ports("not_destination_ports", m.GetNotDestinationPorts()),
	}
	return out, ok
}

func compileString(sm *workloadv1.StringMatch) (strMatch, error) {
	switch t := sm.GetMatchType().(type) {
	case *workloadv1.StringMatch_Exact:
		return strMatch{kind: exactMatch, s: t.Exact}, nil
	case *workloadv1.StringMatch_Prefix:
		return strMatch{kind: prefixMatch, s: t.Prefix}, nil
	case *workloadv1.StringMatch_Suffix:
		return strMatch{kind: suffixMatch, s: t.Suffix}, nil
	case *workloadv1.StringMatch_Presence:
		if t.Presence {
			return strMatch{kind: presenceMatch}, nil
		}
		return strMatch{}, fmt.Errorf("presence is false")
	default:
		return strMatch{}, fmt.Errorf("string match has no kind")
	}
}

// compilePrefix masks the prefix and turns one within ::ffff:0:0/96 into the IPv4 prefix it
// covers, as Check matches a v4-mapped peer address as IPv4.
func compilePrefix(a *workloadv1.Address) (netip.Prefix, error) {
	addr, ok := netip.AddrFromSlice(a.GetAddress())
	if !ok {
		return netip.Prefix{}, fmt.Errorf("address of %d bytes, want 4 or 16", len(a.GetAddress()))
	}
	bits := a.GetLength()
	if bits > uint32(addr.BitLen()) {
		return netip.Prefix{}, fmt.Errorf("prefix length %d is longer than the %d-bit address", bits, addr.BitLen())
	}
	if addr.Is4In6() && bits >= 96 {
		return netip.PrefixFrom(addr.Unmap(), int(bits)-96).Masked(), nil
	}
	return netip.PrefixFrom(addr, int(bits)).Masked(), nil
}
