package proxy

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambient-mesh/ambient/internal/accesslog"
)

// BenchmarkProxyHTTP: 1 KiB POSTs through the waypoint's HTTP handling on one kept-alive
// connection to a plain backend (no HBONE either side): the L7 part's own cost per request.
func BenchmarkProxyHTTP(b *testing.B) {
	benchPosts(b, benchHarness(b))
}

// BenchmarkProxyHTTPTelemetry is BenchmarkProxyHTTP with what a deployed waypoint adds per
// request: Istio's request metrics and a JSON access log line.
func BenchmarkProxyHTTPTelemetry(b *testing.B) {
	h := benchHarness(b)
	h.p.d.Metrics = NewMetrics(prometheus.NewRegistry())
	h.p.d.AccessLog = accesslog.New(io.Discard)
	benchPosts(b, h)
}

func benchHarness(b *testing.B) *harness {
	return newHarness(b, nil, backendFunc(b, "a", "127.0.0.11", func(_ http.ResponseWriter, r *http.Request) int {
		_, _ = io.Copy(io.Discard, r.Body)
		return 200
	}))
}

func benchPosts(b *testing.B, h *harness) {
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		resp, err := h.hc.Post("http://echo.shop/", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
