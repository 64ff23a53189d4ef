package bench

import (
	"strconv"
	"strings"
)

// Figure keys. Latency figures are "<load>/<quantile>" in milliseconds (QuantileKey).
const (
	LoadRate    = "rate"    // open loop at Settings.Rate on persistent connections
	LoadNewConn = "newconn" // open loop at Settings.NewConnRate, a new connection per request
	LoadSLA     = "sla"     // open loop at the highest rate holding p99 under Settings.SLAMillis

	SLARate    = "sla/rate"     // that rate, requests per second
	MaxRPS     = "max/rps"      // closed loop on Settings.MaxConns connections
	StreamGbps = "stream/gbps"  // one connection, server to client, Gbit/s
	ConnRate   = "connrate/cps" // new connections per second (connect, 1 byte each way, close)

	CPUPrefix  = "cpu/"  // + side: proxy cores per 1000 rps during the fixed-rate run
	RSSPrefix  = "rss/"  // + side: proxy RSS (MB) at the end of the fixed-rate run
	PeakPrefix = "peak/" // + side: proxy peak RSS (MB) so far
	IdlePrefix = "idle/" // + side: proxy memory per idle connection (KiB)
	// Where a Go proxy's memory per idle connection goes, from its runtime's statistics (KiB).
	IdleStackPrefix = "idle-stack/" // + side: goroutine stacks
	IdleHeapPrefix  = "idle-heap/"  // + side: heap in use

	IdleHeld     = "idleconns/held"      // idle connections the memory figure was measured at
	IdleFailedAt = "idleconns/failed-at" // where opening Settings.IdleConns broke, when it did
)

// QuantileKey names a latency quantile in figure keys: p50, p99.9, max.
func QuantileKey(q float64) string {
	if q == 100 {
		return "max"
	}
	return "p" + strconv.FormatFloat(q, 'f', -1, 64)
}

// Latency is the figure key of a latency quantile under a load.
func Latency(load string, q float64) string { return load + "/" + QuantileKey(q) }

// figureDef describes how the report shows a figure.
type figureDef struct {
	key, label, unit string
	higherIsBetter   bool
	digits           int
}

func latencyDefs(load, what string) []figureDef {
	var out []figureDef
	for _, q := range []float64{50, 90, 99, 99.9} {
		out = append(out, figureDef{key: Latency(load, q), label: strings.TrimSpace(what + " " + QuantileKey(q)), unit: "ms", digits: 3})
	}
	return out
}

// throughputDefs are the figures where more is better.
var throughputDefs = []figureDef{
	{key: SLARate, label: "highest rate with p99 under the bound", unit: "rps", higherIsBetter: true},
	{key: MaxRPS, label: "maximum request rate", unit: "rps", higherIsBetter: true},
	{key: StreamGbps, label: "single-stream throughput", unit: "Gbit/s", higherIsBetter: true, digits: 2},
	{key: ConnRate, label: "new connections per second", unit: "conn/s", higherIsBetter: true},
}

func proxyDefs() []figureDef {
	var out []figureDef
	for _, side := range []string{ClientSide, ServerSide} {
		out = append(out,
			figureDef{key: CPUPrefix + side, label: side + "-side proxy CPU per 1000 rps", unit: "cores", digits: 4},
			figureDef{key: RSSPrefix + side, label: side + "-side proxy RSS at the fixed rate", unit: "MB", digits: 1},
			figureDef{key: PeakPrefix + side, label: side + "-side proxy peak RSS", unit: "MB", digits: 1},
			figureDef{key: IdlePrefix + side, label: side + "-side proxy memory per idle connection", unit: "KiB", digits: 2},
			figureDef{key: IdleStackPrefix + side, label: "… of which goroutine stacks (Go runtime)", unit: "KiB", digits: 2},
			figureDef{key: IdleHeapPrefix + side, label: "… of which Go heap in use", unit: "KiB", digits: 2},
		)
	}
	return append(out,
		figureDef{key: IdleHeld, label: "idle connections measured at", unit: "connections"},
		figureDef{key: IdleFailedAt, label: "idle connections: where opening all of them broke", unit: "connection"},
	)
}

// isLatency reports whether a figure is a latency (lower is better, in ms).
func isLatency(key string) bool {
	for _, l := range []string{LoadRate, LoadNewConn, LoadSLA} {
		if strings.HasPrefix(key, l+"/p") || key == l+"/max" {
			return true
		}
	}
	return false
}
