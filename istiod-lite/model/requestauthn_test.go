package model

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// The waypoint and Services every TestRequestAuthentications row starts from: shop/web and
// shop/v2 are bound to the waypoint shop/waypoint, shop/plain to none.
const jwtServices = `
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: v2, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: plain, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
`

// wantProblem is a problem a row expects: its condition, whether it rejects, and a substring of
// its message.
type wantProblem struct {
	condition string
	rejected  bool
	msg       string
}

// checkProblems compares the problems of kind among ps (sorted) with want, in order.
func checkProblems(t *testing.T, kind string, ps []Problem, want []wantProblem) {
	t.Helper()
	var got []Problem
	for _, p := range ps {
		if p.Kind == kind {
			got = append(got, p)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("problems of %s: got %v, want %d: %v", kind, got, len(want), want)
	}
	for i, p := range got {
		w := want[i]
		if p.Condition != w.condition || p.Rejected != w.rejected || !strings.Contains(p.Message, w.msg) {
			t.Errorf("problem %d: got %+v, want condition %q, rejected %v, a message containing %q", i, p, w.condition, w.rejected, w.msg)
		}
	}
}

func TestRequestAuthentications(t *testing.T) {
	full := &routev1.JWTRule{Issuer: "https://issuer.example", Audiences: []string{"shop", "api"},
		JwksUri: "https://issuer.example/jwks", FromParams: []string{"token"}, ForwardOriginalToken: true,
		FromHeaders:          []*routev1.JWTRule_HeaderLocation{{Name: "x-jwt"}, {Name: "Authorization", Prefix: "Bearer "}},
		OutputClaimToHeaders: []*routev1.JWTRule_ClaimToHeader{{Header: "x-sub", Claim: "sub"}}}
	inline := &routev1.JWTRule{Issuer: "inline", Jwks: `{"keys": []}`}
	ra := func(name, spec string) string {
		return "kind: RequestAuthentication\nmetadata: {name: " + name + ", namespace: shop}\nspec: " + spec
	}
	const toWeb = "{targetRefs: [{group: '', kind: Service, name: web}], jwtRules: "
	tests := []struct {
		name     string
		docs     string
		want     map[string][]*routev1.JWTRule // by ServiceRoutes key; the others have none
		problems []wantProblem
	}{{
		name: "a Gateway target applies to every Service bound to the waypoint, a Service target to that Service, each once",
		docs: ra("svc-jwt", `{targetRefs: [{group: "", kind: Service, name: v2}], jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`) + `
---
kind: RequestAuthentication
metadata: {name: gw-jwt, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}, {kind: Service, name: web}]
  jwtRules:
  - issuer: https://issuer.example
    audiences: [shop, api]
    jwksUri: https://issuer.example/jwks
    fromHeaders: [{name: x-jwt}, {name: Authorization, prefix: "Bearer "}]
    fromParams: [token]
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    forwardOriginalToken: true`,
		want: map[string][]*routev1.JWTRule{webKey: {full}, v2Key: {full, inline}}, // policies by name
	}, {
		name: "a Gateway target applies to the workloads bound to the waypoint too: its own Service's routes carry it",
		docs: ra("gw-jwt", `{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}], jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`) + `
---
kind: Service
metadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {ports: [{name: mesh, port: 15008}]}`,
		want: map[string][]*routev1.JWTRule{webKey: {inline}, v2Key: {inline}, "shop/waypoint.shop.svc.cluster.local": {inline}},
	}, {
		name: "the waypoint GatewayClass, from the root namespace, is every waypoint",
		docs: `
kind: RequestAuthentication
metadata: {name: mesh-jwt, namespace: istio-system}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]`,
		want: map[string][]*routev1.JWTRule{webKey: {inline}, v2Key: {inline}},
	}, {
		name: "the waypoint GatewayClass from another namespace is refused",
		docs: ra("class", `{targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}], jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`),
		problems: []wantProblem{
			{ConditionWaypointAccepted, true, "no target is a waypoint or a Service bound to one"},
			{ConditionWaypointAccepted, false, "only GatewayClass istio-waypoint, from the root namespace istio-system"},
		},
	}, {
		name: "the older targetRef",
		docs: ra("one", `{targetRef: {kind: Service, name: web}, jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`),
		want: map[string][]*routev1.JWTRule{webKey: {inline}},
	}, {
		name: "targets that are not usable are reported; with none the policy is rejected",
		docs: ra("nowhere", `{targetRefs: [
			{kind: Service, name: plain}, {kind: Service, name: gone}, {group: gateway.networking.k8s.io, kind: Gateway, name: nope},
			{kind: Service, name: web, namespace: other}, {kind: Pod, name: web}],
			jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`),
		problems: []wantProblem{
			{ConditionWaypointAccepted, true, "no target is a waypoint or a Service bound to one: the policy is applied nowhere"},
			{ConditionWaypointAccepted, false, "target Gateway shop/nope is not a waypoint"},
			{ConditionWaypointAccepted, false, "target Pod. web: only a waypoint Gateway, a Service or (from the root namespace) the waypoint GatewayClass"},
			{ConditionWaypointAccepted, false, "target Service other/web: a policy targets objects of its own namespace only"},
			{ConditionWaypointAccepted, false, "target Service shop/gone not found"},
			{ConditionWaypointAccepted, false, "target Service shop/plain is bound to no waypoint"},
		},
	}, {
		name: "a usable target is enough",
		docs: ra("some", `{targetRefs: [{kind: Service, name: plain}, {kind: Service, name: web}], jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`),
		want: map[string][]*routev1.JWTRule{webKey: {inline}},
		problems: []wantProblem{
			{ConditionWaypointAccepted, false, "target Service shop/plain is bound to no waypoint"},
		},
	}, {
		name: "rules without issuer or keys are dropped",
		docs: ra("r", toWeb+`[{jwksUri: https://x.example/jwks}, {issuer: discover}, {issuer: inline, jwks: '{"keys": []}'}]}`),
		want: map[string][]*routev1.JWTRule{webKey: {inline}},
		problems: []wantProblem{
			{ConditionWaypointAccepted, false, "jwtRule 0 has no issuer: dropped"},
			{ConditionWaypointAccepted, false, "jwtRule 1 (issuer discover) has neither jwksUri nor jwks"},
		},
	}, {
		name: "a policy left without rules is rejected",
		docs: ra("r", toWeb+`[{issuer: discover}]}`),
		problems: []wantProblem{
			{ConditionWaypointAccepted, false, "jwtRule 0 (issuer discover) has neither jwksUri nor jwks"},
			{ConditionWaypointAccepted, true, "no jwtRule is usable: the policy is applied nowhere"},
		},
	}, {
		name: "a policy without rules has nothing to apply",
		docs: ra("r", `{targetRefs: [{kind: Service, name: web}]}`),
	}, {
		name: "fields the waypoint does not apply are reported, the rule kept",
		docs: ra("r", toWeb+`[{issuer: inline, jwks: '{"keys": []}', fromCookies: [session], outputPayloadToHeader: x-payload,
			timeout: 5s, presence: REQUIRED}]}`),
		want: map[string][]*routev1.JWTRule{webKey: {inline}},
		problems: []wantProblem{
			{ConditionWaypointAccepted, false, "jwtRule 0 (issuer inline): fromCookies, outputPayloadToHeader, presence, timeout not applied (requests without a token are not refused"},
		},
	}, {
		name: "policies for sidecars apply nowhere",
		docs: ra("selected", `{selector: {matchLabels: {app: web}}, jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`) + "\n---\n" +
			ra("namespace-wide", `{jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`),
		problems: []wantProblem{
			{ConditionZtunnelAccepted, true, "a RequestAuthentication without targetRefs applies to sidecars; in ambient, target a waypoint"},
			{ConditionZtunnelAccepted, true, "a selector-bound RequestAuthentication needs a sidecar; in ambient, target a waypoint"},
		},
	}, {
		name: "targetRefs win over a selector",
		docs: ra("both", `{selector: {matchLabels: {app: web}}, targetRefs: [{kind: Service, name: web}], jwtRules: [{issuer: inline, jwks: '{"keys": []}'}]}`),
		want: map[string][]*routev1.JWTRule{webKey: {inline}},
		problems: []wantProblem{
			{ConditionWaypointAccepted, false, "selector and targetRefs are both set: the selector is ignored"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := Translate(DefaultConfig(), gammaInput(t, jwtServices+"\n---\n"+tt.docs))
			got := map[string][]*routev1.JWTRule{}
			for key, sr := range snap.Routes {
				if len(sr.JwtRules) > 0 {
					got[key] = sr.JwtRules
				}
			}
			if diff := cmp.Diff(tt.want, got, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("jwt rules (-want +got):\n%s", diff)
			}
			checkProblems(t, KindRequestAuthentication, snap.Problems, tt.problems)
		})
	}
}
