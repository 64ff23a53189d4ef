package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// latencyQuantiles are the points of the latency plots (the maximum is left out: one sample).
var latencyQuantiles = []float64{50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99}

// nines maps a quantile to the x axis of a latency distribution: 90% → 1, 99% → 2, 99.9% → 3.
func nines(q float64) float64 { return -math.Log10(1 - q/100) }

type ninesTicks struct{}

func (ninesTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for _, q := range []float64{50, 90, 99, 99.9, 99.99} {
		if x := nines(q); x >= lo-1e-9 && x <= hi+1e-9 {
			ts = append(ts, plot.Tick{Value: x, Label: fmt.Sprintf("%g%%", q)})
		}
	}
	return ts
}

// logTicks125 labels a log axis at 1, 2 and 5 times each power of ten, so that a range narrower
// than a decade still has labels.
type logTicks125 struct{}

func (logTicks125) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= lo && v <= hi {
				ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ts
}

// WritePlots draws the latency distributions of each load and placement and the proxies' CPU and
// memory into dir, and returns them for the report (paths relative to relTo).
func WritePlots(r *Run, dir, relTo string) ([]Plot, error) {
	var out []Plot
	add := func(p *plot.Plot, name, caption string) error {
		path := filepath.Join(dir, name)
		if err := p.Save(8*vg.Inch, 4.5*vg.Inch, path); err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		rel, err := filepath.Rel(relTo, path)
		if err != nil {
			rel = path
		}
		out = append(out, Plot{Path: filepath.ToSlash(rel), Caption: caption})
		return nil
	}
	loads := []struct{ key, title string }{
		{LoadRate, fmt.Sprintf("%d rps, persistent connections", r.Settings.Rate)},
		{LoadNewConn, fmt.Sprintf("%d rps, a new connection per request", r.Settings.NewConnRate)},
	}
	for _, l := range loads {
		for _, pl := range []string{CrossNode, SameNode} {
			p, ok, err := latencyPlot(r, l.key, pl, l.title)
			if err != nil {
				return nil, err
			}
			if ok {
				if err := add(p, fmt.Sprintf("latency-%s-%s.png", l.key, pl), fmt.Sprintf("Latency distribution, %s, %s", l.title, pl)); err != nil {
					return nil, err
				}
			}
		}
	}
	for _, b := range []struct{ prefix, title, unit, name string }{
		{CPUPrefix, fmt.Sprintf("Proxy CPU per 1000 rps (at %d rps, cross-node)", r.Settings.Rate), "cores", "proxy-cpu.png"},
		{RSSPrefix, fmt.Sprintf("Proxy RSS at %d rps (cross-node)", r.Settings.Rate), "MB", "proxy-rss.png"},
		{IdlePrefix, fmt.Sprintf("Proxy memory per idle connection (%d open, cross-node)", r.Settings.IdleConns), "KiB", "proxy-idle.png"},
	} {
		p, ok, err := proxyPlot(r, b.prefix, b.title, b.unit)
		if err != nil {
			return nil, err
		}
		if ok {
			if err := add(p, b.name, b.title); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func latencyPlot(r *Run, load, placement, title string) (*plot.Plot, bool, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Latency, %s, %s (median of rounds)", title, placement)
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.X.Tick.Marker = ninesTicks{}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logTicks125{}
	p.Legend.Top, p.Legend.Left = true, true
	drawn := false
	for i, sc := range r.Scenarios {
		var pts plotter.XYs
		for _, q := range latencyQuantiles {
			f := r.Figure(sc.ID, placement, Latency(load, q))
			if f.N > 0 && f.Median > 0 {
				pts = append(pts, plotter.XY{X: nines(q), Y: f.Median})
			}
		}
		if len(pts) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, false, err
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(fmt.Sprintf("(%s) %s", sc.ID, sc.Name), line, points)
		drawn = true
	}
	p.Add(plotter.NewGrid())
	return p, drawn, nil
}

func proxyPlot(r *Run, prefix, title, unit string) (*plot.Plot, bool, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.Legend.Top = true
	var names []string
	values := map[string]plotter.Values{}
	for _, sc := range r.Scenarios {
		if sc.Proxy == "" {
			continue
		}
		c := r.Figure(sc.ID, CrossNode, prefix+ClientSide)
		s := r.Figure(sc.ID, CrossNode, prefix+ServerSide)
		if c.N == 0 && s.N == 0 {
			continue
		}
		names = append(names, fmt.Sprintf("(%s) %s", sc.ID, sc.Proxy))
		values[ClientSide] = append(values[ClientSide], c.Median)
		values[ServerSide] = append(values[ServerSide], s.Median)
	}
	if len(names) == 0 {
		return nil, false, nil
	}
	w := vg.Points(24)
	for i, side := range []string{ClientSide, ServerSide} {
		bars, err := plotter.NewBarChart(values[side], w)
		if err != nil {
			return nil, false, err
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Color = color.Black
		bars.Offset = vg.Length(float64(i)-0.5) * w
		p.Add(bars)
		p.Legend.Add(side+" side", bars)
	}
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p, true, nil
}
