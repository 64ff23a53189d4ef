package testutil

// OTLPSink is an OpenTelemetry collector for tests: it takes spans over OTLP/gRPC, as a real
// collector does, and keeps them for the test to look at.

import (
	"context"
	"encoding/hex"
	"net"
	"strconv"
	"sync"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Span is a received span, with its resource's service.name.
type Span struct {
	Service              string
	Name                 string
	TraceID, SpanID      string // hex
	ParentSpanID         string // hex; empty for a root span
	Attributes           map[string]string
	StatusCode           tracev1.Status_StatusCode
	StartNanos, EndNanos uint64
	Kind                 tracev1.Span_SpanKind
	InstrumentationScope string
	ResourceAttributes   map[string]string
}

// OTLPSink serves the OTLP trace service on a listener.
type OTLPSink struct {
	collectortrace.UnimplementedTraceServiceServer
	srv   *grpc.Server
	mu    sync.Mutex
	spans []Span
}

// ServeOTLP serves the OTLP trace service on ln until Stop.
func ServeOTLP(ln net.Listener) *OTLPSink {
	s := &OTLPSink{srv: grpc.NewServer()}
	collectortrace.RegisterTraceServiceServer(s.srv, s)
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

// Stop stops serving.
func (s *OTLPSink) Stop() { s.srv.Stop() }

// Export implements the OTLP trace service.
func (s *OTLPSink) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		res := attrs(rs.GetResource().GetAttributes())
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				s.spans = append(s.spans, Span{Service: res["service.name"], Name: sp.Name,
					TraceID: hex.EncodeToString(sp.TraceId), SpanID: hex.EncodeToString(sp.SpanId),
					ParentSpanID: hex.EncodeToString(sp.ParentSpanId), Attributes: attrs(sp.Attributes),
					StatusCode: sp.GetStatus().GetCode(), StartNanos: sp.StartTimeUnixNano, EndNanos: sp.EndTimeUnixNano,
					Kind: sp.Kind, InstrumentationScope: ss.GetScope().GetName(), ResourceAttributes: res})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans returns the spans received so far.
func (s *OTLPSink) Spans() []Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Span(nil), s.spans...)
}

// Trace returns the received spans of one trace (hex id).
func (s *OTLPSink) Trace(traceID string) []Span {
	var out []Span
	for _, sp := range s.Spans() {
		if sp.TraceID == traceID {
			out = append(out, sp)
		}
	}
	return out
}

// attrs flattens OTLP attributes to strings (numbers and booleans in Go's notation).
func attrs(kvs []*commonv1.KeyValue) map[string]string {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonv1.AnyValue_StringValue:
			out[kv.Key] = v.StringValue
		case *commonv1.AnyValue_IntValue:
			out[kv.Key] = strconv.FormatInt(v.IntValue, 10)
		case *commonv1.AnyValue_BoolValue:
			out[kv.Key] = strconv.FormatBool(v.BoolValue)
		case *commonv1.AnyValue_DoubleValue:
			out[kv.Key] = strconv.FormatFloat(v.DoubleValue, 'g', -1, 64)
		default:
			out[kv.Key] = kv.GetValue().String()
		}
	}
	return out
}
