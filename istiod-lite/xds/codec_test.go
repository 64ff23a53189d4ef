package xds

import (
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
)

// decode returns r as a client receives it: through the codec's bytes and the protobuf parser.
// Tests of the stream state machine read its responses this way, so every one of them also
// checks the encoding. nil stays nil.
func decode(t testing.TB, r *response) *discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	if r == nil {
		return nil
	}
	bs, err := codec{proto: encoding.GetCodecV2("proto")}.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	out := &discoveryv3.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(bs.Materialize(), out); err != nil {
		t.Fatalf("the encoded response does not parse: %v", err)
	}
	return out
}

// A pre-encoded response is byte for byte a DeltaDiscoveryResponse with the same content, and
// other messages go through the protobuf codec unchanged.
func TestCodecEncodesResponses(t *testing.T) {
	m := baseModel()
	snap, err := NewSnapshot(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	var res []*resource
	var want []*discoveryv3.Resource
	for _, n := range snap.sortedNames(TypeWorkload) {
		r := snap.resources[TypeWorkload][n]
		res = append(res, r)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m.Workloads[n])
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, &discoveryv3.Resource{Name: n, Version: r.version,
			Resource: &anypb.Any{TypeUrl: TypeWorkload, Value: b}})
	}
	r := &response{typ: TypeWorkload, version: "v7", nonce: "3", res: res, removed: []string{"gone"}}
	got := decode(t, r)
	wantResp := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v7", TypeUrl: TypeWorkload,
		Nonce: "3", RemovedResources: []string{"gone"}, Resources: want}
	if diff := cmp.Diff(wantResp, got, protocmp.Transform()); diff != "" {
		t.Errorf("decoded response (-want +got):\n%s", diff)
	}
	if len(res) < 2 {
		t.Fatalf("the test model has %d workloads; the test needs several", len(res))
	}

	c := codec{proto: encoding.GetCodecV2("proto")}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService, ResponseNonce: "9"}
	bs, err := c.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	back := &discoveryv3.DeltaDiscoveryRequest{}
	if err := c.Unmarshal(bs, back); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(req, back) {
		t.Errorf("request through the codec: %v, want %v", back, req)
	}
	if c.Name() != "proto" {
		t.Errorf("codec name %q: clients would see another content type", c.Name())
	}
}
