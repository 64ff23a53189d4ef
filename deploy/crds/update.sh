#!/usr/bin/env bash
# update.sh copies the CRDs istiod-lite watches from the Go modules pinned in go.mod, so the
# manifests always match the client types compiled in:
#   security.istio.io: AuthorizationPolicy, PeerAuthentication, RequestAuthentication (istio.io/api)
#   networking.istio.io: DestinationRule (istio.io/api)
#   gateway.networking.k8s.io: GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant (sigs.k8s.io/gateway-api,
#   experimental channel: the mesh features of routes that are not yet standard, retries and CORS,
#   are in it)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
istio="$(go list -m -f '{{.Dir}}' istio.io/api)"
gw="$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"

awk -v out="$here/istio-security.yaml" '
	BEGIN { RS = "\n---\n"; ORS = "" ; n = 0 }
	/\n  name: (authorizationpolicies|peerauthentications|requestauthentications)\.security\.istio\.io\n/ {
		printf "%s%s\n", (n++ ? "---\n" : ""), $0 > out
	}' "$istio/kubernetes/customresourcedefinitions.gen.yaml"

awk -v out="$here/istio-networking.yaml" '
	BEGIN { RS = "\n---\n"; ORS = "" ; n = 0 }
	/\n  name: destinationrules\.networking\.istio\.io\n/ {
		printf "%s%s\n", (n++ ? "---\n" : ""), $0 > out
	}' "$istio/kubernetes/customresourcedefinitions.gen.yaml"

: >"$here/gateway-api.yaml"
first=1
for r in gatewayclasses gateways httproutes grpcroutes referencegrants; do
	[ $first -eq 1 ] || echo "---" >>"$here/gateway-api.yaml"
	first=0
	cat "$gw/config/crd/experimental/gateway.networking.k8s.io_$r.yaml" >>"$here/gateway-api.yaml"
done
