package xdsclient

import (
	"bytes"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The codec against the generated Envoy types: what it writes, they read as meant; what they
// write, it reads, skipping what it does not use.
func TestWireRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   *deltaRequest
		want *discoveryv3.DeltaDiscoveryRequest
	}{{
		name: "subscription",
		in:   &deltaRequest{nodeID: "ztunnel~node-1", typeURL: TypeWorkload, subscribe: []string{"*"}, initialResourceVersions: map[string]string{"a": "1", "b": ""}},
		want: &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~node-1"}, TypeUrl: TypeWorkload,
			ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: map[string]string{"a": "1", "b": ""}},
	}, {
		name: "ack",
		in:   &deltaRequest{typeURL: TypeService, responseNonce: "n1"},
		want: &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService, ResponseNonce: "n1"},
	}, {
		name: "nack",
		in:   &deltaRequest{typeURL: TypeService, responseNonce: "n2", errorCode: 3, errorMessage: "ns/x: bad"},
		want: &discoveryv3.DeltaDiscoveryRequest{TypeUrl: TypeService, ResponseNonce: "n2", ErrorDetail: &statuspb.Status{Code: 3, Message: "ns/x: bad"}},
	}, {
		name: "negative code",
		in:   &deltaRequest{errorCode: -1},
		want: &discoveryv3.DeltaDiscoveryRequest{ErrorDetail: &statuspb.Status{Code: -1}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := &discoveryv3.DeltaDiscoveryRequest{}
			if err := proto.Unmarshal(tc.in.marshal(), got); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got, protocmp.Transform()); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if len(tc.in.initialResourceVersions) < 2 { // a map's order is not fixed
				if want := marshal(t, tc.want); !bytes.Equal(tc.in.marshal(), want) {
					t.Errorf("bytes %x, want %x as protobuf writes them", tc.in.marshal(), want)
				}
			}
		})
	}
}

func TestWireResponse(t *testing.T) {
	body, err := anypb.New(&discoveryv3.Resource{Name: "inner"}) // any message will do
	if err != nil {
		t.Fatal(err)
	}
	in := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: "v9",
		TypeUrl:           TypeWorkload,
		Nonce:             "n7",
		RemovedResources:  []string{"gone-1", "gone-2"},
		Resources: []*discoveryv3.Resource{
			{Name: "a", Version: "1", Resource: body, Aliases: []string{"x"}, Ttl: durationpb.New(5)}, // fields skipped
			{Name: "b"}, // no body
		},
		RemovedResourceNames: []*discoveryv3.ResourceName{{Name: "skipped"}},
		ControlPlane:         &corev3.ControlPlane{Identifier: "istiod-lite"},
	}
	got := fromEnvoy(in)
	want := &deltaResponse{systemVersionInfo: "v9", typeURL: TypeWorkload, nonce: "n7", removed: []string{"gone-1", "gone-2"},
		resources: []resource{{name: "a", version: "1", hasBody: true, bodyType: body.TypeUrl, body: body.Value}, {name: "b"}}}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(deltaResponse{}, resource{})); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}

	b := marshal(t, in)
	var d *deltaResponse
	if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &d); err != nil {
		t.Fatal(err)
	}
	clear(b) // gRPC may reuse its buffer once Unmarshal returns
	if string(d.resources[0].body) != string(body.Value) || d.nonce != "n7" {
		t.Error("the decoded response aliases the buffer it was decoded from")
	}
}

// What protobuf refuses, the codec refuses; what it takes, the codec takes alike.
func TestWireResponseAsProtobuf(t *testing.T) {
	good := marshal(t, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: TypeWorkload, Resources: []*discoveryv3.Resource{{Name: "a"}}})
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"good", good, true},
		{"truncated", good[:len(good)-1], false},
		{"bad tag", []byte{0x00}, false},
		{"overlong length", []byte{5<<3 | 2, 10, 'x'}, false},
		{"type_url as a varint: skipped", []byte{4 << 3, 1}, true},
		{"resource name as a varint: skipped", []byte{2<<3 | 2, 2, 3 << 3, 1}, true},
		{"nonce not UTF-8", []byte{5<<3 | 2, 1, 0xff}, false},
		{"resource name not UTF-8", []byte{2<<3 | 2, 3, 3<<3 | 2, 1, 0xc3}, false},
		{"removed name not UTF-8", []byte{6<<3 | 2, 1, 0x80}, false},
		{"body not UTF-8: bytes", []byte{2<<3 | 2, 5, 2<<3 | 2, 3, 2<<3 | 2, 1, 0xff}, true},
	} {
		err := proto.Unmarshal(tc.b, &discoveryv3.DeltaDiscoveryResponse{})
		if (err == nil) != tc.ok {
			t.Fatalf("%s: protobuf says %v; the table is wrong", tc.name, err)
		}
		got, err := decodeDeltaResponse(tc.b)
		if (err == nil) != tc.ok {
			t.Errorf("%s: decoded %x: %v, want ok=%v", tc.name, tc.b, err, tc.ok)
			continue
		}
		if tc.ok {
			if d := cmp.Diff(fromEnvoy(mustUnmarshal(t, tc.b)), got, cmp.AllowUnexported(deltaResponse{}, resource{})); d != "" {
				t.Errorf("%s: (-protobuf +codec):\n%s", tc.name, d)
			}
		}
	}
}

func mustUnmarshal(t *testing.T, b []byte) *discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	r := &discoveryv3.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(b, r); err != nil {
		t.Fatal(err)
	}
	return r
}
