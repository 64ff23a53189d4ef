package proxy

import "github.com/prometheus/client_golang/prometheus"

// Labels of Istio's standard TCP metrics (DESIGN.md §7), so that existing dashboards work.
var tcpLabels = []string{"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_service", "destination_principal",
	"connection_security_policy", "response_flags"}

// Metrics are ztunnel's connection metrics.
type Metrics struct {
	opened, closed, sent, received *prometheus.CounterVec
	active                         prometheus.Gauge
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		opened:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened."}, tcpLabels),
		closed:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed."}, tcpLabels),
		sent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "Bytes of the response direction (destination to source)."}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "Bytes of the request direction (source to destination)."}, tcpLabels),
		active:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "ztunnel_active_connections", Help: "Connections ztunnel carries now."}),
	}
	reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.active)
	return m
}

// record is one connection's account, for the metrics and the access log.
type record struct {
	reporter                         string // "source" (outbound) or "destination" (inbound)
	srcWorkload, srcNS, srcPrincipal string
	dstWorkload, dstNS, dstService   string
	dstPrincipal, security, flags    string
	sent, received                   int64
}

func (r *record) labels() []string {
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	flags := r.flags
	if flags == "" {
		flags = "-"
	}
	return []string{r.reporter, or(r.srcWorkload), or(r.srcNS), or(r.srcPrincipal), or(r.dstWorkload), or(r.dstNS),
		or(r.dstService), or(r.dstPrincipal), r.security, flags}
}

func (m *Metrics) open(r *record) {
	if m == nil {
		return
	}
	m.active.Inc()
	m.opened.WithLabelValues(r.labels()...).Inc()
}

func (m *Metrics) close(r *record) {
	if m == nil {
		return
	}
	m.active.Dec()
	l := r.labels()
	m.closed.WithLabelValues(l...).Inc()
	m.sent.WithLabelValues(l...).Add(float64(r.sent))
	m.received.WithLabelValues(l...).Add(float64(r.received))
}
