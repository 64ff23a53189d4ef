// Package bench holds the results of `make bench` and turns them into BENCHMARKS.md and plots.
// Rules it keeps:
//   - A run stores raw samples, one per scenario, placement, figure and round; every figure shown
//     is computed from them (median over rounds, with min–max spread), never typed in.
//   - Ratios are to scenario (a), direct traffic, and (e), a plain Go TLS 1.3 stream, measured in
//     the same run on the same pods: they hold where absolute numbers on a shared machine drift.
//   - A figure whose rounds disagree by more than SpreadLimit of its median is flagged, with by
//     how much, rather than hidden or trusted.
package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"
)

// SpreadLimit is the widest (max−min)/median a figure may have before the report says not to
// trust it.
const SpreadLimit = 0.30

// Placements of the server relative to the client.
const (
	CrossNode = "cross-node"
	SameNode  = "same-node"
)

// Sides of a tunnel: the proxy next to the client and the one next to the server.
const (
	ClientSide = "client"
	ServerSide = "server"
)

// Scenario IDs, in the order the rounds interleave them.
const (
	Direct  = "a"
	Mesh    = "b"
	Stunnel = "c"
	HAProxy = "d"
	GoTLS   = "e"
)

// Run is one run of the L4 benchmark.
type Run struct {
	Date      time.Time  `json:"date"`
	Commit    string     `json:"commit"`
	Machine   Machine    `json:"machine"`
	Settings  Settings   `json:"settings"`
	Rounds    int        `json:"rounds"`
	Scenarios []Scenario `json:"scenarios"`
	Samples   []Sample   `json:"samples"`
	// Elapsed is how long the measurements took, setup excluded.
	ElapsedSeconds float64 `json:"elapsedSeconds"`
}

// Machine is where the run happened.
type Machine struct {
	CPU       string  `json:"cpu"`
	Cores     int     `json:"cores"`
	MemoryGiB float64 `json:"memoryGiB"`
	Kernel    string  `json:"kernel"`
	Go        string  `json:"go"`
	Proxies   string  `json:"proxies"` // versions of stunnel4 and HAProxy
}

// Settings are the loads every scenario was given.
type Settings struct {
	Rate           int     `json:"rate"`           // offered rps of the fixed-rate latency figure
	Conns          int     `json:"conns"`          // persistent connections it is spread over
	Size           int     `json:"size"`           // request and response bytes
	NewConnRate    int     `json:"newConnRate"`    // offered rps with a new connection per request
	LatencySeconds float64 `json:"latencySeconds"` // length of the fixed-rate runs
	ShortSeconds   float64 `json:"shortSeconds"`   // length of the other runs
	SearchSeconds  float64 `json:"searchSeconds"`  // length of each try of the sustainable-rate search
	MaxConns       int     `json:"maxConns"`       // connections of the maximum-rate run
	ConnWorkers    int     `json:"connWorkers"`    // concurrent workers of the connection-rate run
	SLAMillis      float64 `json:"slaMillis"`      // the p99 bound the highest sustainable rate holds
	IdleConns      int     `json:"idleConns"`      // idle connections held open for the memory figure
	// IdleConnsSidecar is the count for proxies that hold two descriptors per connection, when
	// the machine's hard limit on open files does not allow IdleConns.
	IdleConnsSidecar int    `json:"idleConnsSidecar"`
	IdleRounds       int    `json:"idleRounds"`      // rounds of the idle figure
	SearchSteps      int    `json:"searchSteps"`     // bisection steps finding the sustainable rate
	ClientNode       string `json:"clientNode"`      // where the client pod runs
	ServerNodeCross  string `json:"serverNodeCross"` // where the cross-node server runs
}

// Scenario is one way of carrying the client's traffic to the server.
type Scenario struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description"`
	// Proxy names the process on each side whose CPU and memory are measured; empty when the
	// endpoints carry the traffic themselves.
	Proxy string `json:"proxy,omitempty"`
}

// Sample is one measurement of one figure in one round.
type Sample struct {
	Scenario  string  `json:"scenario"`
	Placement string  `json:"placement"`
	Figure    string  `json:"figure"`
	Round     int     `json:"round"`
	Value     float64 `json:"value"`
}

// Add records a sample.
func (r *Run) Add(scenario, placement, figure string, round int, v float64) {
	r.Samples = append(r.Samples, Sample{scenario, placement, figure, round, v})
}

// Values returns a figure's samples in round order.
func (r *Run) Values(scenario, placement, figure string) []float64 {
	var out []float64
	for _, s := range r.Samples {
		if s.Scenario == scenario && s.Placement == placement && s.Figure == figure {
			out = append(out, s.Value)
		}
	}
	return out
}

// Summary is a figure over its rounds.
type Summary struct {
	Median, Min, Max float64
	N                int
}

// Spread is (max−min)/median: 0 when the rounds agree.
func (s Summary) Spread() float64 {
	if s.N == 0 || s.Median == 0 {
		return 0
	}
	return (s.Max - s.Min) / s.Median
}

// Trusted reports whether the rounds agree closely enough.
func (s Summary) Trusted() bool { return s.Spread() <= SpreadLimit }

// Summarize returns the median and range of vs (the mean of the two middle values for an even
// count).
func Summarize(vs []float64) Summary {
	if len(vs) == 0 {
		return Summary{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Summary{Median: med, Min: s[0], Max: s[n-1], N: n}
}

// Figure summarises one figure of one scenario and placement.
func (r *Run) Figure(scenario, placement, figure string) Summary {
	return Summarize(r.Values(scenario, placement, figure))
}

// Scenario returns the scenario with id.
func (r *Run) Scenario(id string) (Scenario, bool) {
	for _, s := range r.Scenarios {
		if s.ID == id {
			return s, true
		}
	}
	return Scenario{}, false
}

// Save writes the run as indented JSON.
func (r *Run) Save(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Load reads a run written by Save.
func Load(path string) (*Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
