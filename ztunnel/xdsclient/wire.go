package xdsclient

// The delta xDS messages on the wire, encoded and decoded here rather than with
// go-control-plane's generated types. Those types bring Envoy's whole configuration model and
// its descriptors: about 2.3 MB of resident memory in every ztunnel and waypoint, touched at
// start-up by descriptor registration, for the few fields a client of istiod-lite uses. The
// field numbers are those of envoy/service/discovery/v3/discovery.proto, which is stable
// (the v3 API's freeze policy); the tests check this codec against the generated types, both
// ways, through a real gRPC server.
//
// Rules kept here:
//   - Decoding skips fields it does not know, and known fields of another wire type, as
//     protobuf-go does: a newer server may send more. It refuses what protobuf-go refuses:
//     malformed framing and strings that are not UTF-8.
//   - Nothing decoded aliases gRPC's receive buffer, which may be reused once Unmarshal returns.

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// adsMethod is the full gRPC method of the delta aggregated stream.
const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

// deltaRequest is envoy.service.discovery.v3.DeltaDiscoveryRequest, with the fields a
// wildcard subscriber sends.
type deltaRequest struct {
	nodeID                  string            // node.id (field 1, Node field 1)
	typeURL                 string            // 2
	subscribe               []string          // 3, resource_names_subscribe
	initialResourceVersions map[string]string // 5
	responseNonce           string            // 6
	errorCode               int32             // 7, error_detail.code; 0 with a message is still a NACK
	errorMessage            string            // 7, error_detail.message; "" and code 0: an ACK
}

// deltaResponse is envoy.service.discovery.v3.DeltaDiscoveryResponse.
type deltaResponse struct {
	systemVersionInfo string     // 1
	resources         []resource // 2
	typeURL           string     // 4
	nonce             string     // 5
	removed           []string   // 6, removed_resources
}

// resource is envoy.service.discovery.v3.Resource with its google.protobuf.Any body.
type resource struct {
	version  string // 1
	hasBody  bool   // 2 present
	bodyType string // 2, Any.type_url
	body     []byte // 2, Any.value
	name     string // 3
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendMessage appends field num holding the message that body appends.
func appendMessage(b []byte, num protowire.Number, body func([]byte) []byte) []byte {
	inner := body(nil)
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

func (r *deltaRequest) marshal() []byte {
	var b []byte
	if r.nodeID != "" {
		b = appendMessage(b, 1, func(b []byte) []byte { return appendString(b, 1, r.nodeID) })
	}
	b = appendString(b, 2, r.typeURL)
	for _, s := range r.subscribe {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	for k, v := range r.initialResourceVersions {
		b = appendMessage(b, 5, func(b []byte) []byte {
			b = protowire.AppendTag(b, 1, protowire.BytesType) // map keys and values are always sent
			b = protowire.AppendString(b, k)
			b = protowire.AppendTag(b, 2, protowire.BytesType)
			return protowire.AppendString(b, v)
		})
	}
	b = appendString(b, 6, r.responseNonce)
	if r.errorCode != 0 || r.errorMessage != "" {
		b = appendMessage(b, 7, func(b []byte) []byte {
			if r.errorCode != 0 {
				b = protowire.AppendTag(b, 1, protowire.VarintType)
				b = protowire.AppendVarint(b, uint64(int64(r.errorCode))) // int32: sign-extended
			}
			return appendString(b, 2, r.errorMessage)
		})
	}
	return b
}

// fields calls f for each field of the message in b, stopping at the first error.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return protowire.ParseError(m)
		}
		if err := f(num, typ, b[:m]); err != nil {
			return err
		}
		b = b[m:]
	}
	return nil
}

// bytesFields calls f with the contents of each length-delimited field (string, bytes,
// message) of b numbered in known; other fields are skipped.
func bytesFields(b []byte, f func(num protowire.Number, s []byte) error, known ...protowire.Number) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType || !slices.Contains(known, num) {
			return nil
		}
		s, n := protowire.ConsumeBytes(v)
		if n < 0 {
			return protowire.ParseError(n)
		}
		return f(num, s)
	})
}

// str is the string field s, which proto3 requires to be UTF-8.
func str(num protowire.Number, s []byte) (string, error) {
	if !utf8.Valid(s) {
		return "", fmt.Errorf("field %d: invalid UTF-8", num)
	}
	return string(s), nil
}

// decodeDeltaResponse decodes b, which the caller gives up: the bodies it returns share it.
func decodeDeltaResponse(b []byte) (*deltaResponse, error) {
	r := &deltaResponse{}
	err := bytesFields(b, func(num protowire.Number, s []byte) (err error) {
		switch num {
		case 1:
			r.systemVersionInfo, err = str(num, s)
		case 2:
			res, err := decodeResource(s)
			if err != nil {
				return fmt.Errorf("resource %d: %w", len(r.resources), err)
			}
			r.resources = append(r.resources, res)
		case 4:
			r.typeURL, err = str(num, s)
		case 5:
			r.nonce, err = str(num, s)
		case 6:
			var name string
			name, err = str(num, s)
			r.removed = append(r.removed, name)
		}
		return err
	}, 1, 2, 4, 5, 6)
	if err != nil {
		return nil, fmt.Errorf("DeltaDiscoveryResponse: %w", err)
	}
	return r, nil
}

func decodeResource(b []byte) (resource, error) {
	var r resource
	err := bytesFields(b, func(num protowire.Number, s []byte) (err error) {
		switch num {
		case 1:
			r.version, err = str(num, s)
		case 2:
			r.hasBody = true
			return bytesFields(s, func(num protowire.Number, s []byte) (err error) { // google.protobuf.Any
				if num == 1 {
					r.bodyType, err = str(num, s)
				} else {
					r.body = s[:len(s):len(s)]
				}
				return err
			}, 1, 2)
		case 3:
			r.name, err = str(num, s)
		}
		return err
	}, 1, 2, 3)
	return r, err
}

// codec is the gRPC codec of the ADS stream: it sends *deltaRequest and receives into
// **deltaResponse. Its name is "proto", so the content type is what a protobuf client sends.
// It is a CodecV2 so that a response is copied out of gRPC's pooled buffers once, into the
// slice its bodies then share.
type codec struct{}

var _ encoding.CodecV2 = codec{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(*deltaRequest)
	if !ok {
		return nil, fmt.Errorf("xds codec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(r.marshal())}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(**deltaResponse)
	if !ok {
		return fmt.Errorf("xds codec: cannot unmarshal into %T", v)
	}
	r, err := decodeDeltaResponse(data.Materialize()) // a new slice: gRPC may reuse data's buffers
	if err != nil {
		return err
	}
	*p = r
	return nil
}
