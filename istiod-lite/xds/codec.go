package xds

// Responses go out pre-encoded. Every resource of a snapshot is serialised once, as the bytes of
// its `resources` entry in a DeltaDiscoveryResponse (field tag, length, Resource message), and a
// response is those shared bytes behind a small header that carries the per-stream fields
// (type, version, nonce, removals). Protobuf allows a message's fields in any order and
// concatenated encodings merge, so the result is an ordinary DeltaDiscoveryResponse to any client.
//
// What this buys: a proxy's first push (every workload of the cluster, megabytes) costs
// neither a marshal nor a copy per proxy; gRPC writes the shared bytes straight into HTTP/2
// frames. istiod-lite's memory while first pushes are in flight is the header and one slice
// entry per resource, not a copy of the cluster per proxy.
//
// The rules: resource bytes are immutable once in a snapshot (gRPC reads them from another
// goroutine after SendMsg returns); the codec must be installed on the gRPC server
// (ServerOption), and passes every other message to the standard protobuf codec.

import (
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// resourcesField is the field number of DeltaDiscoveryResponse.resources.
const resourcesField = 2

// encodeResource returns the bytes of r as one entry of a DeltaDiscoveryResponse's resources.
func encodeResource(r *discoveryv3.Resource) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, err
	}
	out := protowire.AppendTag(make([]byte, 0, len(b)+8), resourcesField, protowire.BytesType)
	out = protowire.AppendBytes(out, b)
	return out, nil
}

// response is a DeltaDiscoveryResponse whose resources are pre-encoded (see the file comment).
type response struct {
	typ, version, nonce string
	res                 []*resource
	removed             []string
}

// encode returns the wire form of r: its header, then the shared bytes of its resources.
func (r *response) encode() (mem.BufferSlice, error) {
	hdr, err := proto.MarshalOptions{Deterministic: true}.Marshal(&discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: r.version,
		TypeUrl:           r.typ,
		RemovedResources:  r.removed,
		Nonce:             r.nonce,
	})
	if err != nil {
		return nil, err
	}
	out := make(mem.BufferSlice, 0, 1+len(r.res))
	out = append(out, mem.SliceBuffer(hdr))
	for _, res := range r.res {
		out = append(out, res.wire)
	}
	return out, nil
}

// codec sends responses as they are and everything else through the protobuf codec.
type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*response); ok {
		return r.encode()
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// Name is the protobuf codec's: clients see the usual application/grpc+proto.
func (c codec) Name() string { return c.proto.Name() }

// ServerOption installs the codec the xDS server needs on a gRPC server. Messages of other
// services on that server are encoded as usual.
func ServerOption() grpc.ServerOption {
	pc := encoding.GetCodecV2("proto")
	if pc == nil {
		panic("xds: the gRPC protobuf codec is not registered")
	}
	return grpc.ForceServerCodecV2(codec{proto: pc})
}
