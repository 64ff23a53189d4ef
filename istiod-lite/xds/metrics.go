package xds

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the xDS server's Prometheus metrics.
type Metrics struct {
	connected     prometheus.Gauge
	pushes        *prometheus.CounterVec
	resourcesSent *prometheus.CounterVec
	pushLatency   prometheus.Histogram
	nacks         *prometheus.CounterVec
	bulkInUse     prometheus.Gauge
	bulkWaiting   prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "istiod_lite_xds_connected_clients", Help: "Connected delta xDS streams.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istiod_lite_xds_pushes_total", Help: "Delta xDS responses sent, by resource type.",
		}, []string{"type"}),
		resourcesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istiod_lite_xds_resources_sent_total", Help: "Resources and removals sent, by resource type.",
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "istiod_lite_xds_push_latency_seconds",
			Help:    "Time from a snapshot being published to a response carrying it being sent.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istiod_lite_xds_nacks_total", Help: "Responses rejected by clients, by resource type.",
		}, []string{"type"}),
		bulkInUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "istiod_lite_xds_bulk_slots_in_use", Help: "Bulk response slots held (large responses in flight, awaiting their answer).",
		}),
		bulkWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "istiod_lite_xds_bulk_waiting_streams", Help: "Streams waiting for a bulk response slot.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.resourcesSent, m.pushLatency, m.nacks, m.bulkInUse, m.bulkWaiting)
	}
	return m
}
