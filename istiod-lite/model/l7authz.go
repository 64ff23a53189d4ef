package model

// AuthorizationPolicy with targetRefs → routev1.Policy, enforced by a waypoint. The rules kept here:
//
//   - targetRefs (or the older targetRef) name the waypoint Gateway (group
//     gateway.networking.k8s.io, kind Gateway) or a Service (group "", kind Service) in the
//     policy's namespace, or, from the root namespace only, the GatewayClass istio-waypoint: every
//     waypoint, as if each were named. A Gateway target applies to every Service bound to that waypoint and
//     to every workload bound to it (kept in the ServiceRoutes of the waypoint's own Service,
//     which the waypoint reads for traffic addressed to a pod); a Service target to that
//     Service, through its waypoint. A target that does not exist, is not
//     a waypoint, or a Service bound to no waypoint: the policy is not enforced there, and a
//     WaypointAccepted problem says so (the policy is rejected when no target is usable).
//     waypointTargets keeps these rules, for RequestAuthentication (requestauthn.go) as well.
//   - Everything Istio's L7 policy can say is carried: principals, requestPrincipals, namespaces,
//     ipBlocks, remoteIpBlocks, hosts, ports, methods, paths and when conditions, with their not
//     forms. serviceAccounts and trustDomains are turned into principal patterns.
//   - CUSTOM (an external authorizer) cannot be asked: its rules deny (fail closed), reported.
//     The istio.io/dry-run annotation makes the policy log only.
//   - A when key the waypoint does not evaluate is reported; it never matches (an ALLOW rule
//     holding it never allows, a DENY rule holding it never denies), as Envoy treats them.

import (
	"fmt"
	"slices"
	"strings"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// conditionKeys are the when keys the waypoint evaluates (waypoint/authz), by prefix for the
// indexed ones.
var conditionKeys = []string{"source.ip", "remote.ip", "source.namespace", "source.principal",
	"request.auth.principal", "request.auth.audiences", "request.auth.presenter", "destination.port",
	"request.headers[", "request.auth.claims["}

// waypointPolicies attaches the targetRefs policies to the ServiceRoutes of the Services they
// apply to.
func (t *translator) waypointPolicies(in Input, svcs map[string]*workloadv1.Service, routes map[string]*routev1.ServiceRoutes) {
	for _, ap := range in.AuthorizationPolicies {
		refs := targetRefs(ap.Spec.TargetRef, ap.Spec.TargetRefs)
		if len(refs) == 0 {
			continue
		}
		report := func(rejected bool, reason, format string, args ...any) {
			t.report(Problem{Kind: KindAuthorizationPolicy, Namespace: ap.Namespace, Name: ap.Name,
				Condition: ConditionWaypointAccepted, Reason: reason, Rejected: rejected, Message: fmt.Sprintf(format, args...)})
		}
		p := t.l7Policy(ap, report)
		if p == nil {
			continue
		}
		targets := t.waypointTargets(ap.Namespace, refs, svcs, report)
		if len(targets) == 0 {
			report(true, ReasonNotImplemented, "no target is a waypoint or a Service bound to one: the policy is enforced nowhere")
			continue
		}
		for _, name := range targets {
			if sr := routes[name]; sr != nil {
				sr.Policies = append(sr.Policies, p)
			}
		}
	}
}

// targetRefs joins a policy's targetRef (the older, single form) to its targetRefs, without
// writing into the object's slice.
func targetRefs(one *typeapi.PolicyTargetReference, many []*typeapi.PolicyTargetReference) []*typeapi.PolicyTargetReference {
	if one == nil {
		return many
	}
	return append(slices.Clip(many), one)
}

// waypointTargets resolves the targetRefs of a policy of namespace ns (the rules above) to the
// names of the Services it applies to, each once, sorted. Each target that is not usable is
// reported; the caller reports a policy with no usable target at all.
func (t *translator) waypointTargets(ns string, refs []*typeapi.PolicyTargetReference, svcs map[string]*workloadv1.Service,
	report func(rejected bool, reason, format string, args ...any)) []string {
	var targets []string // service names
	for _, ref := range refs {
		refNS := ref.Namespace
		if refNS == "" {
			refNS = ns
		}
		switch {
		case ref.Kind == "GatewayClass" && (ref.Group == "" || ref.Group == "gateway.networking.k8s.io"):
			// Istio's mesh-wide waypoint policy: the waypoint class, from the root namespace.
			if ns != t.cfg.RootNamespace || ref.Name != meshWaypointClass {
				report(false, ReasonInvalidValue, "target GatewayClass %s: only GatewayClass %s, from the root namespace %s (every waypoint)",
					ref.Name, meshWaypointClass, t.cfg.RootNamespace)
				continue
			}
			for _, gw := range t.waypoints {
				targets = append(targets, gw.Namespace+"/"+t.hostname(gw.Name, gw.Namespace))
			}
			for name, s := range svcs {
				if s.GetWaypoint().GetHostname() != nil {
					targets = append(targets, name)
				}
			}
		case refNS != ns:
			report(false, ReasonInvalidValue, "target %s %s/%s: a policy targets objects of its own namespace only", ref.Kind, refNS, ref.Name)
		case ref.Kind == "Gateway" && (ref.Group == "" || ref.Group == "gateway.networking.k8s.io"):
			if _, ok := t.waypoints[ns+"/"+ref.Name]; !ok {
				report(false, ReasonWaypointNotFound, "target Gateway %s/%s is not a waypoint (class %s) that exists", ns, ref.Name, meshWaypointClass)
				continue
			}
			host := t.hostname(ref.Name, ns)
			// The waypoint's own Service carries what applies to the workloads bound to it
			// (traffic addressed to a pod, istio.io/waypoint-for workload or all).
			targets = append(targets, ns+"/"+host)
			for name, s := range svcs {
				if h := s.GetWaypoint().GetHostname(); h != nil && h.Namespace == ns && h.Hostname == host {
					targets = append(targets, name)
				}
			}
		case ref.Kind == "Service" && (ref.Group == "" || ref.Group == "core"):
			name := ns + "/" + t.hostname(ref.Name, ns)
			s, ok := svcs[name]
			switch {
			case !ok:
				report(false, ReasonInvalidValue, "target Service %s/%s not found", ns, ref.Name)
			case s.GetWaypoint() == nil:
				report(false, ReasonInvalidValue, "target Service %s/%s is bound to no waypoint: the policy is not enforced for it", ns, ref.Name)
			default:
				targets = append(targets, name)
			}
		default:
			report(false, ReasonUnsupportedValue, "target %s.%s %s: only a waypoint Gateway, a Service or (from the root namespace) the waypoint GatewayClass",
				ref.Kind, ref.Group, ref.Name)
		}
	}
	slices.Sort(targets)
	return slices.Compact(targets)
}

// l7Policy translates ap's action and rules; nil for an action it does not know (reported).
func (t *translator) l7Policy(ap *secv1.AuthorizationPolicy, report func(bool, string, string, ...any)) *routev1.Policy {
	spec := &ap.Spec
	out := &routev1.Policy{Name: ap.Name, Namespace: ap.Namespace, DryRun: ap.Annotations[annotationDryRun] == "true"}
	switch spec.Action {
	case secapi.AuthorizationPolicy_ALLOW:
		out.Action = routev1.Policy_ALLOW
	case secapi.AuthorizationPolicy_DENY:
		out.Action = routev1.Policy_DENY
	case secapi.AuthorizationPolicy_AUDIT:
		out.Action = routev1.Policy_AUDIT
	case secapi.AuthorizationPolicy_CUSTOM:
		out.Action = routev1.Policy_DENY
		report(false, ReasonUnsupportedValue, "the waypoint cannot ask an external authorizer (CUSTOM): the requests the rules match are denied")
	default:
		report(true, ReasonUnsupportedValue, "unknown action %s", spec.Action)
		return nil
	}
	for i, r := range spec.Rules {
		var is issues
		rule := &routev1.PolicyRule{}
		for _, f := range r.From {
			rule.From = append(rule.From, t.l7Source(ap.Namespace, f.GetSource(), &is))
		}
		for _, to := range r.To {
			o := to.GetOperation()
			if o == nil {
				o = &secapi.Operation{}
			}
			rule.To = append(rule.To, &routev1.Operation{Hosts: o.Hosts, NotHosts: o.NotHosts, Ports: o.Ports, NotPorts: o.NotPorts,
				Methods: o.Methods, NotMethods: o.NotMethods, Paths: o.Paths, NotPaths: o.NotPaths})
		}
		for _, w := range r.When {
			known := false
			for _, k := range conditionKeys {
				if w.Key == k || strings.HasSuffix(k, "[") && strings.HasPrefix(w.Key, k) && strings.HasSuffix(w.Key, "]") {
					known = true
				}
			}
			if !known {
				is.unsupported = append(is.unsupported, "when "+w.Key)
			}
			rule.When = append(rule.When, &routev1.Condition{Key: w.Key, Values: w.Values, NotValues: w.NotValues})
		}
		if !is.empty() {
			report(false, is.reason(), "rule %d: %s: those never match", i, strings.ReplaceAll(is.String(), "ztunnel cannot enforce", "the waypoint does not evaluate"))
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

func (t *translator) l7Source(ns string, s *secapi.Source, is *issues) *routev1.Source {
	out := &routev1.Source{}
	if s == nil {
		return out
	}
	out.Principals, out.NotPrincipals = s.Principals, s.NotPrincipals
	out.RequestPrincipals, out.NotRequestPrincipals = s.RequestPrincipals, s.NotRequestPrincipals
	out.Namespaces, out.NotNamespaces = s.Namespaces, s.NotNamespaces
	out.IpBlocks, out.NotIpBlocks = s.IpBlocks, s.NotIpBlocks
	out.RemoteIpBlocks, out.NotRemoteIpBlocks = s.RemoteIpBlocks, s.NotRemoteIpBlocks
	for _, sa := range s.ServiceAccounts {
		if p, ok := t.saPrincipal(ns, sa, is); ok {
			out.Principals = append(out.Principals, p)
		}
	}
	for _, sa := range s.NotServiceAccounts {
		if p, ok := t.saPrincipal(ns, sa, is); ok {
			out.NotPrincipals = append(out.NotPrincipals, p)
		}
	}
	for _, td := range s.TrustDomains {
		out.Principals = append(out.Principals, trustDomainPattern(td))
	}
	for _, td := range s.NotTrustDomains {
		out.NotPrincipals = append(out.NotPrincipals, trustDomainPattern(td))
	}
	return out
}

// trustDomainPattern matches the principals of a trust domain: "td" → "td/*".
func trustDomainPattern(td string) string {
	if td == "*" || strings.HasSuffix(td, "*") {
		return td
	}
	return td + "/*"
}

// enforceWaypoints marks the Services with L7 policy at their waypoint (authorization or JWT), so
// that their endpoints' ztunnels refuse what does not come through the waypoint: a connection to
// the pod's address would otherwise skip that policy.
func enforceWaypoints(svcs map[string]*workloadv1.Service, routes map[string]*routev1.ServiceRoutes) {
	for name, s := range svcs {
		if sr := routes[name]; s.GetWaypoint() != nil && sr != nil && (len(sr.Policies) > 0 || len(sr.JwtRules) > 0) {
			s.EnforceWaypoint = true
		}
	}
}
