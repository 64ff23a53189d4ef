// Command bench-report writes BENCHMARKS.md and its plots from the results `make bench` left in
// e2e/bench/results: l4.json (the L4 scenarios) and the `go test -bench` outputs *.bench of the
// lab benchmarks (onboarding; the control plane at scale from `make bench-scale`).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/ambient-mesh/ambient/e2e/bench"
)

func main() {
	results := flag.String("results", "e2e/bench/results", "directory of the results")
	out := flag.String("out", "BENCHMARKS.md", "the report to write")
	flag.Parse()
	if err := run(*results, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench-report:", err)
		os.Exit(1)
	}
}

func run(results, out string) error {
	l4, err := bench.Load(filepath.Join(results, "l4.json"))
	if err != nil {
		return fmt.Errorf("%w (run make bench first)", err)
	}
	rep := bench.Report{L4: l4}
	if rep.Plots, err = bench.WritePlots(l4, results, filepath.Dir(out)); err != nil {
		return err
	}
	if rep.Profiles, err = bench.SummarizeProfiles(results); err != nil {
		return err
	}
	if rep.Waypoint, err = bench.SummarizeWaypointProfile(results); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(results, "*.bench"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, f := range files {
		bf, err := bench.ReadBenchFile(f, "L4")
		if err != nil {
			return err
		}
		rep.Lab = append(rep.Lab, bf)
	}
	w, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := rep.WriteMarkdown(w); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}
