package proxy

// Tracing: one server span per request, in the trace the client started (W3C trace context,
// DESIGN.md §7).
//
// Rules kept here:
//   - Without a tracer the waypoint passes traceparent, tracestate and baggage through untouched
//     and costs nothing.
//   - With one, the span's parent is the request's traceparent; the request goes on with a
//     traceparent naming the waypoint's span, so the backend's span is its child. Whether a trace
//     is sampled is the tracer's decision (parent-based: a sampled client trace is always kept).
//   - The span is named like Istio's waypoint spans (<service host>:<port>/*, or <address>/* for
//     traffic addressed to a workload) and carries the
//     request's method, path, authority, status, response flags and the Istio identities.
//   - A 5xx answer marks the span an error, with the response flags and the cause.

import (
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

var traceContext = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// startSpan starts r's span and puts its trace context on r (for the backend); the returned
// function ends it. Without a tracer both do nothing.
func (p *Proxy) startSpan(r *http.Request, t *tunnel) (*http.Request, func(rec *record, status int)) {
	if p.d.Tracer == nil {
		return r, func(*record, int) {}
	}
	ctx := traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	name := t.addr.String() + "/*" // a workload's address
	if t.svc != nil {
		name = t.svc.Hostname + ":" + strconv.Itoa(int(t.port)) + "/*"
	}
	ctx, span := p.d.Tracer.Start(ctx, name,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(p.d.Now()))
	r = r.WithContext(ctx)
	traceContext.Inject(ctx, propagation.HeaderCarrier(r.Header))
	return r, func(rec *record, status int) {
		if span.IsRecording() {
			attrs := []attribute.KeyValue{
				attribute.String("http.request.method", r.Method),
				attribute.String("url.path", rec.path),
				attribute.String("server.address", r.Host),
				attribute.Int("server.port", int(t.port)),
				attribute.Int("http.response.status_code", status),
				attribute.String("network.protocol.name", rec.proto),
				attribute.String("istio.source_principal", rec.srcPrincipal),
				attribute.String("istio.source_workload", rec.srcWorkload),
				attribute.String("istio.source_namespace", rec.srcNS),
				attribute.String("istio.destination_service", rec.dstService),
				attribute.String("istio.destination_workload", rec.dstWorkload),
				attribute.String("istio.destination_namespace", rec.dstNS),
				attribute.String("response_flags", orDash(rec.flags)),
			}
			if rec.route != "" {
				attrs = append(attrs, attribute.String("http.route", rec.route))
			}
			if rec.retries > 0 {
				attrs = append(attrs, attribute.Int("retries", rec.retries))
			}
			if ua := r.UserAgent(); ua != "" {
				attrs = append(attrs, attribute.String("user_agent.original", ua))
			}
			span.SetAttributes(attrs...)
			if status >= 500 {
				msg := rec.flags
				if rec.err != nil {
					msg += ": " + rec.err.Error()
				}
				span.SetStatus(codes.Error, msg)
			}
		}
		span.End(trace.WithTimestamp(p.d.Now()))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
