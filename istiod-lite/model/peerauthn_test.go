package model_test

import "testing"

// One row per rule of Istio's PeerAuthentication semantics (peerauthn.go), as ztunnel enforces
// them: a plaintext peer ("" in a probe) is refused where the effective mode is STRICT, and a peer
// with an identity is always let through (no AuthorizationPolicy here). A row expects no problem
// unless it names one.
func TestPeerAuthenticationSemantics(t *testing.T) {
	// Probes of shop/web: plaintext and mTLS on port 8080, plaintext on 9090 and 7070.
	probes := func(plain8080, plain9090, plain7070 bool) []probe {
		return []probe{
			{allow: plain8080}, {port: 9090, allow: plain9090}, {port: 7070, allow: plain7070},
			{from: "other/db", allow: true}, {from: "other/db", port: 9090, allow: true},
		}
	}
	const (
		meshStrict = `
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`
		meshPermissive = `
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
`
		shopStrict = `
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: STRICT}}
`
	)
	tests := []struct {
		name     string
		policies string
		probes   []probe
		problem  string
	}{
		{
			name:   "without a PeerAuthentication every port accepts plaintext (PERMISSIVE)",
			probes: probes(true, true, true),
		},
		{
			name:     "a mesh-wide STRICT refuses plaintext on every port of every workload",
			policies: meshStrict,
			probes: append(probes(false, false, false),
				probe{to: "other/db"}, probe{to: "istio-system/gw"}, probe{to: "other/db", from: "shop/web", allow: true}),
		},
		{
			name: "a mesh-wide mode of UNSET is PERMISSIVE",
			policies: `
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {}`,
			probes: probes(true, true, true),
		},
		{
			name:     "a namespace STRICT applies to its namespace only, under a mesh-wide PERMISSIVE",
			policies: meshPermissive + "---" + shopStrict,
			probes:   append(probes(false, false, false), probe{to: "other/db", allow: true}),
		},
		{
			name: "a namespace PERMISSIVE overrides a mesh-wide STRICT",
			policies: meshStrict + `---
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}`,
			probes: append(probes(true, true, true), probe{to: "other/db"}),
		},
		{
			name: "a namespace mode of UNSET inherits the mesh's",
			policies: meshStrict + `---
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {}}`,
			probes: probes(false, false, false),
		},
		{
			name: "a workload PERMISSIVE overrides its namespace's STRICT",
			policies: shopStrict + `---
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}`,
			probes: probes(true, true, true),
		},
		{
			name: "a workload STRICT overrides its namespace's PERMISSIVE",
			policies: meshStrict + `---
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
---
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}`,
			probes: probes(false, false, false),
		},
		{
			name: "a workload mode of UNSET inherits its namespace's, then the mesh's",
			policies: meshStrict + `---
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}}`,
			probes: probes(false, false, false),
		},
		{
			name: "a port-level PERMISSIVE under an inherited STRICT relaxes that port only",
			policies: meshStrict + `---
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}`,
			probes: probes(true, false, false),
		},
		{
			name: "a port-level STRICT under an inherited PERMISSIVE applies to that port only",
			policies: `
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, mtls: {}, portLevelMtls: {"9090": {mode: STRICT}}}`,
			probes: probes(true, false, true),
		},
		{
			name: "a workload STRICT with a port-level PERMISSIVE",
			policies: `
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {"9090": {mode: PERMISSIVE}, "7070": {mode: DISABLE}}}`,
			probes: probes(false, true, true),
		},
		{
			name: "a workload PERMISSIVE with a port-level STRICT, under a namespace STRICT",
			policies: shopStrict + `---
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {"9090": {mode: STRICT}}}`,
			probes: probes(true, false, true),
		},
		{
			name: "a port-level mode of UNSET inherits the workload's",
			policies: shopStrict + `---
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {"9090": {}, "7070": {mode: PERMISSIVE}}}`,
			probes: probes(false, false, true),
		},
		{
			name: "DISABLE accepts plaintext as PERMISSIVE does",
			policies: meshStrict + `---
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: DISABLE}}`,
			probes: probes(true, true, true),
		},
		{
			name: "a workload policy whose selector does not match leaves the workload to its namespace",
			policies: shopStrict + `---
kind: PeerAuthentication
metadata: {name: api, namespace: shop}
spec: {selector: {matchLabels: {app: api}}, mtls: {mode: PERMISSIVE}}`,
			probes: probes(false, false, false),
		},
		{
			name: "a policy in another namespace does not apply",
			policies: `
kind: PeerAuthentication
metadata: {name: other, namespace: other}
spec: {mtls: {mode: STRICT}}
---
kind: PeerAuthentication
metadata: {name: web, namespace: other}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}`,
			probes: append(probes(true, true, true), probe{to: "other/db"}),
		},
		{
			name: "of two namespace policies the oldest applies; the other is ignored",
			policies: `
kind: PeerAuthentication
metadata: {name: a-new, namespace: shop, creationTimestamp: "2025-02-01T00:00:00Z"}
spec: {mtls: {mode: PERMISSIVE}}
---
kind: PeerAuthentication
metadata: {name: b-old, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}`,
			probes:  probes(false, false, false),
			problem: "PeerAuthentication shop/a-new: the namespace already has PeerAuthentication b-old",
		},
		{
			name: "of two workload policies selecting a workload the oldest applies",
			policies: `
kind: PeerAuthentication
metadata: {name: a-new, namespace: shop, creationTimestamp: "2025-02-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}
---
kind: PeerAuthentication
metadata: {name: b-old, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {selector: {matchLabels: {tier: front}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {"9090": {mode: STRICT}}}`,
			probes: probes(true, false, true),
		},
		{
			name: "a policy with a selector in the root namespace is ignored",
			policies: `
kind: PeerAuthentication
metadata: {name: gw, namespace: istio-system}
spec: {selector: {matchLabels: {app: gw}}, mtls: {mode: STRICT}}`,
			probes:  []probe{{to: "istio-system/gw", allow: true}},
			problem: "PeerAuthentication istio-system/gw: a PeerAuthentication with a selector in the root namespace is ignored",
		},
		{
			name: "portLevelMtls without a selector is ignored",
			policies: `
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}, portLevelMtls: {"9090": {mode: STRICT}}}`,
			probes:  probes(true, true, true),
			problem: "portLevelMtls applies only with a selector",
		},
		{
			name: "STRICT refuses plaintext even where an ALLOW policy matches it",
			policies: meshStrict + `---
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {rules: [{}]}`,
			probes: probes(false, false, false),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := translate(t, withObjects(t, baseInput(), tc.policies))
			checkRow(t, v, tc.probes, tc.problem)
		})
	}
}
