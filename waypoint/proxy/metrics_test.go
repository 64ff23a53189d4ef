package proxy

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRequestMetrics: a request is counted with Istio's labels, in Istio's names.
func TestRequestMetrics(t *testing.T) {
	h := newHarness(t, nil, backend(t, "echo-1", "127.0.0.41", 200))
	reg := prometheus.NewRegistry()
	h.p.d.Metrics = NewMetrics(reg)
	if code, _, _ := h.get(t, "/"); code != 200 {
		t.Fatalf("status %d", code)
	}
	want := `
# HELP istio_requests_total Requests handled.
# TYPE istio_requests_total counter
istio_requests_total{connection_security_policy="mutual_tls",destination_principal="cluster.local/ns/shop/sa/echo-1",destination_service="echo.shop.svc.cluster.local",destination_service_name="echo",destination_service_namespace="shop",destination_workload="echo-1",destination_workload_namespace="shop",reporter="waypoint",request_protocol="http/1.1",response_code="200",response_flags="-",source_principal="cluster.local/ns/shop/sa/client",source_workload="unknown",source_workload_namespace="shop"} 1
`
	if err := promtest.GatherAndCompare(reg, strings.NewReader(want), "istio_requests_total"); err != nil {
		t.Error(err)
	}
	if n := promtest.CollectAndCount(h.p.d.Metrics.duration); n != 1 {
		t.Errorf("%d duration series, want 1", n)
	}
}
