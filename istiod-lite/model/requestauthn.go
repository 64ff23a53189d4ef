package model

// RequestAuthentication with targetRefs → routev1.JWTRule, checked by a waypoint. The rules kept
// here:
//
//   - targetRefs (or the older targetRef) follow AuthorizationPolicy's rules (waypointTargets in
//     l7authz.go): the waypoint Gateway, for every Service bound to it, or a Service bound to a
//     waypoint, in the policy's namespace. A target that is not usable is a WaypointAccepted
//     problem; a policy with none is rejected.
//   - Every usable jwtRule is appended to the JwtRules of each Service targeted, the policies
//     taken by namespace then name, their rules in order: issuer, audiences, jwksUri, jwks,
//     fromHeaders, fromParams, outputClaimToHeaders and forwardOriginalToken.
//   - A jwtRule without issuer is dropped, and so is one with neither jwksUri nor jwks: Istio
//     would fetch the keys through the issuer's OpenID discovery, istiod-lite does not. Both are
//     reported; a token of that issuer then matches no rule of the Service (refused when the
//     Service has other rules, without identity otherwise). The policy is rejected when no rule
//     is left.
//   - Fields of a jwtRule the waypoint does not apply (fromCookies, outputPayloadToHeader,
//     timeout, spaceDelimitedClaims, presence: REQUIRED) are reported; the rule is kept without
//     them.
//   - A policy with a selector and no targetRefs, or with neither, is for sidecars: ztunnel
//     cannot read a JWT. It is reported (ZtunnelAccepted, rejected) and applied nowhere.

import (
	"fmt"
	"slices"
	"strings"

	secapi "istio.io/api/security/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
)

// KindRequestAuthentication names the kind problems of RequestAuthentications are reported on.
const KindRequestAuthentication = "RequestAuthentication"

// requestAuthentications attaches the jwtRules of the targetRefs RequestAuthentications to the
// ServiceRoutes of the Services they apply to.
func (t *translator) requestAuthentications(in Input, svcs map[string]*workloadv1.Service, routes map[string]*routev1.ServiceRoutes) {
	ras := slices.Clone(in.RequestAuthentications)
	slices.SortFunc(ras, func(a, b *secv1.RequestAuthentication) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for _, ra := range ras {
		refs := targetRefs(ra.Spec.TargetRef, ra.Spec.TargetRefs)
		report := func(condition string) func(bool, string, string, ...any) {
			return func(rejected bool, reason, format string, args ...any) {
				t.report(Problem{Kind: KindRequestAuthentication, Namespace: ra.Namespace, Name: ra.Name,
					Condition: condition, Reason: reason, Rejected: rejected, Message: fmt.Sprintf(format, args...)})
			}
		}
		waypointReport := report(ConditionWaypointAccepted)
		if len(refs) == 0 {
			msg := "a selector-bound RequestAuthentication needs a sidecar; in ambient, target a waypoint"
			if ra.Spec.Selector == nil {
				msg = "a RequestAuthentication without targetRefs applies to sidecars; in ambient, target a waypoint"
			}
			report(ConditionZtunnelAccepted)(true, ReasonUnsupportedValue, "%s", msg)
			continue
		}
		if ra.Spec.Selector != nil {
			waypointReport(false, ReasonInvalidValue, "selector and targetRefs are both set: the selector is ignored")
		}
		targets := t.waypointTargets(ra.Namespace, refs, svcs, waypointReport)
		var rules []*routev1.JWTRule
		for i, r := range ra.Spec.JwtRules {
			if out := jwtRule(i, r, waypointReport); out != nil {
				rules = append(rules, out)
			}
		}
		switch {
		case len(targets) == 0:
			waypointReport(true, ReasonNotImplemented, "no target is a waypoint or a Service bound to one: the policy is applied nowhere")
			continue
		case len(rules) == 0 && len(ra.Spec.JwtRules) > 0:
			waypointReport(true, ReasonInvalidValue, "no jwtRule is usable: the policy is applied nowhere")
			continue
		}
		for _, name := range targets {
			if sr := routes[name]; sr != nil {
				sr.JwtRules = append(sr.JwtRules, rules...)
			}
		}
	}
}

// jwtRule translates the i-th jwtRule of a policy; nil for one that cannot be used (reported).
func jwtRule(i int, r *secapi.JWTRule, report func(bool, string, string, ...any)) *routev1.JWTRule {
	switch {
	case r.Issuer == "":
		report(false, ReasonInvalidValue, "jwtRule %d has no issuer: dropped", i)
		return nil
	case r.JwksUri == "" && r.Jwks == "":
		report(false, ReasonNotImplemented, "jwtRule %d (issuer %s) has neither jwksUri nor jwks, and istiod-lite does not discover the keys through OpenID: dropped", i, r.Issuer)
		return nil
	}
	out := &routev1.JWTRule{Issuer: r.Issuer, Audiences: r.Audiences, JwksUri: r.JwksUri, Jwks: r.Jwks,
		FromParams: r.FromParams, ForwardOriginalToken: r.ForwardOriginalToken}
	for _, h := range r.FromHeaders {
		out.FromHeaders = append(out.FromHeaders, &routev1.JWTRule_HeaderLocation{Name: h.Name, Prefix: h.Prefix})
	}
	for _, c := range r.OutputClaimToHeaders {
		out.OutputClaimToHeaders = append(out.OutputClaimToHeaders, &routev1.JWTRule_ClaimToHeader{Header: c.Header, Claim: c.Claim})
	}
	if u := unapplied("", r, "issuer", "audiences", "jwks_uri", "jwks", "from_headers", "from_params",
		"output_claim_to_headers", "forward_original_token"); len(u) > 0 {
		msg := strings.Join(u, ", ") + " not applied"
		if r.Presence == secapi.JWTRule_REQUIRED {
			msg += " (requests without a token are not refused: require requestPrincipals in an AuthorizationPolicy)"
		}
		report(false, ReasonUnsupportedValue, "jwtRule %d (issuer %s): %s", i, r.Issuer, msg)
	}
	return out
}
