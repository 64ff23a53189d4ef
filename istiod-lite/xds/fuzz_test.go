package xds

import (
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// FuzzRequest feeds client-controlled DeltaDiscoveryRequests (any bytes that parse) into the
// stream state machine: it must not panic, must only send what the proxy may see, and must never
// grow its pending-nonce table without bound.
func FuzzRequest(f *testing.F) {
	for _, r := range []*discoveryv3.DeltaDiscoveryRequest{
		{TypeUrl: TypeWorkload},
		{TypeUrl: TypeAuthorization, ResourceNamesSubscribe: []string{"*", "shop/web-allow"}},
		{TypeUrl: TypeWorkload, ResponseNonce: "1", InitialResourceVersions: map[string]string{"a1": "x"}},
		{TypeUrl: TypeService, ResourceNamesUnsubscribe: []string{"*"}, ResourceNamesSubscribe: []string{"nope"}},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b, b)
	}
	snap, err := NewSnapshot(baseModel(), nil)
	if err != nil {
		f.Fatal(err)
	}
	snap.version = "1"
	f.Fuzz(func(t *testing.T, a, b []byte) {
		st := newStream(&Proxy{ID: "z", Role: RoleZtunnel, Node: "node-a"})
		for _, raw := range [][]byte{a, b, a} {
			req := &discoveryv3.DeltaDiscoveryRequest{}
			if proto.Unmarshal(raw, req) != nil {
				return
			}
			enc, _ := st.onRequest(req, snap)
			resp := decode(t, enc)
			if resp == nil {
				continue
			}
			for _, r := range resp.Resources {
				if !snap.visible(st.proxy, resp.TypeUrl, r.Name) {
					t.Fatalf("sent invisible %s %s", resp.TypeUrl, r.Name)
				}
			}
			if len(st.pending) > maxPending {
				t.Fatalf("pending grew to %d", len(st.pending))
			}
		}
		st.onPush(snap, nil)
	})
}
