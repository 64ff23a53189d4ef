package server

// Trace export: the waypoint's request spans go to an OpenTelemetry collector over OTLP/gRPC
// when an endpoint is configured, and nowhere (no SDK, no cost) when not.
//
// Rules kept here:
//   - Sampling is parent-based: a request whose client sampled its trace is always recorded, one
//     that arrives without a trace is sampled at the configured percentage (Istio's default 1%).
//   - Spans are batched and exported in the background; a collector that is down or slow never
//     holds a request up. Export failures are logged, at most once a minute.
//   - At shutdown, spans still queued get a bounded time to leave: the drain time, at most 5 s.

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// tracing returns the tracer for the waypoint's spans and the function that flushes and stops
// it; a nil tracer when cfg names no collector.
func tracing(ctx context.Context, cfg Config, log *slog.Logger) (trace.Tracer, func(), error) {
	if cfg.TracingEndpoint == "" {
		return nil, func() {}, nil
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(cfg.TracingEndpoint), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithTimeout(10*time.Second))
	if err != nil {
		return nil, nil, err
	}
	ns, name, _ := strings.Cut(cfg.Gateway, "/")
	res := resource.NewWithAttributes("",
		attribute.String("service.name", name+"."+ns),
		attribute.String("service.namespace", ns),
		attribute.String("service.instance.id", cfg.Pod),
		attribute.String("istio.component", "waypoint"))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.TracingSampling/100))))
	otel.SetErrorHandler(rateLimitedErrors(log, time.Minute))
	log.Info("exporting traces", "endpoint", cfg.TracingEndpoint, "sampling_percent", cfg.TracingSampling)
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), min(cfg.Drain, 5*time.Second))
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			log.Warn("trace export at shutdown", "err", err)
		}
	}
	return tp.Tracer("github.com/ambient-mesh/ambient/waypoint"), stop, nil
}

// rateLimitedErrors logs the SDK's errors (a collector that cannot be reached) at most once
// per every, with how many were not logged.
func rateLimitedErrors(log *slog.Logger, every time.Duration) otel.ErrorHandlerFunc {
	var mu sync.Mutex
	var last time.Time
	dropped := 0
	return func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); now.Sub(last) >= every {
			log.Warn("trace export failed", "err", err, "suppressed", dropped)
			last, dropped = now, 0
			return
		}
		dropped++
	}
}
