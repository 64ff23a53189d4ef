package model_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/ztunnel/authz"
)

// FuzzPolicyInvariants builds pods, AuthorizationPolicies and PeerAuthentications from the fuzzer's
// bytes, translates them, and decides every connection of a small universe (peers with and
// without identities, addresses, ports) the way the destination's ztunnel does. It checks:
//
//   - safety: a connection ztunnel allows is allowed by Istio's semantics whatever the L7 attributes
//     of the requests it will carry (ref below: attributes ztunnel cannot see are unknown, a
//     policy that might deny does);
//   - exactness: where no applicable policy holds anything ztunnel cannot enforce as written,
//     ztunnel decides exactly as Istio's semantics do;
//   - a DENY never widens what is allowed: adding one allows nothing new;
//   - removing an ALLOW never allows more: dropping a rule of an ALLOW policy allows nothing new,
//     nor does removing an ALLOW policy from a workload another ALLOW policy still applies to;
//   - STRICT never admits a plaintext peer.
//
// The seed corpus runs with the unit tests; TestPolicyInvariantsRandom runs a few hundred more.
func FuzzPolicyInvariants(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		[]byte("\x02\x01\x00\x01\x02\x03\x01\x01\x01\x01\x02\x01\x01\x00\x01\x03\x01\x02"),
		[]byte("peer authentication, port level, inherited STRICT"),
		[]byte("\x03\x02\x05\x01\x03\x01\x02\x00\x01\x01\x01\x01\x01\x01\x01\x01\x02\x02\x02\x02\x03\x03"),
		[]byte("\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed\xec\xeb\xea"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkInvariants(t, genScenario(&gen{b: data})) })
}

// TestPolicyInvariantsRandom runs the fuzz target's checks over pseudo-random scenarios, a fixed
// sequence, so that they cover more than the seed corpus in every unit test run.
func TestPolicyInvariantsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 7))
	n := 300
	if testing.Short() {
		n = 50
	}
	for i := range n {
		data := make([]byte, 64+rng.IntN(192))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		sc := genScenario(&gen{b: data})
		if !t.Run(strconv.Itoa(i), func(t *testing.T) { checkInvariants(t, sc) }) {
			t.Logf("input: %q", data)
			return
		}
	}
}

// --- The scenario, from bytes.

// gen draws choices from the fuzzer's bytes; once they run out every choice is the first.
type gen struct {
	b []byte
	i int
}

func (g *gen) n(k int) int {
	if k <= 1 || g.i >= len(g.b) {
		return 0
	}
	v := int(g.b[g.i])
	g.i++
	return v % k
}

// some says whether to set an optional field: one time in four.
func (g *gen) some() bool { return g.n(4) == 1 }

func pick[T any](g *gen, from []T) T { return from[g.n(len(from))] }

func picks(g *gen, from []string) []string {
	out := make([]string, 1+g.n(3))
	for i := range out {
		out[i] = pick(g, from)
	}
	return out
}

const rootNS = "istio-system"

var (
	fuzzNamespaces = []string{rootNS, "shop", "other"}
	// Peers: plaintext, identities of the mesh, and one of another trust domain.
	fuzzPrincipals = []string{"", "cluster.local/ns/shop/sa/a", "cluster.local/ns/other/sa/b",
		"cluster.local/ns/istio-system/sa/a", "example.org/ns/shop/sa/a"}
	fuzzIPs   = []string{"10.7.0.1", "10.8.0.1", "10.7.9.9"}
	fuzzPorts = []uint16{80, 8080, 9090}

	principalPool = []string{"cluster.local/ns/shop/sa/a", "cluster.local/ns/other/*", "*/sa/b", "*",
		"example.org/ns/shop/sa/a", ""}
	namespacePool = []string{"shop", "other", rootNS, "sh*", "*er", "*"}
	saPool        = []string{"shop/a", "other/b", "a", "b", "bad/x/y", "*"}
	ipPool        = []string{"10.7.0.0/16", "10.8.0.1", "10.7.9.9/32", "bogus", "::/0", "0.0.0.0/0"}
	portPool      = []string{"80", "8080", "9090", "http", "0"}
	tdPool        = []string{"cluster.local", "cluster*", "*.org", "*", "example.org", ""}
	l7Pool        = []string{"GET", "/admin", "*"}
	whenKeys      = []string{"source.ip", "source.namespace", "source.principal", "destination.port",
		"destination.ip", "remote.ip", "request.headers[x-user]", "request.auth.claims[iss]"}
)

type scenario struct {
	pods []*corev1.Pod
	aps  []*secv1.AuthorizationPolicy
	pas  []*secv1.PeerAuthentication
}

func (sc scenario) input() model.Input {
	var in model.Input
	for _, ns := range fuzzNamespaces {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}})
	}
	in.Pods, in.AuthorizationPolicies, in.PeerAuthentications = sc.pods, sc.aps, sc.pas
	return in
}

func (sc scenario) String() string {
	var b strings.Builder
	for _, p := range sc.pods {
		fmt.Fprintf(&b, "pod %s/%s %v\n", p.Namespace, p.Name, p.Labels)
	}
	for _, ap := range sc.aps {
		fmt.Fprintf(&b, "AuthorizationPolicy %s/%s %v: %v\n", ap.Namespace, ap.Name, ap.Annotations, &ap.Spec)
	}
	for _, pa := range sc.pas {
		fmt.Fprintf(&b, "PeerAuthentication %s/%s %v: %v\n", pa.Namespace, pa.Name, pa.CreationTimestamp.Time, &pa.Spec)
	}
	return b.String()
}

func genScenario(g *gen) scenario {
	var sc scenario
	for i := range 1 + g.n(3) {
		l := map[string]string{"app": pick(g, []string{"a", "b"})}
		if g.some() {
			l["tier"] = pick(g, []string{"x", "y"})
		}
		ns := pick(g, fuzzNamespaces)
		sc.pods = append(sc.pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", i), UID: types.UID(fmt.Sprintf("uid-%d", i)),
				Labels: l, Annotations: map[string]string{mesh.AnnotationRedirection: mesh.RedirectionEnabled}},
			Spec:   corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i), ServiceAccountName: pick(g, []string{"a", "b"})},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.%d.0.1", 10+i)},
		})
	}
	// PeerAuthentications first: they take few bytes, and AuthorizationPolicies may use up the rest.
	for i := range g.n(4) {
		sc.pas = append(sc.pas, genPeerAuthentication(g, fmt.Sprintf("pa%d", i)))
	}
	for i := range g.n(5) {
		sc.aps = append(sc.aps, genAuthorizationPolicy(g, fmt.Sprintf("ap%d", i), -1))
	}
	return sc
}

func genSelector(g *gen) *typeapi.WorkloadSelector {
	switch g.n(6) {
	case 1:
		return &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "a"}}
	case 2:
		return &typeapi.WorkloadSelector{MatchLabels: map[string]string{"tier": "x"}}
	case 3:
		return &typeapi.WorkloadSelector{MatchLabels: map[string]string{}}
	}
	return nil
}

// genAuthorizationPolicy draws a policy; action, when not negative, is forced.
func genAuthorizationPolicy(g *gen, name string, action secapi.AuthorizationPolicy_Action) *secv1.AuthorizationPolicy {
	ap := &secv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: pick(g, fuzzNamespaces), Name: name}}
	ap.Spec.Selector = genSelector(g)
	if ap.Spec.Selector == nil && g.n(8) == 1 {
		ap.Spec.TargetRefs = []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "web"}}
	}
	ap.Spec.Action = pick(g, []secapi.AuthorizationPolicy_Action{secapi.AuthorizationPolicy_ALLOW, secapi.AuthorizationPolicy_ALLOW,
		secapi.AuthorizationPolicy_DENY, secapi.AuthorizationPolicy_DENY, secapi.AuthorizationPolicy_AUDIT, secapi.AuthorizationPolicy_CUSTOM})
	if action >= 0 {
		ap.Spec.Action = action
	}
	if g.n(10) == 1 {
		ap.Annotations = map[string]string{"istio.io/dry-run": "true"}
	}
	for range g.n(4) {
		r := &secapi.Rule{}
		for range g.n(3) {
			r.From = append(r.From, &secapi.Rule_From{Source: genSource(g)})
		}
		for range g.n(3) {
			r.To = append(r.To, &secapi.Rule_To{Operation: genOperation(g)})
		}
		for range g.n(3) {
			r.When = append(r.When, genCondition(g))
		}
		ap.Spec.Rules = append(ap.Spec.Rules, r)
	}
	return ap
}

func genSource(g *gen) *secapi.Source {
	s := &secapi.Source{}
	for _, f := range []struct {
		field *[]string
		pool  []string
	}{
		{&s.Principals, principalPool}, {&s.NotPrincipals, principalPool},
		{&s.Namespaces, namespacePool}, {&s.NotNamespaces, namespacePool},
		{&s.ServiceAccounts, saPool}, {&s.NotServiceAccounts, saPool},
		{&s.IpBlocks, ipPool}, {&s.NotIpBlocks, ipPool},
		{&s.TrustDomains, tdPool}, {&s.NotTrustDomains, tdPool},
		{&s.RemoteIpBlocks, ipPool}, {&s.NotRemoteIpBlocks, ipPool},
		{&s.RequestPrincipals, l7Pool}, {&s.NotRequestPrincipals, l7Pool},
	} {
		if g.n(6) == 1 {
			*f.field = picks(g, f.pool)
		}
	}
	return s
}

func genOperation(g *gen) *secapi.Operation {
	o := &secapi.Operation{}
	for _, f := range []struct {
		field *[]string
		pool  []string
	}{
		{&o.Ports, portPool}, {&o.Ports, portPool}, {&o.NotPorts, portPool},
		{&o.Hosts, l7Pool}, {&o.NotHosts, l7Pool}, {&o.Methods, l7Pool},
		{&o.NotMethods, l7Pool}, {&o.Paths, l7Pool}, {&o.NotPaths, l7Pool},
	} {
		if g.n(6) == 1 {
			*f.field = picks(g, f.pool)
		}
	}
	return o
}

func genCondition(g *gen) *secapi.Condition {
	c := &secapi.Condition{Key: pick(g, whenKeys)}
	pool := map[string][]string{
		"source.ip": ipPool, "remote.ip": ipPool, "source.namespace": namespacePool,
		"source.principal": principalPool, "destination.port": portPool,
		"destination.ip": {"10.10.0.1", "10.11.0.0/16", "bogus"},
	}[c.Key]
	if pool == nil {
		pool = l7Pool
	}
	if g.n(3) != 0 {
		c.Values = picks(g, pool)
	}
	if g.n(3) == 1 {
		c.NotValues = picks(g, pool)
	}
	return c
}

func genPeerAuthentication(g *gen, name string) *secv1.PeerAuthentication {
	pa := &secv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: pick(g, fuzzNamespaces), Name: name,
		// Ties are possible: the name decides them.
		CreationTimestamp: metav1.NewTime(time.Date(2025, 1, 1+g.n(3), 0, 0, 0, 0, time.UTC))}}
	// Workload-level policies, whose inheritance has the most rules, are drawn more often.
	if g.n(3) != 0 {
		pa.Spec.Selector = genSelector(g)
	} else {
		pa.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "a"}}
	}
	modes := []secapi.PeerAuthentication_MutualTLS_Mode{secapi.PeerAuthentication_MutualTLS_UNSET,
		secapi.PeerAuthentication_MutualTLS_STRICT, secapi.PeerAuthentication_MutualTLS_PERMISSIVE, secapi.PeerAuthentication_MutualTLS_DISABLE}
	if g.n(5) != 0 {
		pa.Spec.Mtls = &secapi.PeerAuthentication_MutualTLS{Mode: pick(g, modes)}
	}
	for range g.n(3) {
		if pa.Spec.PortLevelMtls == nil {
			pa.Spec.PortLevelMtls = map[uint32]*secapi.PeerAuthentication_MutualTLS{}
		}
		pa.Spec.PortLevelMtls[pick(g, []uint32{80, 8080, 9090, 0})] = &secapi.PeerAuthentication_MutualTLS{Mode: pick(g, modes)}
	}
	return pa
}

// --- The invariants.

type conn struct {
	pod       *corev1.Pod
	principal string
	ip        string
	port      uint16
}

func (c conn) String() string {
	p := c.principal
	if p == "" {
		p = "plaintext"
	}
	return fmt.Sprintf("%s@%s → %s/%s:%d", p, c.ip, c.pod.Namespace, c.pod.Name, c.port)
}

func (sc scenario) conns() []conn {
	var out []conn
	for _, p := range sc.pods {
		for _, pr := range fuzzPrincipals {
			for _, ip := range fuzzIPs {
				for _, port := range fuzzPorts {
					out = append(out, conn{p, pr, ip, port})
				}
			}
		}
	}
	return out
}

// allowed returns ztunnel's decision for every connection of sc.conns, in order.
func allowed(t *testing.T, sc scenario) []bool {
	t.Helper()
	v := translate(t, sc.input())
	var out []bool
	for _, c := range sc.conns() {
		d := v.decideConn(t, c.pod.Namespace+"/"+c.pod.Name,
			authz.Conn{SrcIP: netip.MustParseAddr(c.ip), DstPort: c.port, Principal: c.principal})
		out = append(out, d.Allow)
	}
	return out
}

func checkInvariants(t *testing.T, sc scenario) {
	conns := sc.conns()
	got := allowed(t, sc)
	for i, c := range conns {
		r := &ref{sc: sc}
		want := r.decide(c)
		switch {
		case c.principal == "" && r.strict(c.pod, c.port) && got[i]:
			t.Fatalf("%v: STRICT admitted a plaintext peer\n%v", c, sc)
		case got[i] && !want:
			t.Fatalf("%v: ztunnel allows what Istio's semantics may deny\n%v", c, sc)
		case !r.inexact && got[i] != want:
			t.Fatalf("%v: ztunnel allow = %v, Istio's semantics (nothing ztunnel cannot enforce) = %v\n%v", c, got[i], want, sc)
		}
	}
	// A DENY never widens what is allowed.
	g := &gen{b: []byte(fmt.Sprint(len(sc.aps), len(sc.pas), len(sc.pods), sc.pods[0].Namespace))}
	withDeny := sc
	withDeny.aps = append(slices.Clone(sc.aps), genAuthorizationPolicy(g, "added-deny", secapi.AuthorizationPolicy_DENY))
	for i, a := range allowed(t, withDeny) {
		if a && !got[i] {
			t.Fatalf("%v: allowed once a DENY was added\n%v", conns[i], withDeny)
		}
	}
	// Removing an ALLOW never allows more.
	for k, ap := range sc.aps {
		if ap.Spec.Action != secapi.AuthorizationPolicy_ALLOW {
			continue
		}
		if len(ap.Spec.Rules) > 0 {
			fewer := sc
			fewer.aps = slices.Clone(sc.aps)
			cp := ap.DeepCopy()
			cp.Spec.Rules = cp.Spec.Rules[1:]
			fewer.aps[k] = cp
			for i, a := range allowed(t, fewer) {
				if a && !got[i] {
					t.Fatalf("%v: allowed once a rule of ALLOW %s/%s was removed\n%v", conns[i], ap.Namespace, ap.Name, sc)
				}
			}
		}
		without := sc
		without.aps = slices.Delete(slices.Clone(sc.aps), k, k+1)
		r := &ref{sc: without}
		for i, a := range allowed(t, without) {
			if a && !got[i] && r.allowApplies(conns[i].pod) {
				t.Fatalf("%v: allowed once ALLOW %s/%s was removed, though an ALLOW still applies\n%v", conns[i], ap.Namespace, ap.Name, sc)
			}
		}
		break // one is enough per scenario
	}
}

// --- The reference: Istio's semantics, written from its documentation independently of the
// translation, over three truth values. An attribute ztunnel cannot see (HTTP, JWT, forwarded
// addresses) is unknown: a request on the connection may or may not have it.

type tri int8

const (
	no tri = iota
	unknown
	yes
)

func not(a tri) tri { return yes - a }

type ref struct {
	sc scenario
	// inexact: something in an applicable policy makes ztunnel's enforcement differ from the
	// semantics by design (stricter): an unknown attribute, an invalid value, CUSTOM, a
	// trust-domain suffix, several principal-like lists in one source.
	inexact bool
}

func (r *ref) strict(pod *corev1.Pod, port uint16) bool {
	oldest := func(match func(*secv1.PeerAuthentication) bool) *secv1.PeerAuthentication {
		var best *secv1.PeerAuthentication
		for _, pa := range r.sc.pas {
			if !match(pa) {
				continue
			}
			if best == nil || pa.CreationTimestamp.Before(&best.CreationTimestamp) ||
				(pa.CreationTimestamp.Equal(&best.CreationTimestamp) && pa.Name < best.Name) {
				best = pa
			}
		}
		return best
	}
	noSelector := func(pa *secv1.PeerAuthentication) bool { return len(pa.Spec.GetSelector().GetMatchLabels()) == 0 }
	meshPA := oldest(func(pa *secv1.PeerAuthentication) bool { return pa.Namespace == rootNS && noSelector(pa) })
	nsPA := oldest(func(pa *secv1.PeerAuthentication) bool { return pa.Namespace == pod.Namespace && noSelector(pa) })
	var workloadPA *secv1.PeerAuthentication
	if pod.Namespace != rootNS {
		workloadPA = oldest(func(pa *secv1.PeerAuthentication) bool {
			return pa.Namespace == pod.Namespace && !noSelector(pa) &&
				labels.SelectorFromSet(pa.Spec.Selector.MatchLabels).Matches(labels.Set(pod.Labels))
		})
	}
	mode := secapi.PeerAuthentication_MutualTLS_PERMISSIVE
	for _, pa := range []*secv1.PeerAuthentication{meshPA, nsPA, workloadPA} {
		if pa != nil && pa.Spec.GetMtls().GetMode() != secapi.PeerAuthentication_MutualTLS_UNSET {
			mode = pa.Spec.GetMtls().GetMode()
		}
	}
	if workloadPA != nil {
		if m := workloadPA.Spec.PortLevelMtls[uint32(port)]; m.GetMode() != secapi.PeerAuthentication_MutualTLS_UNSET {
			mode = m.GetMode()
		}
	}
	return mode == secapi.PeerAuthentication_MutualTLS_STRICT
}

// applies reports whether ap applies at pod's ztunnel.
func applies(ap *secv1.AuthorizationPolicy, pod *corev1.Pod) bool {
	if ap.Spec.TargetRef != nil || len(ap.Spec.TargetRefs) > 0 {
		return false // a waypoint's
	}
	if ap.Namespace != rootNS && ap.Namespace != pod.Namespace {
		return false
	}
	sel := ap.Spec.GetSelector().GetMatchLabels()
	return len(sel) == 0 || labels.SelectorFromSet(sel).Matches(labels.Set(pod.Labels))
}

func enforced(ap *secv1.AuthorizationPolicy) bool {
	return ap.Annotations["istio.io/dry-run"] != "true"
}

func (r *ref) allowApplies(pod *corev1.Pod) bool {
	for _, ap := range r.sc.aps {
		if applies(ap, pod) && enforced(ap) && ap.Spec.Action == secapi.AuthorizationPolicy_ALLOW {
			return true
		}
	}
	return false
}

// decide reports whether Istio's semantics allow c whatever its requests' L7 attributes.
func (r *ref) decide(c conn) bool {
	if c.principal == "" && r.strict(c.pod, c.port) {
		return false
	}
	deny, allowApplies, allowMatched := false, false, false
	for _, ap := range r.sc.aps {
		if !applies(ap, c.pod) || !enforced(ap) {
			continue
		}
		switch ap.Spec.Action {
		case secapi.AuthorizationPolicy_ALLOW:
			allowApplies = true
			allowMatched = allowMatched || r.policy(ap, c) == yes
		case secapi.AuthorizationPolicy_DENY:
			deny = deny || r.policy(ap, c) != no
		case secapi.AuthorizationPolicy_CUSTOM:
			// The external authorizer may deny whatever the rules match.
			r.inexact = true
			deny = deny || r.policy(ap, c) != no
		}
	}
	return !deny && (!allowApplies || allowMatched)
}

func (r *ref) policy(ap *secv1.AuthorizationPolicy, c conn) tri {
	m := no
	for _, rule := range ap.Spec.Rules {
		m = max(m, r.rule(ap.Namespace, rule, c))
	}
	return m
}

func (r *ref) rule(ns string, rule *secapi.Rule, c conn) tri {
	m := yes
	if len(rule.From) > 0 {
		from := no
		for _, f := range rule.From {
			from = max(from, r.source(ns, f.GetSource(), c))
		}
		m = min(m, from)
	}
	if len(rule.To) > 0 {
		to := no
		for _, o := range rule.To {
			to = max(to, r.operation(o.GetOperation(), c))
		}
		m = min(m, to)
	}
	for _, w := range rule.When {
		m = min(m, r.condition(w, c))
	}
	return m
}

// field is a positive list: it holds when empty or when a value matches.
func field(values []string, match func(string) tri) tri {
	if len(values) == 0 {
		return yes
	}
	m := no
	for _, v := range values {
		m = max(m, match(v))
	}
	return m
}

// notField is a negative list: it holds when no value matches.
func notField(values []string, match func(string) tri) tri {
	if len(values) == 0 {
		return yes
	}
	return not(field(values, match))
}

func (r *ref) unknownField(values []string) tri {
	if len(values) == 0 {
		return yes
	}
	r.inexact = true
	return unknown
}

func (r *ref) source(ns string, s *secapi.Source, c conn) tri {
	if s == nil {
		return yes
	}
	lists := 0
	for _, l := range [][]string{s.Principals, s.ServiceAccounts, s.TrustDomains} {
		if len(l) > 0 {
			lists++
		}
	}
	if lists > 1 {
		r.inexact = true
	}
	principal := func(p string) tri { return of(pattern(p, c.principal)) }
	namespace := func(p string) tri { return of(pattern(p, peerNamespace(c.principal))) }
	sa := func(v string) tri {
		sns, name, ok := strings.Cut(v, "/")
		if !ok {
			sns, name = ns, v
		}
		if sns == "" || name == "" || strings.ContainsAny(v, "*") || strings.Contains(name, "/") {
			r.inexact = true
			return no
		}
		return of(c.principal == "cluster.local/ns/"+sns+"/sa/"+name)
	}
	td := func(p string) tri {
		if p == "" || strings.Contains(p, "/") {
			r.inexact = true
			return no
		}
		if strings.HasPrefix(p, "*") && p != "*" {
			r.inexact = true
		}
		d, _, _ := strings.Cut(c.principal, "/")
		return of(pattern(p, d))
	}
	ip := func(p string) tri { return r.ipMatch(p, c.ip) }
	return min(
		field(s.Principals, principal), notField(s.NotPrincipals, principal),
		field(s.Namespaces, namespace), notField(s.NotNamespaces, namespace),
		field(s.ServiceAccounts, sa), notField(s.NotServiceAccounts, sa),
		field(s.TrustDomains, td), notField(s.NotTrustDomains, td),
		field(s.IpBlocks, ip), notField(s.NotIpBlocks, ip),
		r.unknownField(s.RemoteIpBlocks), r.unknownField(s.NotRemoteIpBlocks),
		r.unknownField(s.RequestPrincipals), r.unknownField(s.NotRequestPrincipals),
	)
}

func (r *ref) operation(o *secapi.Operation, c conn) tri {
	if o == nil {
		return yes
	}
	port := func(p string) tri { return r.portMatch(p, c.port) }
	return min(
		field(o.Ports, port), notField(o.NotPorts, port),
		r.unknownField(o.Hosts), r.unknownField(o.NotHosts), r.unknownField(o.Methods),
		r.unknownField(o.NotMethods), r.unknownField(o.Paths), r.unknownField(o.NotPaths),
	)
}

func (r *ref) condition(w *secapi.Condition, c conn) tri {
	var match func(string) tri
	switch w.Key {
	case "source.ip":
		match = func(p string) tri { return r.ipMatch(p, c.ip) }
	case "source.namespace":
		match = func(p string) tri { return of(pattern(p, peerNamespace(c.principal))) }
	case "source.principal":
		match = func(p string) tri { return of(pattern(p, c.principal)) }
	case "destination.port":
		match = func(p string) tri { return r.portMatch(p, c.port) }
	case "destination.ip":
		r.inexact = true // no destination address in the workload API
		match = func(p string) tri { return r.ipMatch(p, c.pod.Status.PodIP) }
	default:
		r.inexact = true
		return unknown
	}
	return min(field(w.Values, match), notField(w.NotValues, match))
}

func (r *ref) ipMatch(p, ip string) tri {
	var pfx netip.Prefix
	var err error
	if strings.Contains(p, "/") {
		pfx, err = netip.ParsePrefix(p)
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(p); err == nil {
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil {
		r.inexact = true
		return no // matches no address
	}
	return of(pfx.Contains(netip.MustParseAddr(ip)))
}

func (r *ref) portMatch(p string, port uint16) tri {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		r.inexact = true
		return no // matches no port
	}
	return of(uint16(n) == port)
}

func of(b bool) tri {
	if b {
		return yes
	}
	return no
}

// pattern is Istio's string match: "*" any non-empty value, "*x" suffix, "x*" prefix, else exact.
// An absent value ("") matches nothing.
func pattern(p, v string) bool {
	switch {
	case v == "":
		return false
	case p == "*":
		return true
	case strings.HasPrefix(p, "*"):
		return strings.HasSuffix(v, p[1:])
	case strings.HasSuffix(p, "*"):
		return strings.HasPrefix(v, p[:len(p)-1])
	}
	return p == v
}

// peerNamespace is the namespace of a principal "<td>/ns/<ns>/sa/<sa>", "" for none.
func peerNamespace(principal string) string {
	parts := strings.Split(principal, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return ""
	}
	return parts[2]
}
