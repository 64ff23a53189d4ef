package model

// PeerAuthentication → a DENY Authorization of connections without a peer identity (plaintext) on
// the ports where the workload's effective mode is STRICT. The rules kept here (Istio's
// PeerAuthentication semantics; each has a row in peerauthn_test.go):
//
//   - Levels: mesh (root namespace, no selector), namespace (no selector), workload (a selector, in
//     a namespace other than the root; one in the root namespace is ignored, as Istio does). An
//     empty matchLabels is no selector. Of several at one level, the oldest applies (creation
//     time, then name); the others are ignored.
//   - Inheritance: a mode of UNSET (or no mtls) inherits: workload from namespace, namespace from
//     mesh, mesh from PERMISSIVE. DISABLE accepts plaintext like PERMISSIVE (ztunnel has nothing to
//     turn off).
//   - portLevelMtls (workload level only; elsewhere ignored) overrides the workload's effective mode
//     on those ports, where UNSET again inherits it. A port is the workload's (target) port.
//   - Binding: each in-mesh pod lists the Authorization of its workload-level policy if one selects
//     it (even one that allows plaintext everywhere: it overrides the levels above), else of its
//     namespace's policy if that one sets a mode, else of the mesh policy. A policy that leaves
//     every port accepting plaintext has no Authorization.

import (
	"cmp"
	"fmt"
	"slices"

	secapi "istio.io/api/security/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// peerAuthnPrefix marks Authorizations derived from PeerAuthentication. Kubernetes names cannot
// contain ':', so they never collide with an AuthorizationPolicy's.
const peerAuthnPrefix = "peerauthn:"

const (
	modeUnset  = secapi.PeerAuthentication_MutualTLS_UNSET
	modeStrict = secapi.PeerAuthentication_MutualTLS_STRICT
)

func hasSelector(pa *secv1.PeerAuthentication) bool {
	return len(pa.Spec.GetSelector().GetMatchLabels()) > 0
}

// olderFirst orders policies as Istio chooses among them: the oldest first, then by name.
func olderFirst(a, b *secv1.PeerAuthentication) int {
	return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Name, b.Name))
}

// levelPeerAuthn returns the namespace-level (or, for the root namespace, mesh-level) policy of
// ns that applies: the oldest without a selector.
func (t *translator) levelPeerAuthn(ns string) *secv1.PeerAuthentication {
	for _, pa := range t.peerAuthns[ns] { // oldest first
		if !hasSelector(pa) {
			return pa
		}
	}
	return nil
}

// inheritedStrict reports whether a workload of ns with no mode of its own is STRICT: its
// namespace's mode if set, else the mesh's, else PERMISSIVE.
func (t *translator) inheritedStrict(ns string) bool {
	if pa := t.levelPeerAuthn(ns); pa != nil && pa.Spec.GetMtls().GetMode() != modeUnset {
		return pa.Spec.GetMtls().GetMode() == modeStrict
	}
	if pa := t.levelPeerAuthn(t.cfg.RootNamespace); pa != nil {
		return pa.Spec.GetMtls().GetMode() == modeStrict
	}
	return false
}

// peerAuthentication translates pa, reporting what of it does not apply.
func (t *translator) peerAuthentication(pa *secv1.PeerAuthentication) *workloadv1.Authorization {
	report := func(reason string, rejected bool, format string, args ...any) {
		t.report(Problem{Kind: KindPeerAuthentication, Namespace: pa.Namespace, Name: pa.Name, Condition: ConditionZtunnelAccepted,
			Reason: reason, Rejected: rejected, Message: fmt.Sprintf(format, args...)})
	}
	mode := pa.Spec.GetMtls().GetMode()
	if !hasSelector(pa) {
		level := "namespace"
		if pa.Namespace == t.cfg.RootNamespace {
			level = "mesh"
		}
		if first := t.levelPeerAuthn(pa.Namespace); first != pa {
			report(ReasonIgnored, true, "the %s already has PeerAuthentication %s, which is older: this one is ignored", level, first.Name)
			return nil
		}
		if len(pa.Spec.PortLevelMtls) > 0 {
			report(ReasonIgnored, false, "portLevelMtls applies only with a selector: ignored")
		}
		if mode != modeStrict {
			return nil
		}
		return peerAuthnDeny(pa, nil, nil)
	}
	if pa.Namespace == t.cfg.RootNamespace {
		report(ReasonIgnored, true, "a PeerAuthentication with a selector in the root namespace is ignored (mesh-wide policy has no selector)")
		return nil
	}
	strict := t.inheritedStrict(pa.Namespace)
	if mode != modeUnset {
		strict = mode == modeStrict
	}
	// Ports whose mode differs from the workload's.
	var exceptions []uint32
	for port, m := range pa.Spec.PortLevelMtls {
		if port == 0 || port > 65535 {
			report(ReasonInvalidValue, false, "portLevelMtls port %d is not in 1-65535: ignored", port)
			continue
		}
		if pm := m.GetMode(); pm != modeUnset && (pm == modeStrict) != strict {
			exceptions = append(exceptions, port)
		}
	}
	slices.Sort(exceptions)
	switch {
	case strict:
		return peerAuthnDeny(pa, nil, exceptions) // every port but the relaxed ones
	case len(exceptions) > 0:
		return peerAuthnDeny(pa, exceptions, nil) // the strict ports only
	}
	return nil
}

// peerAuthnDeny denies connections without a peer identity to ports (all when empty) except
// notPorts.
func peerAuthnDeny(pa *secv1.PeerAuthentication, ports, notPorts []uint32) *workloadv1.Authorization {
	noIdentity := &workloadv1.Match{
		NotPrincipals:       []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: true}}},
		DestinationPorts:    ports,
		NotDestinationPorts: notPorts,
	}
	return &workloadv1.Authorization{
		Name:      peerAuthnPrefix + pa.Name,
		Namespace: pa.Namespace,
		Scope:     workloadv1.Scope_WORKLOAD_SELECTOR,
		Action:    workloadv1.Action_DENY,
		Rules:     []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{noIdentity}}}}},
	}
}

// effectivePeerAuthn returns the PeerAuthentication that decides pod's mTLS mode, or nil for
// PERMISSIVE by default: its workload-level policy, else its namespace's if that sets a mode, else
// the mesh's.
func (t *translator) effectivePeerAuthn(pod *corev1.Pod) *secv1.PeerAuthentication {
	if pod.Namespace != t.cfg.RootNamespace {
		for _, pa := range t.peerAuthns[pod.Namespace] { // oldest first
			if hasSelector(pa) && labels.SelectorFromSet(pa.Spec.Selector.MatchLabels).Matches(labels.Set(pod.Labels)) {
				return pa
			}
		}
	}
	if pa := t.levelPeerAuthn(pod.Namespace); pa != nil && pa.Spec.GetMtls().GetMode() != modeUnset {
		return pa
	}
	return t.levelPeerAuthn(t.cfg.RootNamespace)
}

// boundAuthorizations lists, sorted, the Authorizations that apply to pod by name: the
// AuthorizationPolicies with a selector matching it, in its namespace or the root namespace, and
// the Authorization of its effective PeerAuthentication, if that one has one.
func (t *translator) boundAuthorizations(pod *corev1.Pod, authz map[string]*workloadv1.Authorization) []string {
	var out []string
	namespaces := []string{pod.Namespace}
	if pod.Namespace != t.cfg.RootNamespace {
		namespaces = append(namespaces, t.cfg.RootNamespace) // mesh-wide by selector
	}
	for _, ns := range namespaces {
		for _, ap := range t.authzPolicies[ns] {
			sel := ap.Spec.GetSelector().GetMatchLabels()
			if len(sel) == 0 || !labels.SelectorFromSet(sel).Matches(labels.Set(pod.Labels)) {
				continue
			}
			if name := ap.Namespace + "/" + ap.Name; authz[name] != nil {
				out = append(out, name)
			}
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
