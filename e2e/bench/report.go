package bench

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Target is one of the project's performance targets, evaluated on a run.
type Target struct {
	What     string
	Measured string
	Met      bool
	Known    bool // false when the run lacks the figures it needs
}

// Targets evaluates the L4 targets of the project (issue 14) on the cross-node figures.
func Targets(r *Run) []Target {
	med := func(s, fig string) (float64, bool) {
		f := r.Figure(s, CrossNode, fig)
		return f.Median, f.N > 0
	}
	var out []Target
	add := func(what string, ok bool, measured string, met bool) {
		out = append(out, Target{What: what, Measured: measured, Met: ok && met, Known: ok})
	}
	p99 := Latency(LoadRate, 99)
	b99, ok1 := med(Mesh, p99)
	a99, ok2 := med(Direct, p99)
	add(fmt.Sprintf("added p99 at %d rps through two ztunnels (b − a) ≤ 0.1 ms", r.Settings.Rate), ok1 && ok2,
		fmt.Sprintf("%.3f ms (b %.3f, a %.3f)", b99-a99, b99, a99), b99-a99 <= 0.1)
	worst := func(prefix string) (float64, string, bool) {
		c, okc := med(Mesh, prefix+ClientSide)
		s, oks := med(Mesh, prefix+ServerSide)
		return math.Max(c, s), fmt.Sprintf("client side %s, server side %s", trim(c), trim(s)), okc && oks
	}
	cpu, detail, ok := worst(CPUPrefix)
	add("ztunnel CPU ≤ 0.03 core per 1000 rps per side", ok, fmt.Sprintf("%.4f cores (%s)", cpu, detail), cpu <= 0.03)
	rss, detail, ok := worst(RSSPrefix)
	add(fmt.Sprintf("ztunnel RSS ≤ 15 MB at %d rps", r.Settings.Rate), ok, fmt.Sprintf("%.1f MB (%s)", rss, detail), rss <= 15)
	idle, detail, ok := worst(IdlePrefix)
	add("ztunnel memory ≤ 8 KiB per idle connection", ok, fmt.Sprintf("%.2f KiB (%s)", idle, detail), idle <= 8)
	bs, ok1 := med(Mesh, StreamGbps)
	es, ok2 := med(GoTLS, StreamGbps)
	cs, ok3 := med(Stunnel, StreamGbps)
	add("single-stream throughput of (b) ≥ 90% of (e)", ok1 && ok2, fmt.Sprintf("%.0f%% (b %.2f, e %.2f Gbit/s)", ratio(bs, es)*100, bs, es), bs >= 0.9*es)
	add("single-stream throughput of (b) ≥ 2.5× stunnel4's (c)", ok1 && ok3, fmt.Sprintf("%.2f× (c %.2f Gbit/s)", ratio(bs, cs), cs), bs >= 2.5*cs)
	bc, ok1 := med(Mesh, ConnRate)
	ac, ok2 := med(Direct, ConnRate)
	add("new connections per second through the mesh ≥ 50% of direct", ok1 && ok2, fmt.Sprintf("%.0f%% (b %.0f, a %.0f conn/s)", ratio(bc, ac)*100, bc, ac), bc >= 0.5*ac)
	return out
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

func trim(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }

// Report is everything BENCHMARKS.md shows.
type Report struct {
	L4 *Run
	// Lab holds `go test -bench` outputs of the lab benchmarks (onboarding, control plane at
	// scale), each with where it came from.
	Lab []BenchFile
	// Plots are PNG files relative to the report, with a caption.
	Plots []Plot
	// Profiles summarize where ztunnel's time and memory went in the run.
	Profiles []ProfileSummary
	// Waypoint summarizes where the waypoint's time went in BenchmarkWaypoint (nil: no profile).
	Waypoint *ProfileSummary
}

// Plot is an image the report links.
type Plot struct{ Path, Caption string }

// BenchFile is one `go test -bench` output: its provenance line and the benchmark lines.
type BenchFile struct {
	Name       string
	Provenance string
	Results    []GoBench
}

// GoBench is one benchmark result line.
type GoBench struct {
	Name    string
	Metrics []Metric
}

// Metric is a value with its unit, as `b.ReportMetric` gave it.
type Metric struct {
	Value float64
	Unit  string
}

// ReadBenchFile parses `go test -bench` output. A first line starting with "#" is the
// provenance (what ran it, when, at which commit); lines of benchmarks named in skip are left out.
func ReadBenchFile(path string, skip ...string) (BenchFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return BenchFile{}, err
	}
	defer f.Close()
	bf := BenchFile{Name: strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	first := true
	for sc.Scan() {
		line := sc.Text()
		if first && strings.HasPrefix(line, "#") {
			bf.Provenance = strings.TrimSpace(strings.TrimPrefix(line, "#"))
		}
		first = false
		fields := strings.Fields(line)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") || len(fields)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue
		}
		name := fields[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // GOMAXPROCS suffix
		}
		if skipped(name, skip) {
			continue
		}
		g := GoBench{Name: strings.TrimPrefix(name, "Benchmark")}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil || fields[i+1] == "ns/op" {
				continue
			}
			g.Metrics = append(g.Metrics, Metric{v, fields[i+1]})
		}
		bf.Results = append(bf.Results, g)
	}
	return bf, sc.Err()
}

func skipped(name string, skip []string) bool {
	for _, s := range skip {
		if name == s || strings.HasPrefix(name, s+"/") {
			return true
		}
	}
	return false
}

// WriteMarkdown renders the report.
func (rep Report) WriteMarkdown(w io.Writer) error {
	r := rep.L4
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Benchmarks\n\n")
	p("Written by `make bench` from one run (`e2e/bench/results/l4.json`); do not edit by hand.\n\n")
	p("- **Run**: %s, commit `%s`, %d interleaved rounds (a, b, c, d, e, a, b, …), %s of measurement\n",
		r.Date.UTC().Format("2006-01-02 15:04 UTC"), r.Commit, r.Rounds, fmtDuration(r.ElapsedSeconds))
	m := r.Machine
	p("- **Machine**: %s, %d cores, %.0f GiB, Linux %s, %s; %s\n", m.CPU, m.Cores, m.MemoryGiB, m.Kernel, m.Go, m.Proxies)
	s := r.Settings
	p("- **Pods**: one client pod on %s; a server pod on %s (cross-node) and one on %s (same-node). Every scenario uses these same pods; the lab's nodes are network namespaces on one machine, so \"cross-node\" crosses veths and a bridge, not a wire.\n\n",
		s.ClientNode, s.ServerNodeCross, s.ClientNode)
	p("## Scenarios\n\n| | scenario | how the traffic goes | proxy measured |\n|---|---|---|---|\n")
	for _, sc := range r.Scenarios {
		proxy := sc.Proxy
		if proxy == "" {
			proxy = "—"
		}
		p("| (%s) | %s | %s | %s |\n", sc.ID, sc.Name, sc.Description, proxy)
	}
	p("\n## How each figure is measured\n\n")
	p("- **Latency at %d rps**: 1 KiB request, 1 KiB echoed, open loop over %d persistent connections for %s; a request is timed from when it was due when the generator was behind (no coordinated omission), from when it was sent otherwise; HDR histogram.\n", s.Rate, s.Conns, fmtDuration(s.LatencySeconds))
	p("- **Latency with a new connection per request**: the same at %d rps for %s, each request on its own connection (connect, TLS handshake where the scenario has one, exchange, close).\n", s.NewConnRate, fmtDuration(s.LatencySeconds))
	p("- **Highest rate holding p99 under %.0f ms**: found once per scenario and placement before the rounds: from the maximum rate, halved until a rate holds, then %d bisection steps towards the next one up (%s each, %d connections); each round then measures latency at that rate. A scenario with no such rate down to 1/256 of its maximum has none.\n", s.SLAMillis, s.SearchSteps, fmtDuration(s.SearchSeconds), s.MaxConns)
	p("- **Maximum request rate**: closed loop on %d connections. **Single-stream throughput**: one connection, the server writing as fast as it can. **New connections per second**: %d workers each connecting, exchanging one byte each way and closing. Each for %s.\n", s.MaxConns, s.ConnWorkers, fmtDuration(s.ShortSeconds))
	idle := strconv.Itoa(s.IdleConns)
	if s.IdleConnsSidecar > 0 && s.IdleConnsSidecar < s.IdleConns {
		idle += fmt.Sprintf(" (%d through stunnel4 and HAProxy, which hold two descriptors per connection, stunnel4 serving at most 125/256 of its descriptor limit: the machine's hard limit on open files allows no more)", s.IdleConnsSidecar)
	}
	p("- **Proxy CPU** is from the proxy's own cgroup's `cpu.stat` (`usage_usec`) over the %d-rps run, in cores per 1000 rps; **RSS** is `VmRSS` at its end, **peak** is `VmHWM`; **memory per idle connection** is the RSS growth with %s idle connections open through the proxy (cross-node), median of %d interleaved rounds (b, c, d) after the others; ztunnel is asked to collect and return unused memory to the kernel (`POST /debug/free_memory` on its admin port) before both readings, so its figure is what the connections hold, and its Go runtime's goroutine stacks and heap in use are shown beside it; stunnel4 and HAProxy (C, glibc malloc) have no such control, so memory they kept from the rounds before can hide part of theirs. ztunnel's memory limit is lifted from deploy/'s 128Mi to 1Gi for the run, so that the figure is measured rather than cut off.\n\n", s.Rate, idle, s.IdleRounds)

	p("## Targets\n\n| target | measured (cross-node, medians) | met |\n|---|---|---|\n")
	for _, t := range Targets(r) {
		met := "no"
		switch {
		case !t.Known:
			met = "not measured"
		case t.Met:
			met = "yes"
		}
		p("| %s | %s | %s |\n", t.What, t.Measured, met)
	}
	if len(rep.Profiles) > 0 {
		p("\n## Where ztunnel's time and memory go\n\n")
		p("From the profiles of both ztunnels taken during this run (cross-node, first round; `e2e/bench/results/profiles`, read with `go tool pprof`). CPU is grouped by what the sampled code was doing; *functions* are those with the most samples themselves.\n\n")
		for _, ps := range rep.Profiles {
			p("- **%s**, %s side (%s)", ps.What, ps.Side, ps.Total)
			if len(ps.Groups) > 0 {
				p(": %s", joinShares(ps.Groups))
			}
			p(". Functions: %s.\n", joinShares(ps.Top))
		}
	}
	var untrusted []string
	for _, pl := range []string{CrossNode, SameNode} {
		p("\n## %s\n\nEach cell: median (min–max over rounds); latency also as added to (a), rates as a ratio to (a) and (e).\n\n", pl)
		sections := []struct {
			title string
			defs  []figureDef
		}{
			{fmt.Sprintf("Latency at %d rps, persistent connections (ms)", s.Rate), latencyDefs(LoadRate, "")},
			{fmt.Sprintf("Latency at %d rps, a new connection per request (ms)", s.NewConnRate), latencyDefs(LoadNewConn, "")},
			{fmt.Sprintf("Latency at the highest rate holding p99 under %.0f ms (ms)", s.SLAMillis), latencyDefs(LoadSLA, "")},
			{"Rates and throughput", throughputDefs},
			{"Proxies", proxyDefs()},
		}
		for _, sec := range sections {
			var rows []string
			for _, d := range sec.defs {
				row, bad := rep.row(pl, d)
				if row != "" {
					rows = append(rows, row)
				}
				untrusted = append(untrusted, bad...)
			}
			if len(rows) == 0 {
				continue
			}
			p("### %s\n\n| |", sec.title)
			for _, sc := range r.Scenarios {
				p(" (%s) %s |", sc.ID, sc.Name)
			}
			p("\n|---|")
			for range r.Scenarios {
				p("---|")
			}
			p("\n%s\n", strings.Join(rows, "\n"))
		}
	}
	p("\n## Figures too spread to trust\n\n")
	if len(untrusted) == 0 {
		p("None: every figure's rounds lie within %.0f%% of its median.\n", SpreadLimit*100)
	} else {
		p("Rounds that disagree by more than %.0f%% of the median (the machine is shared and has 2 cores; tails of latency are the first to move):\n\n", SpreadLimit*100)
		for _, u := range untrusted {
			p("- %s\n", u)
		}
	}
	if len(rep.Plots) > 0 {
		p("\n## Plots\n\n")
		for _, pl := range rep.Plots {
			p("![%s](%s)\n\n", pl.Caption, pl.Path)
		}
	}
	for _, bf := range rep.Lab {
		if len(bf.Results) == 0 {
			continue
		}
		p("\n## %s\n\n", labTitle(bf.Name))
		if bf.Provenance != "" {
			p("From %s.\n\n", bf.Provenance)
		}
		p("| benchmark | figures |\n|---|---|\n")
		for _, g := range bf.Results {
			var ms []string
			for _, m := range g.Metrics {
				ms = append(ms, fmt.Sprintf("%s %s", trim(m.Value), m.Unit))
			}
			p("| %s | %s |\n", g.Name, strings.Join(ms, ", "))
		}
		if ws := rep.Waypoint; ws != nil && bf.Name == "lab" {
			p("\nWhere the waypoint's time goes, from its CPU profile in BenchmarkWaypoint's first round (`e2e/bench/results/profiles/waypoint.%s.pprof`; %s): %s. Functions: %s.\n",
				ProfileRate, ws.Total, joinShares(ws.Groups), joinShares(ws.Top))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func joinShares(sh []Share) string {
	var parts []string
	for _, x := range sh {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", x.Name, x.Percent))
	}
	return strings.Join(parts, ", ")
}

func labTitle(name string) string {
	switch name {
	case "lab":
		return "Onboarding (node agent) and the waypoint (1 KiB HTTP at 1000 rps, L4 mesh vs through the waypoint), same run"
	case "scale":
		return "Control plane at scale (istiod-lite, `make bench-scale`)"
	}
	return name
}

// row renders one figure across scenarios, and says which cells are too spread to trust.
func (rep Report) row(placement string, d figureDef) (string, []string) {
	r := rep.L4
	base := map[string]Summary{Direct: r.Figure(Direct, placement, d.key), GoTLS: r.Figure(GoTLS, placement, d.key)}
	var cells []string
	var bad []string
	any := false
	for _, sc := range r.Scenarios {
		f := r.Figure(sc.ID, placement, d.key)
		if f.N == 0 {
			cells = append(cells, "—")
			continue
		}
		any = true
		cell := fmt.Sprintf("%s (%s–%s)", num(f.Median, d.digits), num(f.Min, d.digits), num(f.Max, d.digits))
		if !f.Trusted() {
			cell += " ⚠"
			bad = append(bad, fmt.Sprintf("%s, (%s) %s, `%s`: %s–%s %s, %.0f%% of the median %s", placement, sc.ID, sc.Name, d.key,
				num(f.Min, d.digits), num(f.Max, d.digits), d.unit, f.Spread()*100, num(f.Median, d.digits)))
		}
		switch {
		case isLatency(d.key) && sc.ID != Direct && base[Direct].N > 0:
			cell += fmt.Sprintf("<br>%+.3f vs a", f.Median-base[Direct].Median)
		case d.higherIsBetter:
			var rs []string
			for _, id := range []string{Direct, GoTLS} {
				if id != sc.ID && base[id].N > 0 && base[id].Median > 0 {
					rs = append(rs, fmt.Sprintf("%.2f× %s", f.Median/base[id].Median, id))
				}
			}
			if len(rs) > 0 {
				cell += "<br>" + strings.Join(rs, " · ")
			}
		}
		cells = append(cells, cell)
	}
	if !any {
		return "", nil
	}
	return fmt.Sprintf("| %s (%s) | %s |", d.label, d.unit, strings.Join(cells, " | ")), bad
}

func num(v float64, digits int) string {
	if digits == 0 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

func fmtDuration(seconds float64) string {
	if seconds >= 120 {
		return fmt.Sprintf("%.1f min", seconds/60)
	}
	return fmt.Sprintf("%.0f s", seconds)
}
