package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Summary
	}{
		{nil, Summary{}},
		{[]float64{3, 1, 2}, Summary{Median: 2, Min: 1, Max: 3, N: 3}},
		{[]float64{4, 1, 2, 3}, Summary{Median: 2.5, Min: 1, Max: 4, N: 4}},
	} {
		if got := Summarize(tc.in); got != tc.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	if s := Summarize([]float64{1, 1.1, 1.2}); !s.Trusted() {
		t.Errorf("spread %.2f not trusted", s.Spread())
	}
	if s := Summarize([]float64{1, 2, 3}); s.Trusted() || s.Spread() != 1 {
		t.Errorf("spread %.2f trusted", s.Spread())
	}
}

// sampleRun is a run whose figures are known: the mesh adds 0.05 ms at p99, its ztunnels use
// 0.02 and 0.04 cores, and the mesh's stream is 95% of Go TLS and 3× stunnel's.
func sampleRun() *Run {
	r := &Run{Date: time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC), Commit: "abc123", Rounds: 3,
		Settings: Settings{Rate: 1000, Conns: 10, Size: 1024, NewConnRate: 200, SLAMillis: 10, IdleConns: 100, IdleRounds: 3},
		Scenarios: []Scenario{{ID: Direct, Name: "direct"}, {ID: Mesh, Name: "mesh", Proxy: "ztunnel"},
			{ID: Stunnel, Name: "stunnel4", Proxy: "stunnel4"}, {ID: HAProxy, Name: "haproxy", Proxy: "haproxy"}, {ID: GoTLS, Name: "go tls"}}}
	for round := range 3 {
		jitter := float64(round) * 0.001
		for _, pl := range []string{CrossNode, SameNode} {
			for i, q := range []float64{50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99} {
				base := 0.1 + 0.02*float64(i) + jitter
				r.Add(Direct, pl, Latency(LoadRate, q), round, base)
				r.Add(Mesh, pl, Latency(LoadRate, q), round, base+0.05)
				r.Add(Stunnel, pl, Latency(LoadRate, q), round, base+0.4)
			}
			r.Add(Direct, pl, StreamGbps, round, 20)
			r.Add(Mesh, pl, StreamGbps, round, 9.5)
			r.Add(GoTLS, pl, StreamGbps, round, 10)
			r.Add(Stunnel, pl, StreamGbps, round, 3.1+float64(round)*2) // rounds disagree
			r.Add(Direct, pl, ConnRate, round, 10000)
			r.Add(Mesh, pl, ConnRate, round, 4000)
		}
		r.Add(Mesh, CrossNode, CPUPrefix+ClientSide, round, 0.02)
		r.Add(Mesh, CrossNode, CPUPrefix+ServerSide, round, 0.04)
		r.Add(Mesh, CrossNode, RSSPrefix+ClientSide, round, 12)
		r.Add(Mesh, CrossNode, RSSPrefix+ServerSide, round, 13)
	}
	return r
}

func TestTargets(t *testing.T) {
	got := map[string]Target{}
	for _, tg := range Targets(sampleRun()) {
		got[strings.Fields(tg.What)[0]+" "+strings.Fields(tg.What)[1]] = tg
	}
	for key, want := range map[string]struct{ met, known bool }{
		"added p99":       {true, true},
		"ztunnel CPU":     {false, true}, // 0.04 on the server side
		"ztunnel RSS":     {true, true},
		"ztunnel memory":  {false, false}, // no idle figures
		"new connections": {false, true},  // 40%
	} {
		tg, ok := got[key]
		if !ok || tg.Met != want.met || tg.Known != want.known {
			t.Errorf("target %q = %+v, want met %v known %v", key, tg, want.met, want.known)
		}
	}
	var streams []Target
	for _, tg := range Targets(sampleRun()) {
		if strings.HasPrefix(tg.What, "single-stream") {
			streams = append(streams, tg)
		}
	}
	if len(streams) != 2 || !streams[0].Met || streams[1].Met { // 95% of e; 9.5/5.1 < 2.5
		t.Errorf("stream targets %+v", streams)
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	r := sampleRun()
	path := filepath.Join(dir, "l4.json")
	if err := r.Save(path); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(path)
	if err != nil || len(loaded.Samples) != len(r.Samples) {
		t.Fatalf("Load: %v, %d samples", err, len(loaded.Samples))
	}
	plots, err := WritePlots(loaded, filepath.Join(dir), dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(plots) != 4 { // rate latency on both placements, CPU and RSS; no new-conn or idle figures
		t.Errorf("plots %+v", plots)
	}
	for _, p := range plots {
		if st, err := os.Stat(filepath.Join(dir, p.Path)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", p.Path, err)
		}
	}
	bench := filepath.Join(dir, "lab.bench")
	os.WriteFile(bench, []byte("# make bench, 2026-12-05, commit abc123\ngoos: linux\n"+
		"BenchmarkAgentOnboarding-2   \t       5\t         0 ns/op\t         0.4510 s/median-pod\t         0.8700 s/onboard\n"+
		"BenchmarkL4-2 1 5 ns/op 0.1 added-ms\nBenchmarkBroken x y\n"), 0o644)
	bf, err := ReadBenchFile(bench, "L4", "BenchmarkL4")
	if err != nil {
		t.Fatal(err)
	}
	if bf.Provenance != "make bench, 2026-12-05, commit abc123" || len(bf.Results) != 1 || bf.Results[0].Name != "AgentOnboarding" ||
		len(bf.Results[0].Metrics) != 2 || bf.Results[0].Metrics[1] != (Metric{0.87, "s/onboard"}) {
		t.Errorf("ReadBenchFile = %+v", bf)
	}
	var md strings.Builder
	if err := (Report{L4: loaded, Lab: []BenchFile{bf}, Plots: plots}).WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	out := md.String()
	for _, want := range []string{
		"commit `abc123`",
		"| added p99 at 1000 rps through two ztunnels (b − a) ≤ 0.1 ms | 0.050 ms",
		"| p99 (ms) | 0.181 (0.180–0.182) | 0.231 (0.230–0.232)<br>+0.050 vs a |",
		"| single-stream throughput (Gbit/s) | 20.00 (20.00–20.00)<br>2.00× e | 9.50 (9.50–9.50)<br>0.47× a · 0.95× e |",
		"(c) stunnel4, `stream/gbps`: 3.10–7.10 Gbit/s, 78% of the median 5.10",
		"| AgentOnboarding | 0.451 s/median-pod, 0.87 s/onboard |",
		"![Latency distribution, 1000 rps, persistent connections, cross-node](latency-rate-cross-node.png)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}
