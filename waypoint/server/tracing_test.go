package server

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ambient-mesh/ambient/internal/testutil"
)

func TestTracingExportsToCollector(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sink := testutil.ServeOTLP(ln)
	defer sink.Stop()
	cfg := Default()
	cfg.Gateway, cfg.Pod, cfg.TracingEndpoint, cfg.TracingSampling = "shop/wp", "wp-1", ln.Addr().String(), 100
	tracer, stop, err := tracing(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_, span := tracer.Start(context.Background(), "echo.shop.svc.cluster.local:80/*", trace.WithSpanKind(trace.SpanKindServer))
	span.End()
	stop() // flushes the batch
	spans := sink.Spans()
	if len(spans) != 1 {
		t.Fatalf("collector got %d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Service != "wp.shop" || s.ResourceAttributes["service.instance.id"] != "wp-1" || s.Name != "echo.shop.svc.cluster.local:80/*" {
		t.Errorf("span %+v", s)
	}
}

func TestTracingOffWithoutEndpoint(t *testing.T) {
	tracer, stop, err := tracing(context.Background(), Default(), slog.New(slog.DiscardHandler))
	if err != nil || tracer != nil {
		t.Fatalf("tracer %v, err %v: want none", tracer, err)
	}
	stop()
}

func TestTracingCollectorDownDoesNotBlock(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there
	cfg := Default()
	cfg.Gateway, cfg.TracingEndpoint, cfg.TracingSampling = "shop/wp", addr, 100
	cfg.Drain = 200 * time.Millisecond // how long stop waits for the collector
	var logs testutil.LogBuffer
	tracer, stop, err := tracing(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		_, span := tracer.Start(context.Background(), "x")
		span.End() // queued; never waits for the collector
	}
	stop()
	if !strings.Contains(logs.String(), "trace export") {
		t.Errorf("no log of the failed export: %s", logs.String())
	}
}

func TestConfigValidateTracing(t *testing.T) {
	for _, tc := range []struct {
		endpoint string
		sampling float64
		ok       bool
	}{
		{"", 1, true}, {"otel.observability:4317", 100, true}, {"otel.observability", 1, false}, {"otel:4317", 101, false}, {"", -1, false},
	} {
		cfg := Default()
		cfg.Gateway, cfg.TracingEndpoint, cfg.TracingSampling = "shop/wp", tc.endpoint, tc.sampling
		if err := cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("endpoint %q sampling %v: err %v, want ok=%v", tc.endpoint, tc.sampling, err, tc.ok)
		}
	}
}
