package authz

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

type M = workloadv1.Match

func allowedBy(policy string) Decision {
	return Decision{Allow: true, Reason: ReasonAllowMatched, Policy: policy}
}

func deniedBy(policy string) Decision { return Decision{Reason: ReasonDenyMatched, Policy: policy} }

var (
	noAllowPolicy  = Decision{Allow: true, Reason: ReasonNoAllowPolicy}
	noAllowMatched = Decision{Reason: ReasonNoAllowMatched}
)

// ifMatch is a namespace-wide ALLOW "server/p" of one match, and the decision for a connection
// that matches it (or not).
func ifMatch(m *M) []*workloadv1.Authorization {
	return []*workloadv1.Authorization{allowNS("p", one(m)...)}
}

func decide(matches bool) Decision {
	if matches {
		return allowedBy("server/p")
	}
	return noAllowMatched
}

func conn(mod func(*Conn)) Conn {
	c := mtls()
	mod(&c)
	return c
}

func from(p string) func(*Conn)    { return func(c *Conn) { c.Principal = p } }
func fromIP(ip string) func(*Conn) { return func(c *Conn) { c.SrcIP = netip.MustParseAddr(ip) } }
func plainTo(p uint16) func(*Conn) { return func(c *Conn) { c.Principal = ""; c.DstPort = p } }
func plaintextFromIP(ip string) func(*Conn) {
	return func(c *Conn) { c.Principal = ""; c.SrcIP = netip.MustParseAddr(ip) }
}

func TestCheck(t *testing.T) {
	server := Target{Namespace: serverNS}
	tests := []struct {
		name   string
		auths  []*workloadv1.Authorization
		target *Target // server when nil
		conn   Conn
		want   Decision
	}{
		// Evaluation.
		{name: "no policies allows", conn: mtls(), want: noAllowPolicy},
		{name: "no policies allows plaintext", conn: plain(), want: noAllowPolicy},
		{name: "ALLOW without rules (allow-nothing) denies", auths: []*workloadv1.Authorization{allowNS("nothing")}, conn: mtls(), want: noAllowMatched},
		{name: "ALLOW with an empty rule (allow-all) allows", auths: []*workloadv1.Authorization{allowNS("all", ruleOf())}, conn: plain(), want: allowedBy("server/all")},
		{name: "ALLOW of an empty source match allows", auths: ifMatch(&M{}), conn: plain(), want: decide(true)},
		{name: "ALLOW that does not match denies", auths: ifMatch(&M{Principals: strs(exact(principal("client", "other")))}), conn: mtls(), want: decide(false)},
		{name: "any matching ALLOW allows", auths: []*workloadv1.Authorization{
			allowNS("a", one(&M{Principals: strs(exact("nobody"))})...),
			allowNS("b", one(&M{Principals: strs(exact(sleepPrinc))})...),
		}, conn: mtls(), want: allowedBy("server/b")},
		{name: "matching DENY denies before a matching ALLOW", auths: []*workloadv1.Authorization{
			allowNS("all", ruleOf()),
			denyNS("deny", one(&M{Namespaces: strs(exact("client"))})...),
		}, conn: mtls(), want: deniedBy("server/deny")},
		{name: "DENY without rules denies nothing", auths: []*workloadv1.Authorization{denyNS("none")}, conn: plain(), want: noAllowPolicy},
		{name: "DENY that does not match allows", auths: []*workloadv1.Authorization{denyNS("d", one(&M{Namespaces: strs(exact("other"))})...)}, conn: mtls(), want: noAllowPolicy},
		{name: "DENY with an empty rule denies everything", auths: []*workloadv1.Authorization{denyNS("all", ruleOf())}, conn: mtls(), want: deniedBy("server/all")},
		{name: "matching AUDIT does not deny and is reported", auths: []*workloadv1.Authorization{auditNS("audit", ruleOf())}, conn: mtls(),
			want: Decision{Allow: true, Reason: ReasonNoAllowPolicy, Audit: "server/audit"}},
		{name: "AUDIT does not make an ALLOW apply", auths: []*workloadv1.Authorization{auditNS("audit")}, conn: mtls(), want: noAllowPolicy},
		{name: "AUDIT does not allow what no ALLOW matches", auths: []*workloadv1.Authorization{allowNS("nothing"), auditNS("audit", ruleOf())}, conn: mtls(),
			want: Decision{Reason: ReasonNoAllowMatched, Audit: "server/audit"}},
		{name: "AUDIT is reported on a denied connection", auths: []*workloadv1.Authorization{denyNS("all", ruleOf()), auditNS("audit", ruleOf())}, conn: mtls(),
			want: Decision{Reason: ReasonDenyMatched, Policy: "server/all", Audit: "server/audit"}},

		// Rules, clauses, matches.
		{name: "rule matches when every clause matches", auths: []*workloadv1.Authorization{allowNS("p", ruleOf(
			clauseOf(&M{Principals: strs(exact(sleepPrinc))}),
			clauseOf(&M{DestinationPorts: []uint32{8080}}),
		))}, conn: mtls(), want: decide(true)},
		{name: "rule does not match when one clause does not", auths: []*workloadv1.Authorization{allowNS("p", ruleOf(
			clauseOf(&M{Principals: strs(exact(sleepPrinc))}),
			clauseOf(&M{DestinationPorts: []uint32{9090}}),
		))}, conn: mtls(), want: decide(false)},
		{name: "clause matches when any match matches", auths: []*workloadv1.Authorization{allowNS("p", ruleOf(
			clauseOf(&M{Namespaces: strs(exact("other"))}, &M{Namespaces: strs(exact("client"))}),
		))}, conn: mtls(), want: decide(true)},
		{name: "clause without matches matches nothing", auths: []*workloadv1.Authorization{allowNS("p", ruleOf(clauseOf()))}, conn: mtls(), want: decide(false)},
		{name: "policy matches when any rule matches", auths: []*workloadv1.Authorization{allowNS("p",
			ruleOf(clauseOf(&M{DestinationPorts: []uint32{1}})),
			ruleOf(clauseOf(&M{DestinationPorts: []uint32{8080}})),
		)}, conn: mtls(), want: decide(true)},
		{name: "match needs every field to hold", auths: ifMatch(&M{Principals: strs(exact(sleepPrinc)), SourceIps: cidrs("192.168.0.0/16")}), conn: mtls(), want: decide(false)},

		// principals and not_principals.
		{name: "principals exact matches", auths: ifMatch(&M{Principals: strs(exact(sleepPrinc))}), conn: mtls(), want: decide(true)},
		{name: "principals exact does not match another", auths: ifMatch(&M{Principals: strs(exact(principal("client", "web")))}), conn: mtls(), want: decide(false)},
		{name: "principals prefix matches", auths: ifMatch(&M{Principals: strs(prefix(trustDomain + "/ns/client/"))}), conn: mtls(), want: decide(true)},
		{name: "principals prefix does not match", auths: ifMatch(&M{Principals: strs(prefix(trustDomain + "/ns/other/"))}), conn: mtls(), want: decide(false)},
		{name: "principals suffix matches", auths: ifMatch(&M{Principals: strs(suffix("/sa/sleep"))}), conn: mtls(), want: decide(true)},
		{name: "principals suffix does not match", auths: ifMatch(&M{Principals: strs(suffix("/sa/web"))}), conn: mtls(), want: decide(false)},
		{name: "principals presence matches any mTLS peer", auths: ifMatch(&M{Principals: strs(presence())}), conn: mtls(), want: decide(true)},
		{name: "principals presence does not match plaintext", auths: ifMatch(&M{Principals: strs(presence())}), conn: plain(), want: decide(false)},
		{name: "principals exact empty does not match plaintext", auths: ifMatch(&M{Principals: strs(exact(""))}), conn: plain(), want: decide(false)},
		{name: "principals prefix empty does not match plaintext", auths: ifMatch(&M{Principals: strs(prefix(""))}), conn: plain(), want: decide(false)},
		{name: "principals ignore a spiffe scheme on the peer", auths: ifMatch(&M{Principals: strs(exact(sleepPrinc))}), conn: conn(from("spiffe://" + sleepPrinc)), want: decide(true)},
		{name: "not_principals excludes the peer", auths: ifMatch(&M{NotPrincipals: strs(exact(sleepPrinc))}), conn: mtls(), want: decide(false)},
		{name: "not_principals lets others through", auths: ifMatch(&M{NotPrincipals: strs(exact(principal("client", "web")))}), conn: mtls(), want: decide(true)},
		{name: "not_principals presence matches plaintext", auths: ifMatch(&M{NotPrincipals: strs(presence())}), conn: plain(), want: decide(true)},
		{name: "not_principals presence does not match mTLS", auths: ifMatch(&M{NotPrincipals: strs(presence())}), conn: mtls(), want: decide(false)},
		{name: "not_principals exact matches plaintext", auths: ifMatch(&M{NotPrincipals: strs(exact(sleepPrinc))}), conn: plain(), want: decide(true)},

		// namespaces and not_namespaces, taken from the principal.
		{name: "namespaces exact matches the principal's namespace", auths: ifMatch(&M{Namespaces: strs(exact("client"))}), conn: mtls(), want: decide(true)},
		{name: "namespaces exact does not match another", auths: ifMatch(&M{Namespaces: strs(exact("other"))}), conn: mtls(), want: decide(false)},
		{name: "namespaces prefix matches", auths: ifMatch(&M{Namespaces: strs(prefix("cli"))}), conn: mtls(), want: decide(true)},
		{name: "namespaces suffix matches", auths: ifMatch(&M{Namespaces: strs(suffix("ent"))}), conn: mtls(), want: decide(true)},
		{name: "namespaces presence matches mTLS", auths: ifMatch(&M{Namespaces: strs(presence())}), conn: mtls(), want: decide(true)},
		{name: "namespaces presence does not match plaintext", auths: ifMatch(&M{Namespaces: strs(presence())}), conn: plain(), want: decide(false)},
		{name: "namespaces do not match a principal without one", auths: ifMatch(&M{Namespaces: strs(presence())}), conn: conn(from("cluster.local/client/sleep")), want: decide(false)},
		{name: "namespaces are not taken from the service account", auths: ifMatch(&M{Namespaces: strs(exact("sleep"))}), conn: mtls(), want: decide(false)},
		{name: "not_namespaces excludes the peer's namespace", auths: ifMatch(&M{NotNamespaces: strs(exact("client"))}), conn: mtls(), want: decide(false)},
		{name: "not_namespaces lets other namespaces through", auths: ifMatch(&M{NotNamespaces: strs(exact("other"))}), conn: mtls(), want: decide(true)},
		{name: "not_namespaces presence matches plaintext", auths: ifMatch(&M{NotNamespaces: strs(presence())}), conn: plain(), want: decide(true)},

		// source_ips and not_source_ips.
		{name: "source_ips IPv4 prefix contains the peer", auths: ifMatch(&M{SourceIps: cidrs("10.0.0.0/24")}), conn: mtls(), want: decide(true)},
		{name: "source_ips IPv4 prefix does not contain the peer", auths: ifMatch(&M{SourceIps: cidrs("10.0.1.0/24")}), conn: mtls(), want: decide(false)},
		{name: "source_ips single address", auths: ifMatch(&M{SourceIps: cidrs("10.0.0.5/32")}), conn: mtls(), want: decide(true)},
		{name: "source_ips any of several", auths: ifMatch(&M{SourceIps: cidrs("192.168.0.0/16", "10.0.0.0/8")}), conn: mtls(), want: decide(true)},
		{name: "source_ips unmasked prefix is masked", auths: ifMatch(&M{SourceIps: []*workloadv1.Address{{Address: []byte{10, 9, 9, 9}, Length: 8}}}), conn: mtls(), want: decide(true)},
		{name: "source_ips IPv6 prefix contains the peer", auths: ifMatch(&M{SourceIps: cidrs("fd00::/64")}), conn: conn(fromIP("fd00::5")), want: decide(true)},
		{name: "source_ips IPv6 prefix does not contain the peer", auths: ifMatch(&M{SourceIps: cidrs("fd01::/64")}), conn: conn(fromIP("fd00::5")), want: decide(false)},
		{name: "source_ips IPv6 with a zone", auths: ifMatch(&M{SourceIps: cidrs("fe80::/64")}), conn: conn(fromIP("fe80::1%eth0")), want: decide(true)},
		{name: "source_ips IPv4 prefix contains a v4-mapped peer", auths: ifMatch(&M{SourceIps: cidrs("10.0.0.0/24")}), conn: conn(fromIP("::ffff:10.0.0.5")), want: decide(true)},
		{name: "source_ips v4-mapped prefix contains an IPv4 peer", auths: ifMatch(&M{SourceIps: cidrs("::ffff:10.0.0.0/120")}), conn: mtls(), want: decide(true)},
		{name: "source_ips v4-mapped prefix excludes other IPv4 peers", auths: ifMatch(&M{SourceIps: cidrs("::ffff:10.0.1.0/120")}), conn: mtls(), want: decide(false)},
		{name: "source_ips IPv6 ::/0 does not contain an IPv4 peer", auths: ifMatch(&M{SourceIps: cidrs("::/0")}), conn: mtls(), want: decide(false)},
		{name: "source_ips IPv4 0.0.0.0/0 does not contain an IPv6 peer", auths: ifMatch(&M{SourceIps: cidrs("0.0.0.0/0")}), conn: conn(fromIP("fd00::5")), want: decide(false)},
		{name: "source_ips apply to plaintext", auths: ifMatch(&M{SourceIps: cidrs("10.0.0.0/8")}), conn: plain(), want: decide(true)},
		{name: "not_source_ips excludes the peer", auths: ifMatch(&M{NotSourceIps: cidrs("10.0.0.0/24")}), conn: mtls(), want: decide(false)},
		{name: "not_source_ips lets others through", auths: ifMatch(&M{NotSourceIps: cidrs("10.0.1.0/24")}), conn: mtls(), want: decide(true)},
		{name: "not_source_ips v4 excludes a v4-mapped peer", auths: ifMatch(&M{NotSourceIps: cidrs("10.0.0.0/24")}), conn: conn(fromIP("::ffff:10.0.0.5")), want: decide(false)},
		{name: "source_ips and not_source_ips carve out a range", auths: ifMatch(&M{SourceIps: cidrs("10.0.0.0/8"), NotSourceIps: cidrs("10.0.0.0/24")}),
			conn: conn(plaintextFromIP("10.0.0.7")), want: decide(false)},

		// destination_ports and not_destination_ports.
		{name: "destination_ports contains the port", auths: ifMatch(&M{DestinationPorts: []uint32{443, 8080}}), conn: mtls(), want: decide(true)},
		{name: "destination_ports does not contain the port", auths: ifMatch(&M{DestinationPorts: []uint32{443}}), conn: mtls(), want: decide(false)},
		{name: "not_destination_ports excludes the port", auths: ifMatch(&M{NotDestinationPorts: []uint32{9090, 8080}}), conn: mtls(), want: decide(false)},
		{name: "not_destination_ports lets other ports through", auths: ifMatch(&M{NotDestinationPorts: []uint32{9090}}), conn: mtls(), want: decide(true)},

		// Which policies apply.
		{name: "GLOBAL applies in every namespace", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_GLOBAL, workloadv1.Action_DENY, rootNS, "deny-all", ruleOf()),
		}, conn: mtls(), want: deniedBy(rootNS + "/deny-all")},
		{name: "NAMESPACE applies in its namespace", auths: []*workloadv1.Authorization{denyNS("all", ruleOf())}, conn: mtls(), want: deniedBy("server/all")},
		{name: "NAMESPACE does not apply in another namespace", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY, "other", "all", ruleOf()),
			authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_ALLOW, "other", "nothing"),
		}, conn: mtls(), want: noAllowPolicy},
		{name: "WORKLOAD_SELECTOR applies when the workload names it", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY, serverNS, "sel", ruleOf()),
		}, target: &Target{Namespace: serverNS, PolicyNames: []string{"server/sel"}}, conn: mtls(), want: deniedBy("server/sel")},
		{name: "WORKLOAD_SELECTOR does not apply when the workload does not name it", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY, serverNS, "sel", ruleOf()),
			authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW, serverNS, "nothing"),
		}, target: &Target{Namespace: serverNS, PolicyNames: []string{}}, conn: mtls(), want: noAllowPolicy},
		{name: "WORKLOAD_SELECTOR is named with its own namespace", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_DENY, "other", "sel", ruleOf()),
		}, target: &Target{Namespace: serverNS, PolicyNames: []string{"other/sel"}}, conn: mtls(), want: deniedBy("other/sel")},
		{name: "a name the Policies does not hold denies", auths: []*workloadv1.Authorization{allowNS("all", ruleOf())},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/missing"}}, conn: mtls(), want: Decision{Reason: ReasonUnknownPolicy, Policy: "server/missing"}},
		{name: "a matching DENY wins over an unknown name", auths: []*workloadv1.Authorization{denyNS("all", ruleOf())},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/missing"}}, conn: mtls(), want: deniedBy("server/all")},
		{name: "a named policy applies whatever its scope", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY, "other", "all", ruleOf()),
		}, target: &Target{Namespace: serverNS, PolicyNames: []string{"other/all"}}, conn: mtls(), want: deniedBy("other/all")},
		{name: "GLOBAL and selector ALLOWs all apply", auths: []*workloadv1.Authorization{
			authz(workloadv1.Scope_GLOBAL, workloadv1.Action_ALLOW, rootNS, "g", one(&M{Namespaces: strs(exact("other"))})...),
			authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW, serverNS, "sel", one(&M{Namespaces: strs(exact("client"))})...),
		}, target: &Target{Namespace: serverNS, PolicyNames: []string{"server/sel"}}, conn: mtls(), want: allowedBy("server/sel")},

		// PeerAuthentication, as istiod-lite translates it.
		{name: "STRICT denies plaintext", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "strict", true)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:strict"}}, conn: plain(), want: deniedBy("server/peerauthn:strict")},
		{name: "STRICT allows mTLS", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "strict", true)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:strict"}}, conn: mtls(), want: noAllowPolicy},
		{name: "STRICT mesh-wide from the root namespace denies plaintext", auths: []*workloadv1.Authorization{peerAuthn(rootNS, "default", true)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{rootNS + "/peerauthn:default"}}, conn: plain(), want: deniedBy(rootNS + "/peerauthn:default")},
		{name: "STRICT with port-level PERMISSIVE allows plaintext on that port", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "strict", true, 8080)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:strict"}}, conn: plain(), want: noAllowPolicy},
		{name: "STRICT with port-level PERMISSIVE denies plaintext on other ports", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "strict", true, 8080)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:strict"}}, conn: conn(plainTo(9090)),
			want: deniedBy("server/peerauthn:strict")},
		{name: "port-level STRICT denies plaintext on that port", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "permissive", false, 8080)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:permissive"}}, conn: plain(), want: deniedBy("server/peerauthn:permissive")},
		{name: "port-level STRICT allows plaintext on other ports", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "permissive", false, 8080)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:permissive"}}, conn: conn(plainTo(9090)),
			want: noAllowPolicy},
		{name: "STRICT denies plaintext an ALLOW would let in", auths: []*workloadv1.Authorization{peerAuthn(serverNS, "strict", true), allowNS("ips", one(&M{SourceIps: cidrs("10.0.0.0/8")})...)},
			target: &Target{Namespace: serverNS, PolicyNames: []string{"server/peerauthn:strict"}}, conn: plain(), want: deniedBy("server/peerauthn:strict")},
		{name: "PERMISSIVE (no Authorization) allows plaintext", conn: plain(), want: noAllowPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.auths)
			if err != nil {
				t.Fatalf("Compile: %v", err)
			}
			target := server
			if tt.target != nil {
				target = *tt.target
			}
			c := tt.conn
			if diff := cmp.Diff(tt.want, p.Check(target, &c)); diff != "" {
				t.Errorf("Check (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNilPolicies(t *testing.T) {
	var p *Policies
	c := mtls()
	if diff := cmp.Diff(noAllowPolicy, p.Check(Target{Namespace: serverNS}, &c)); diff != "" {
		t.Errorf("nil Policies (-want +got):\n%s", diff)
	}
	want := Decision{Reason: ReasonUnknownPolicy, Policy: "server/sel"}
	if diff := cmp.Diff(want, p.Check(Target{Namespace: serverNS, PolicyNames: []string{"server/sel"}}, &c)); diff != "" {
		t.Errorf("nil Policies, named policy (-want +got):\n%s", diff)
	}
}

func TestTargetOf(t *testing.T) {
	w := &workloadv1.Workload{Namespace: serverNS, AuthorizationPolicies: []string{"server/a", rootNS + "/peerauthn:default"}}
	want := Target{Namespace: serverNS, PolicyNames: []string{"server/a", rootNS + "/peerauthn:default"}}
	if diff := cmp.Diff(want, TargetOf(w)); diff != "" {
		t.Errorf("TargetOf (-want +got):\n%s", diff)
	}
}

func TestNamespaceOf(t *testing.T) {
	for in, want := range map[string]string{
		principal("client", "sleep"):        "client",
		"td/ns/a/sa/b":                      "a",
		"":                                  "",
		"td/ns//sa/b":                       "",
		"td/ns/a/sa/":                       "",
		"td/ns/a/sa/b/c":                    "",
		"td/ns/a/b/sa/c":                    "",
		"/ns/a/sa/b":                        "",
		"td/namespace/a/sa/b":               "",
		"td/ns/a/serviceaccount/b":          "",
		"spiffe://td/ns/a/sa/b":             "", // Check strips the scheme first
		"cluster.local/ns/kube-system/sa/x": "kube-system",
	} {
		if got := namespaceOf(in); got != want {
			t.Errorf("namespaceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCompileProblems(t *testing.T) {
	badAddr := &workloadv1.Address{Address: []byte{10, 0, 0}, Length: 8}
	tests := []struct {
		name     string
		auths    []*workloadv1.Authorization
		problems Problems
		conn     Conn
		want     Decision // for the compiled rest, on the server namespace
	}{
		{
			name:     "address of a bad length drops the ALLOW rule",
			auths:    []*workloadv1.Authorization{allowNS("p", one(&M{SourceIps: []*workloadv1.Address{badAddr}})...)},
			problems: Problems{{"server/p", "rules[0].clauses[0].matches[0].source_ips[0]: address of 3 bytes, want 4 or 16"}, {"server/p", "rules[0]: rule left out"}},
			conn:     mtls(), want: noAllowMatched,
		},
		{
			name: "bad value drops only its rule",
			auths: []*workloadv1.Authorization{allowNS("p",
				ruleOf(clauseOf(&M{SourceIps: []*workloadv1.Address{badAddr}})),
				ruleOf(clauseOf(&M{Principals: strs(exact(sleepPrinc))})),
			)},
			problems: Problems{{"server/p", "rules[0].clauses[0].matches[0].source_ips[0]: address of 3 bytes, want 4 or 16"}, {"server/p", "rules[0]: rule left out"}},
			conn:     mtls(), want: allowedBy("server/p"),
		},
		{
			name:     "prefix longer than the address is left out of a DENY, which then denies more",
			auths:    []*workloadv1.Authorization{denyNS("d", one(&M{NotSourceIps: []*workloadv1.Address{{Address: []byte{10, 0, 0, 5}, Length: 33}}})...)},
			problems: Problems{{"server/d", "rules[0].clauses[0].matches[0].not_source_ips[0]: prefix length 33 is longer than the 32-bit address"}},
			conn:     mtls(), want: deniedBy("server/d"),
		},
		{
			name:     "port out of range drops the AUDIT rule",
			auths:    []*workloadv1.Authorization{auditNS("a", one(&M{DestinationPorts: []uint32{70000}})...)},
			problems: Problems{{"server/a", "rules[0].clauses[0].matches[0].destination_ports[0]: port 70000 is not in 1-65535"}, {"server/a", "rules[0]: rule left out"}},
			conn:     mtls(), want: noAllowPolicy,
		},
		{
			name:     "port 0 is left out of a DENY",
			auths:    []*workloadv1.Authorization{denyNS("d", one(&M{NotDestinationPorts: []uint32{0}})...)},
			problems: Problems{{"server/d", "rules[0].clauses[0].matches[0].not_destination_ports[0]: port 0 is not in 1-65535"}},
			conn:     mtls(), want: deniedBy("server/d"),
		},
		{
			name:     "string match without a kind",
			auths:    []*workloadv1.Authorization{allowNS("p", one(&M{Principals: []*workloadv1.StringMatch{{}}})...)},
			problems: Problems{{"server/p", "rules[0].clauses[0].matches[0].principals[0]: string match has no kind"}, {"server/p", "rules[0]: rule left out"}},
			conn:     mtls(), want: noAllowMatched,
		},
		{
			name:     "presence false",
			auths:    []*workloadv1.Authorization{denyNS("d", one(&M{NotNamespaces: strs(&workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence{}})})...)},
			problems: Problems{{"server/d", "rules[0].clauses[0].matches[0].not_namespaces[0]: presence is false"}},
			conn:     mtls(), want: deniedBy("server/d"),
		},
		{
			name:     "duplicate name keeps the first",
			auths:    []*workloadv1.Authorization{allowNS("p", ruleOf()), allowNS("p")},
			problems: Problems{{"server/p", "duplicate name: left out"}},
			conn:     mtls(), want: allowedBy("server/p"),
		},
		{
			name:     "unknown action leaves the policy out",
			auths:    []*workloadv1.Authorization{authz(workloadv1.Scope_NAMESPACE, 7, serverNS, "x", ruleOf())},
			problems: Problems{{"server/x", "unknown action 7: left out"}},
			conn:     mtls(), want: noAllowPolicy,
		},
		{
			name:     "unknown scope leaves the policy out",
			auths:    []*workloadv1.Authorization{authz(9, workloadv1.Action_DENY, serverNS, "x", ruleOf())},
			problems: Problems{{"server/x", "unknown scope 9: left out"}},
			conn:     mtls(), want: noAllowPolicy,
		},
		{
			name:     "nil Authorization",
			auths:    []*workloadv1.Authorization{nil, denyNS("d", ruleOf())},
			problems: Problems{{"#0", "nil Authorization"}},
			conn:     mtls(), want: deniedBy("server/d"),
		},
		{
			name:  "nil rules, clauses and matches are empty messages",
			auths: []*workloadv1.Authorization{allowNS("p", nil, ruleOf(nil), ruleOf(clauseOf(nil)))},
			conn:  mtls(), want: allowedBy("server/p"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.auths)
			var got Problems
			if err != nil && !errors.As(err, &got) {
				t.Fatalf("Compile error %T is not Problems: %v", err, err)
			}
			if diff := cmp.Diff(tt.problems, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if p == nil {
				t.Fatal("Compile returned no Policies")
			}
			c := tt.conn
			if diff := cmp.Diff(tt.want, p.Check(Target{Namespace: serverNS}, &c)); diff != "" {
				t.Errorf("Check (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProblemsError(t *testing.T) {
	err := Problems{{"a/b", "x"}, {"c/d", "y"}}.Error()
	if want := "a/b: x; c/d: y"; err != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
}

// TestCheckDoesNotAllocate holds Check to the requirement: no allocation per connection.
func TestCheckDoesNotAllocate(t *testing.T) {
	p, target := benchPolicies(t)
	conns := []Conn{mtls(), plain(), conn(fromIP("::ffff:10.0.0.5")), conn(fromIP("fe80::1%eth0")), conn(from("spiffe://" + sleepPrinc))}
	for _, c := range conns {
		allocs := testing.AllocsPerRun(100, func() { p.Check(target, &c) })
		if allocs != 0 {
			t.Errorf("Check(%v) allocates %v times", c, allocs)
		}
	}
}

// benchPolicies is a realistic set: 50 policies, of which 10 apply to the target (2 mesh-wide,
// 3 namespace-wide, 5 bound by selector including its STRICT PeerAuthentication), none of
// which denies a connection from client/sleep to port 8080.
func benchPolicies(tb testing.TB) (*Policies, Target) {
	tb.Helper()
	var auths []*workloadv1.Authorization
	target := Target{Namespace: serverNS}
	auths = append(auths,
		authz(workloadv1.Scope_GLOBAL, workloadv1.Action_DENY, rootNS, "deny-blocked", one(&M{SourceIps: cidrs("192.0.2.0/24", "2001:db8::/32")})...),
		authz(workloadv1.Scope_GLOBAL, workloadv1.Action_AUDIT, rootNS, "audit-admin", one(&M{DestinationPorts: []uint32{22, 2222}})...),
		denyNS("deny-legacy", one(&M{Namespaces: strs(exact("legacy"), prefix("old-"))})...),
		allowNS("allow-monitoring", ruleOf(clauseOf(&M{Namespaces: strs(exact("monitoring"))}), clauseOf(&M{DestinationPorts: []uint32{9090}}))),
		allowNS("allow-frontend", one(&M{Principals: strs(exact(principal("web", "frontend")), suffix("/sa/gateway"))})...),
		peerAuthn(serverNS, "strict", true, 15021),
	)
	target.PolicyNames = append(target.PolicyNames, "server/peerauthn:strict")
	for _, name := range []string{"sel-a", "sel-b", "sel-c", "sel-d"} {
		auths = append(auths, authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW, serverNS, name,
			ruleOf(clauseOf(&M{Principals: strs(exact(principal("client", name)))}, &M{SourceIps: cidrs("10.200.0.0/16")}),
				clauseOf(&M{NotDestinationPorts: []uint32{15021}})),
			ruleOf(clauseOf(&M{Namespaces: strs(exact("client"))}), clauseOf(&M{DestinationPorts: []uint32{8080, 8443}})),
		))
		target.PolicyNames = append(target.PolicyNames, "server/"+name)
	}
	for i := range 40 {
		ns := string(rune('a'+i%8)) + "-ns"
		auths = append(auths,
			authz(workloadv1.Scope_NAMESPACE, workloadv1.Action_DENY, ns, "deny", ruleOf()),
		)
		if i%2 == 0 {
			auths[len(auths)-1] = authz(workloadv1.Scope_WORKLOAD_SELECTOR, workloadv1.Action_ALLOW, serverNS, "unbound-"+string(rune('a'+i)), ruleOf())
		} else {
			auths[len(auths)-1].Name = "deny-" + string(rune('a'+i))
		}
	}
	p, err := Compile(auths)
	if err != nil {
		tb.Fatal(err)
	}
	return p, target
}

func BenchmarkCheck(b *testing.B) {
	p, target := benchPolicies(b)
	c := mtls()
	b.ReportAllocs()
	for b.Loop() {
		if d := p.Check(target, &c); !d.Allow {
			b.Fatalf("denied: %+v", d)
		}
	}
}
