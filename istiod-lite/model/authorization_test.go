package model_test

import "testing"

// One row per rule of Istio's AuthorizationPolicy semantics, as ztunnel enforces them at L4
// (authorization.go). Each row's policies go through translation into a ztunnel's decisions; a
// row expects no problem unless it names one.
func TestAuthorizationPolicySemantics(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		probes   []probe
		problem  string
	}{
		// Actions and their combination.
		{
			name:   "without a policy every connection is allowed",
			probes: []probe{{from: "other/db", allow: true}, {allow: true}},
		},
		{
			name: "an ALLOW with no rules allows nothing to the workloads it applies to",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}`,
			probes: []probe{{from: "other/db"}, {}, {to: "other/db", from: "shop/web", allow: true}},
		},
		{
			name: "a DENY with no rules denies nothing",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {action: DENY}`,
			probes: []probe{{from: "other/db", allow: true}, {allow: true}},
		},
		{
			name: "an empty rule in an ALLOW allows everything",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {rules: [{}]}`,
			probes: []probe{{from: "other/db", allow: true}, {allow: true}},
		},
		{
			name: "an empty rule in a DENY denies everything",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {action: DENY, rules: [{}]}`,
			probes: []probe{{from: "other/db"}, {}},
		},
		{
			name: "a connection must match one of the ALLOW policies that apply",
			policies: `
kind: AuthorizationPolicy
metadata: {name: from-db, namespace: shop}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/other/sa/db]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: from-gw, namespace: shop}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/istio-system/sa/gw]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {from: "istio-system/gw", allow: true}, {from: "shop/client"}},
		},
		{
			name: "a matching DENY wins over a matching ALLOW",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec: {rules: [{}]}
---
kind: AuthorizationPolicy
metadata: {name: deny-db, namespace: shop}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}`,
			probes: []probe{{from: "other/db"}, {from: "shop/client", allow: true}},
		},
		{
			name: "an AUDIT policy never changes the decision",
			policies: `
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec: {action: AUDIT, rules: [{}]}`,
			probes: []probe{{from: "other/db", allow: true}, {allow: true}},
		},
		{
			name: "a CUSTOM policy denies what its rules match, since ztunnel cannot ask the external authorizer",
			policies: `
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: ["8080"]}}]}]}`,
			probes:  []probe{{from: "other/db"}, {from: "other/db", port: 9090, allow: true}},
			problem: "CUSTOM",
		},
		{
			name: "a policy annotated istio.io/dry-run is audited, never enforced",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec: {action: DENY, rules: [{}]}
---
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}`,
			probes: []probe{{from: "other/db", allow: true}},
		},

		// Which workloads a policy applies to.
		{
			name: "a policy without a selector applies to every workload of its namespace, and only there",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {action: DENY, rules: [{}]}`,
			probes: []probe{{from: "other/db"}, {to: "other/db", from: "shop/web", allow: true}},
		},
		{
			name: "an empty matchLabels is no selector: the policy applies to the whole namespace",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {selector: {matchLabels: {}}, action: DENY, rules: [{}]}`,
			probes: []probe{{from: "other/db"}},
		},
		{
			name: "a selector applies the policy to the workloads whose labels it matches",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-front, namespace: shop}
spec: {selector: {matchLabels: {tier: front}}, action: DENY, rules: [{}]}
---
kind: AuthorizationPolicy
metadata: {name: deny-back, namespace: shop}
spec: {selector: {matchLabels: {tier: back}}, action: DENY, rules: [{}]}
---
kind: Pod
metadata: {name: api, namespace: shop, uid: shop-api, labels: {tier: back-office}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node-1}
status: {phase: Running, podIP: 10.1.0.2}`,
			probes: []probe{{from: "other/db"}, {to: "shop/api", from: "other/db", allow: true}},
		},
		{
			name: "a selector in one namespace never selects workloads of another",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-db, namespace: shop}
spec: {selector: {matchLabels: {app: db}}, action: DENY, rules: [{}]}`,
			probes: []probe{{to: "other/db", from: "shop/web", allow: true}},
		},
		{
			name: "a root-namespace policy without a selector applies to every workload of the mesh",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-plaintext, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}`,
			probes: []probe{{}, {to: "other/db"}, {to: "istio-system/gw"}, {from: "other/db", allow: true}},
		},
		{
			name: "a root-namespace policy with a selector applies to the matching workloads of every namespace",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-to-db, namespace: istio-system}
spec: {selector: {matchLabels: {app: db}}, action: DENY, rules: [{from: [{source: {namespaces: [shop]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: allow-web-from-gw, namespace: istio-system}
spec: {selector: {matchLabels: {app: web}}, rules: [{from: [{source: {principals: [cluster.local/ns/istio-system/sa/gw]}}]}]}`,
			probes: []probe{
				{to: "other/db", from: "shop/web"}, {to: "other/db", from: "istio-system/gw", allow: true},
				{from: "istio-system/gw", allow: true}, {from: "other/db"},
				{to: "istio-system/gw", from: "shop/web", allow: true},
			},
		},
		{
			name: "a policy with targetRefs is the waypoint's: ztunnel does not enforce it, and one whose target is not bound to a waypoint is reported",
			policies: `
kind: AuthorizationPolicy
metadata: {name: l7, namespace: shop}
spec: {targetRefs: [{kind: Service, group: "", name: web}], action: DENY, rules: [{}]}`,
			probes:  []probe{{from: "other/db", allow: true}},
			problem: "enforced nowhere",
		},

		// Rules, and the fields of from.
		{
			name: "rules are alternatives: a connection matching any rule matches the policy",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [other]}}]
  - to: [{operation: {ports: ["9090"]}}]`,
			probes: []probe{{from: "other/db", allow: true}, {port: 9090, allow: true}, {from: "shop/client"}},
		},
		{
			name: "from, to and when of a rule must all match",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: source.ip, values: [10.9.0.0/16]}]`,
			probes: []probe{
				{from: "other/db", allow: true}, {from: "shop/client"}, {from: "other/db", port: 9090},
				{from: "other/db", ip: "10.8.0.1"},
			},
		},
		{
			name: "the sources of a from are alternatives",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {namespaces: [other]}}, {source: {ipBlocks: [10.7.0.0/16]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {ip: "10.7.1.1", allow: true}, {from: "shop/client"}},
		},
		{
			name: "the fields of a source must all hold",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {namespaces: [other], ipBlocks: [10.7.0.0/16]}}]}]}`,
			probes: []probe{{from: "other/db", ip: "10.7.1.1", allow: true}, {from: "other/db"}, {ip: "10.7.1.1"}},
		},
		{
			name: "principals match exactly, by prefix, by suffix, or any identity with *",
			policies: `
kind: AuthorizationPolicy
metadata: {name: exact-prefix-suffix, namespace: shop}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/other/sa/db, cluster.local/ns/istio-system/*, "*/sa/batch"]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: any-to-9090, namespace: shop}
spec: {rules: [{from: [{source: {principals: ["*"]}}], to: [{operation: {ports: ["9090"]}}]}]}`,
			probes: []probe{
				{from: "other/db", allow: true}, {from: "other/dba"}, {from: "istio-system/gw", allow: true},
				{from: "shop/batch", allow: true}, {from: "shop/client"},
				{from: "shop/client", port: 9090, allow: true}, {port: 9090},
			},
		},
		{
			name: "notPrincipals exclude identities; a plaintext peer has none to exclude",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {action: DENY, rules: [{from: [{source: {notPrincipals: [cluster.local/ns/other/*]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {from: "shop/client"}, {}},
		},
		{
			name: "namespaces match the peer identity's namespace; a plaintext peer has none",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {namespaces: ["oth*"]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {from: "shop/client"}, {}},
		},
		{
			name: "notNamespaces exclude the peer identity's namespace",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {notNamespaces: [other]}}]}]}`,
			probes: []probe{{from: "other/db"}, {from: "shop/client", allow: true}, {allow: true}},
		},
		{
			name: "serviceAccounts name <namespace>/<name>, or <name> in the policy's namespace",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {serviceAccounts: [other/db, client]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {from: "shop/client", allow: true}, {from: "other/client"}, {}},
		},
		{
			name: "notServiceAccounts exclude service accounts",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {action: DENY, rules: [{from: [{source: {notServiceAccounts: [other/db]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {from: "shop/client"}},
		},
		{
			name: "ipBlocks hold addresses and prefixes of the peer; notIpBlocks exclude them",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {ipBlocks: [10.7.0.0/16, 10.8.0.1], notIpBlocks: [10.7.9.0/24]}}]}]}`,
			probes: []probe{
				{ip: "10.7.1.1", allow: true}, {ip: "10.8.0.1", allow: true}, {ip: "10.8.0.2"}, {ip: "10.7.9.9"},
			},
		},
		{
			name: "trustDomains match the peer identity's trust domain",
			policies: `
kind: AuthorizationPolicy
metadata: {name: ours, namespace: shop}
spec: {rules: [{from: [{source: {trustDomains: [cluster.local]}}], to: [{operation: {ports: ["8080"]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: not-ours, namespace: shop}
spec: {rules: [{from: [{source: {notTrustDomains: ["cluster*"]}}], to: [{operation: {ports: ["9090"]}}]}]}`,
			probes: []probe{{from: "other/db", allow: true}, {}, {from: "other/db", port: 9090}, {port: 9090, allow: true}},
		},

		// The fields of to and when.
		{
			name: "ports and notPorts match the destination port; operations are alternatives",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - to: [{operation: {ports: ["8080"]}}, {operation: {notPorts: ["8080", "9090"]}}]`,
			probes: []probe{{allow: true}, {port: 9090}, {port: 7070, allow: true}},
		},
		{
			name: "when source.ip, source.namespace, source.principal and destination.port hold with values and notValues",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - when:
    - {key: source.ip, values: [10.7.0.0/16], notValues: [10.7.9.9]}
    - {key: source.namespace, values: [other]}
    - {key: source.principal, notValues: [cluster.local/ns/other/sa/admin]}
    - {key: destination.port, values: ["8080"]}`,
			probes: []probe{
				{from: "other/db", ip: "10.7.1.1", allow: true}, {from: "other/db", ip: "10.7.9.9"},
				{from: "shop/client", ip: "10.7.1.1"}, {from: "other/admin", ip: "10.7.1.1"},
				{from: "other/db", ip: "10.7.1.1", port: 9090},
			},
		},

		// What ztunnel cannot see at L4: never allowed on its account, denied without it.
		{
			name: "an ALLOW rule with an HTTP attribute never allows; the other rules still do",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - to: [{operation: {methods: [GET], ports: ["8080"]}}]
  - from: [{source: {namespaces: [other]}}]`,
			probes:  []probe{{from: "shop/client"}, {from: "other/db", allow: true}},
			problem: "ztunnel cannot enforce methods",
		},
		{
			name: "a DENY rule with an HTTP attribute denies all the L4 traffic matching the rest",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin], notMethods: [GET], ports: ["9090"]}}]}]}`,
			probes:  []probe{{port: 9090}, {from: "other/db", port: 9090}, {from: "other/db", allow: true}},
			problem: "ztunnel cannot enforce notMethods, paths",
		},
		{
			name: "a DENY rule with only HTTP attributes denies every connection",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}], when: [{key: "request.headers[x-user]", values: [bob]}]}]}`,
			probes:  []probe{{from: "other/db"}, {}},
			problem: "hosts, when request.headers[x-user]",
		},
		{
			name: "requestPrincipals need a JWT: an ALLOW rule with them never allows, a DENY rule denies without them",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-jwt, namespace: shop}
spec: {rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: deny-no-jwt, namespace: other}
spec: {action: DENY, rules: [{from: [{source: {notRequestPrincipals: ["*"], namespaces: [shop]}}]}]}`,
			probes: []probe{
				{from: "other/db"}, {to: "other/db", from: "shop/web"}, {to: "other/db", from: "istio-system/gw", allow: true},
			},
			problem: "requestPrincipals",
		},
		{
			name: "remoteIpBlocks come from X-Forwarded-For, not the peer address: an ALLOW rule with them never allows",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {remoteIpBlocks: [10.9.0.0/16]}}]}]}`,
			probes:  []probe{{}},
			problem: "remoteIpBlocks",
		},
		{
			name: "remote.ip and destination.ip are not enforced: an ALLOW rule never allows, a DENY rule denies without them",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec: {rules: [{when: [{key: remote.ip, values: [10.9.0.9]}]}, {to: [{operation: {ports: ["9090"]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["9090"]}}], when: [{key: destination.ip, notValues: [10.1.0.1]}]}]}`,
			probes:  []probe{{}, {port: 9090}},
			problem: "when destination.ip",
		},
		{
			name: "a value that does not parse drops an ALLOW rule, and is left out of a DENY rule",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec: {rules: [{to: [{operation: {ports: [http]}}]}, {from: [{source: {ipBlocks: [10.9.0.0/33]}}]}, {to: [{operation: {ports: ["7070"]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {ports: ["7070", http]}}]}]}`,
			probes:  []probe{{}, {port: 7070}},
			problem: `invalid ports "http"`,
		},
		{
			name: "a trust-domain suffix cannot be matched at L4: an ALLOW rule never allows, a DENY rule matches any identity",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec: {rules: [{from: [{source: {trustDomains: ["*.local"]}}]}, {to: [{operation: {ports: ["7070"]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec: {action: DENY, rules: [{from: [{source: {trustDomains: [example.org, "*.org"]}}], to: [{operation: {ports: ["7070"]}}]}]}`,
			probes:  []probe{{from: "other/db"}, {from: "other/db", port: 7070}},
			problem: "trustDomains suffix patterns",
		},
		{
			name: "principals and serviceAccounts in one source must both hold, which ztunnel cannot check: an ALLOW rule never allows",
			policies: `
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec: {rules: [{from: [{source: {principals: [cluster.local/ns/other/sa/db], serviceAccounts: [shop/client]}}]}]}`,
			probes:  []probe{{from: "other/db"}, {from: "shop/client"}},
			problem: "more than one of principals, serviceAccounts and trustDomains",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := translate(t, withObjects(t, baseInput(), tc.policies))
			checkRow(t, v, tc.probes, tc.problem)
		})
	}
}
