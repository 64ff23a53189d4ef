package proxy

import (
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

const clientTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func tracedHarness(t *testing.T, sampler sdktrace.Sampler, routes *routev1.ServiceRoutes, status int) (*harness, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sampler))
	h := newHarness(t, routes, backend(t, "echo-1", "127.0.0.21", status))
	h.p.d.Tracer = tp.Tracer("test")
	return h, rec
}

func TestTraceSpanIsChildOfClientAndParentOfBackend(t *testing.T) {
	h, rec := tracedHarness(t, sdktrace.ParentBased(sdktrace.NeverSample()), nil, 200)
	code, r, _ := h.get(t, "/orders?id=1", "Traceparent", clientTraceparent, "Baggage", "user=alice")
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans ended, want 1 (a sampled client trace is always kept)", len(spans))
	}
	s := spans[0]
	if got := s.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace id %s, want the client's", got)
	}
	if got := s.Parent().SpanID().String(); got != "00f067aa0ba902b7" {
		t.Errorf("parent span %s, want the client's", got)
	}
	if s.SpanKind() != trace.SpanKindServer || s.Name() != "echo.shop.svc.cluster.local:80/*" {
		t.Errorf("span %q kind %v", s.Name(), s.SpanKind())
	}
	want := map[attribute.Key]string{"http.request.method": "GET", "url.path": "/orders", "istio.source_principal": "cluster.local/ns/shop/sa/client",
		"istio.destination_workload": "echo-1", "response_flags": "-"}
	got := map[attribute.Key]string{}
	for _, a := range s.Attributes() {
		got[a.Key] = fmt.Sprint(a.Value.AsInterface())
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, got[k], v)
		}
	}
	if got["http.response.status_code"] != "200" {
		t.Errorf("status attribute %q", got["http.response.status_code"])
	}
	// The backend's parent is the waypoint's span, in the same trace; baggage goes on.
	tp := strings.Split(first(r.Headers["Traceparent"]), "-")
	if len(tp) != 4 || tp[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || tp[2] != s.SpanContext().SpanID().String() || tp[3] != "01" {
		t.Errorf("backend got traceparent %v, want the waypoint's span %s as parent", r.Headers["Traceparent"], s.SpanContext().SpanID())
	}
	if first(r.Headers["Baggage"]) != "user=alice" {
		t.Errorf("backend got baggage %v", r.Headers["Baggage"])
	}
}

func TestTraceUnsampledRequestIsNotRecordedButPropagated(t *testing.T) {
	h, rec := tracedHarness(t, sdktrace.ParentBased(sdktrace.NeverSample()), nil, 200)
	_, r, _ := h.get(t, "/", "Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("%d spans recorded for a trace the client did not sample", n)
	}
	tp := strings.Split(first(r.Headers["Traceparent"]), "-")
	if len(tp) != 4 || tp[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || tp[3] != "00" {
		t.Errorf("backend got traceparent %v, want the client's trace, not sampled", r.Headers["Traceparent"])
	}
}

func TestTraceServerErrorMarksSpan(t *testing.T) {
	h, rec := tracedHarness(t, sdktrace.AlwaysSample(), nil, 503)
	if code, _, _ := h.get(t, "/"); code != 503 {
		t.Fatalf("status %d", code)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1 (sampled at 100%%, no client trace)", len(spans))
	}
	if spans[0].Status().Code != codes.Error || spans[0].Parent().IsValid() {
		t.Errorf("span status %v, parent %v: want an error in a root span", spans[0].Status(), spans[0].Parent())
	}
}

func TestTraceWithoutTracerPassesContextThrough(t *testing.T) {
	h := newHarness(t, nil, backend(t, "echo-1", "127.0.0.21", 200))
	_, r, _ := h.get(t, "/", "Traceparent", clientTraceparent)
	if got := first(r.Headers["Traceparent"]); got != clientTraceparent {
		t.Errorf("backend got traceparent %q, want the client's unchanged", got)
	}
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}
