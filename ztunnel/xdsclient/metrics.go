package xdsclient

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	connectedDesc = prometheus.NewDesc("ztunnel_xds_connected",
		"1 while the delta xDS stream to istiod-lite is up (has received a response).", nil, nil)
	streamsDesc = prometheus.NewDesc("ztunnel_xds_streams_total",
		"Delta xDS streams that received a response: the first connection and every reconnection.", nil, nil)
	lastACKDesc = prometheus.NewDesc("ztunnel_xds_last_ack_timestamp_seconds",
		"When a response was last ACKed, by resource type (0: never).", []string{"type"}, nil)
	nacksDesc = prometheus.NewDesc("ztunnel_xds_nacks_total",
		"Responses NACKed (a resource refused), by resource type.", []string{"type"}, nil)
	resourcesDesc = prometheus.NewDesc("ztunnel_xds_resources",
		"Resources held, by resource type.", []string{"type"}, nil)
)

// Collector exports a Client's Stats as Prometheus metrics, read at each scrape. The caller
// registers it.
type Collector struct{ c *Client }

// NewCollector returns a collector of c's Stats.
func NewCollector(c *Client) *Collector { return &Collector{c} }

// Describe implements prometheus.Collector.
func (*Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connectedDesc, streamsDesc, lastACKDesc, nacksDesc, resourcesDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Collector) Collect(ch chan<- prometheus.Metric) {
	s := m.c.Stats()
	connected := 0.0
	if s.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(streamsDesc, prometheus.CounterValue, float64(s.Streams))
	for typ, ts := range s.Types {
		short := typ[strings.LastIndexByte(typ, '.')+1:]
		last := 0.0
		if !ts.LastACK.IsZero() {
			last = float64(ts.LastACK.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(lastACKDesc, prometheus.GaugeValue, last, short)
		ch <- prometheus.MustNewConstMetric(nacksDesc, prometheus.CounterValue, float64(ts.NACKs), short)
		ch <- prometheus.MustNewConstMetric(resourcesDesc, prometheus.GaugeValue, float64(ts.Resources), short)
	}
}
