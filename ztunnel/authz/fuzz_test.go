package authz

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// gen builds policies, targets and connections from fuzz input, from a small vocabulary so that
// matches are frequent, with values Compile must reject among them.
type gen struct{ b []byte }

func (g *gen) n(k int) int {
	if len(g.b) == 0 {
		return 0
	}
	v := g.b[0]
	g.b = g.b[1:]
	return int(v) % k
}

func pick[T any](g *gen, vs ...T) T { return vs[g.n(len(vs))] }

var (
	fuzzPrincipals = []string{sleepPrinc, principal("client", "web"), principal("other", "x"), "no/namespace", "", "spiffe://" + sleepPrinc}
	fuzzIPs        = []string{"10.0.0.5", "10.1.2.3", "fd00::5", "::ffff:10.0.0.5", "192.0.2.1", "fe80::1%eth0"}
	fuzzPorts      = []uint16{80, 443, 8080, 9090}
)

func (g *gen) principalMatch() *workloadv1.StringMatch {
	return pick(g, exact(sleepPrinc), exact(principal("client", "web")), prefix(trustDomain+"/ns/client/"),
		suffix("/sa/web"), presence(), exact(""), &workloadv1.StringMatch{})
}

func (g *gen) namespaceMatch() *workloadv1.StringMatch {
	return pick(g, exact("client"), exact("other"), prefix("cl"), suffix("er"), presence(),
		&workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{}})
}

func (g *gen) address() *workloadv1.Address {
	return pick(g, cidr("10.0.0.0/8"), cidr("10.0.0.0/24"), cidr("fd00::/8"), cidr("::ffff:10.0.0.0/104"), cidr("::/0"),
		cidr("0.0.0.0/0"), &workloadv1.Address{Address: []byte{10, 0, 0}, Length: 8}, &workloadv1.Address{Address: []byte{10, 0, 0, 0}, Length: 40})
}

func (g *gen) port() uint32 { return pick[uint32](g, 80, 443, 8080, 0, 70000) }

func some[T any](g *gen, f func() T) []T {
	if g.n(3) != 0 {
		return nil
	}
	out := []T{f()}
	if g.n(2) == 0 {
		out = append(out, f())
	}
	return out
}

func (g *gen) match() *workloadv1.Match {
	return &workloadv1.Match{
		Principals:          some(g, g.principalMatch),
		NotPrincipals:       some(g, g.principalMatch),
		Namespaces:          some(g, g.namespaceMatch),
		NotNamespaces:       some(g, g.namespaceMatch),
		SourceIps:           some(g, g.address),
		NotSourceIps:        some(g, g.address),
		DestinationPorts:    some(g, g.port),
		NotDestinationPorts: some(g, g.port),
	}
}

func (g *gen) rules() []*workloadv1.Rule {
	var rules []*workloadv1.Rule
	for range g.n(3) {
		r := &workloadv1.Rule{}
		for range g.n(3) {
			c := &workloadv1.Clause{}
			for range g.n(3) + pick(g, 1, 1, 1, 0) { // a clause without matches now and then
				c.Matches = append(c.Matches, g.match())
			}
			r.Clauses = append(r.Clauses, c)
		}
		rules = append(rules, r)
	}
	return rules
}

func (g *gen) authorization(name string) *workloadv1.Authorization {
	return &workloadv1.Authorization{
		Name:      name,
		Namespace: pick(g, serverNS, serverNS, "other", rootNS),
		Scope:     pick(g, workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Scope_NAMESPACE, workloadv1.Scope_GLOBAL, 5),
		Action:    pick(g, workloadv1.Action_ALLOW, workloadv1.Action_ALLOW, workloadv1.Action_DENY, workloadv1.Action_AUDIT, 7),
		Rules:     g.rules(),
	}
}

func resourceName(a *workloadv1.Authorization) string { return a.GetNamespace() + "/" + a.GetName() }

// applies reports whether Compile keeps a and Check applies it to t; it restates the scope rules
// independently of the code under test.
func applies(a *workloadv1.Authorization, t Target) bool {
	switch a.GetAction() {
	case workloadv1.Action_ALLOW, workloadv1.Action_DENY, workloadv1.Action_AUDIT:
	default:
		return false
	}
	switch a.GetScope() {
	case workloadv1.Scope_GLOBAL:
		return true
	case workloadv1.Scope_NAMESPACE:
		return a.GetNamespace() == t.Namespace || slices.Contains(t.PolicyNames, resourceName(a))
	case workloadv1.Scope_WORKLOAD_SELECTOR:
		return slices.Contains(t.PolicyNames, resourceName(a))
	}
	return false
}

func check(t *testing.T, auths []*workloadv1.Authorization, target Target, c Conn) Decision {
	t.Helper()
	p, _ := Compile(auths)
	if p == nil {
		t.Fatal("Compile returned no Policies")
	}
	d := p.Check(target, &c)
	wantAllow := d.Reason == ReasonNoAllowPolicy || d.Reason == ReasonAllowMatched
	wantPolicy := d.Reason == ReasonAllowMatched || d.Reason == ReasonDenyMatched || d.Reason == ReasonUnknownPolicy
	if d.Allow != wantAllow || (d.Policy != "") != wantPolicy || d.Reason == 0 {
		t.Fatalf("inconsistent decision %+v", d)
	}
	return d
}

func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x03\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x00\x02\x00\x00\x01\x00"))
	f.Add([]byte("a policy set built from these bytes, long enough to have several policies and rules in it"))
	f.Add([]byte{5, 1, 0, 2, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 2, 1, 1, 0, 3, 1, 2, 2, 2, 2, 2, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &gen{b: data}
		var auths []*workloadv1.Authorization
		for i := range g.n(7) {
			auths = append(auths, g.authorization(fmt.Sprintf("p%d", i)))
		}
		target := Target{Namespace: pick(g, serverNS, "other")}
		for _, a := range auths {
			if g.n(2) == 0 {
				target.PolicyNames = append(target.PolicyNames, resourceName(a))
			}
		}
		if g.n(8) == 0 {
			target.PolicyNames = append(target.PolicyNames, "server/missing")
		}
		c := Conn{
			SrcIP:     netip.MustParseAddr(pick(g, fuzzIPs...)),
			DstPort:   pick(g, fuzzPorts...),
			Principal: pick(g, fuzzPrincipals...),
		}
		base := check(t, auths, target, c)

		// The order of the resources does not change the outcome.
		reversed := slices.Clone(auths)
		slices.Reverse(reversed)
		if d := check(t, reversed, target, c); d.Allow != base.Allow {
			t.Fatalf("reversed order: %+v, in order: %+v", d, base)
		}

		// Adding a DENY never turns a deny into an allow.
		deny := g.authorization("extra")
		deny.Action = workloadv1.Action_DENY
		withDeny := append(slices.Clone(auths), deny)
		dt := target // the workload may name it, as it names a selector policy that selects it
		if g.n(2) == 0 {
			dt.PolicyNames = append(slices.Clone(target.PolicyNames), resourceName(deny))
		}
		if d := check(t, withDeny, dt, c); d.Allow && !base.Allow {
			t.Fatalf("adding DENY %v allowed a denied connection: %+v, before %+v", deny, d, base)
		}

		// Adding an AUDIT that matches everything changes nothing but Decision.Audit.
		audit := &workloadv1.Authorization{Name: "audit", Namespace: rootNS, Scope: workloadv1.Scope_GLOBAL, Action: workloadv1.Action_AUDIT, Rules: []*workloadv1.Rule{{}}}
		d := check(t, append(slices.Clone(auths), audit), target, c)
		if d.Audit == "" || d.Allow != base.Allow || d.Reason != base.Reason || d.Policy != base.Policy {
			t.Fatalf("adding AUDIT changed %+v into %+v", base, d)
		}

		// Removing an ALLOW never allows more, as long as another ALLOW still applies (removing the
		// last one allows everything not denied, as Istio does).
		for i, a := range auths {
			if a.GetAction() != workloadv1.Action_ALLOW {
				continue
			}
			rest := slices.Delete(slices.Clone(auths), i, i+1)
			if !slices.ContainsFunc(rest, func(r *workloadv1.Authorization) bool {
				return r.GetAction() == workloadv1.Action_ALLOW && applies(r, target)
			}) {
				continue
			}
			if d := check(t, rest, target, c); d.Allow && !base.Allow {
				t.Fatalf("removing ALLOW %v allowed a denied connection: %+v, before %+v", a, d, base)
			}
		}
	})
}

// FuzzCompileProto feeds Compile whatever an xDS peer could send: it must not panic, and Check
// must give a consistent decision.
func FuzzCompileProto(f *testing.F) {
	for _, a := range []*workloadv1.Authorization{
		peerAuthn(serverNS, "strict", true, 8080),
		allowNS("p", ruleOf(clauseOf(&workloadv1.Match{SourceIps: cidrs("10.0.0.0/8", "::ffff:10.0.0.0/104"), Namespaces: strs(prefix("c"))}))),
	} {
		b, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &workloadv1.Authorization{}
		if proto.Unmarshal(data, a) != nil {
			return
		}
		target := Target{Namespace: a.GetNamespace(), PolicyNames: []string{resourceName(a)}}
		for _, ip := range fuzzIPs {
			for _, pr := range fuzzPrincipals {
				check(t, []*workloadv1.Authorization{a}, target, Conn{SrcIP: netip.MustParseAddr(ip), DstPort: 8080, Principal: pr})
			}
		}
	})
}
