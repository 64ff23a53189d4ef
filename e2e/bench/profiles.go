package bench

// Profiles of ztunnel (and the waypoint) taken during the run are kept beside l4.json
// (results/profiles), so that the report says where their time and memory go from this run's
// own evidence, not from a guess.
// CPU time is grouped by what the sampled code was doing; a stack counts once, in the first
// group that claims it (garbage collection before system calls before the leaf's package).

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// Profile names: CPU under a load (cross-node, first round), memory with the idle connections open.
const (
	ProfileRate          = "cpu-rate"
	ProfileStream        = "cpu-stream"
	ProfileMax           = "cpu-max"
	ProfileConnRate      = "cpu-connrate"
	ProfileIdleHeap      = "heap-idle"
	ProfileIdleGoroutine = "goroutine-idle"
)

// profileKinds are the profiles the report summarizes, in its order.
var profileKinds = []struct{ name, what string }{
	{ProfileRate, "CPU at the fixed rate"},
	{ProfileMax, "CPU at the maximum request rate"},
	{ProfileStream, "CPU during the single stream"},
	{ProfileConnRate, "CPU opening new connections"},
	{ProfileIdleHeap, "heap with the idle connections open"},
}

// WaypointProfilePath is where a profile of the waypoint (BenchmarkWaypoint) is kept in the results
// directory.
func WaypointProfilePath(results, name string) string {
	return filepath.Join(results, "profiles", "waypoint."+name+".pprof")
}

// ProfilePath is where a profile of ztunnel's side is kept in the results directory.
func ProfilePath(results, side, name string) string {
	return filepath.Join(results, "profiles", "ztunnel-"+side+"."+name+".pprof")
}

// Share is a part of a profile's total.
type Share struct {
	Name    string
	Percent float64
}

// ProfileSummary is one profile as the report shows it.
type ProfileSummary struct {
	Side, What string
	Total      string  // the profile's total: seconds of CPU sampled, or bytes in use
	Groups     []Share // CPU: by what the code was doing
	Top        []Share // the functions with the most of it themselves
}

// SummarizeProfiles reads ztunnel's profiles under results; those missing are left out.
func SummarizeProfiles(results string) ([]ProfileSummary, error) {
	var out []ProfileSummary
	for _, k := range profileKinds {
		for _, side := range []string{ClientSide, ServerSide} {
			s, err := summarizeFile(ProfilePath(results, side, k.name))
			if err != nil {
				return nil, fmt.Errorf("%s profile of the %s side: %w", k.name, side, err)
			}
			if s != nil {
				s.Side, s.What = side, k.what
				out = append(out, *s)
			}
		}
	}
	return out, nil
}

// SummarizeWaypointProfile reads the waypoint's CPU profile at the fixed rate (BenchmarkWaypoint's
// first round) under results; nil when there is none.
func SummarizeWaypointProfile(results string) (*ProfileSummary, error) {
	s, err := summarizeFile(WaypointProfilePath(results, ProfileRate))
	if err != nil {
		return nil, fmt.Errorf("the waypoint's %s profile: %w", ProfileRate, err)
	}
	if s != nil {
		s.Side, s.What = "waypoint", "CPU at the fixed rate"
	}
	return s, nil
}

// summarizeFile summarizes the profile at path; nil when there is none.
func summarizeFile(path string) (*ProfileSummary, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	p, err := profile.Parse(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	s, err := summarize(p)
	return &s, err
}

// summarize groups a CPU profile's time (or a heap profile's bytes in use) and finds the
// functions that hold most of it.
func summarize(p *profile.Profile) (ProfileSummary, error) {
	idx, unit := -1, ""
	for i, st := range p.SampleType {
		if (st.Type == "cpu" && st.Unit == "nanoseconds") || (st.Type == "inuse_space" && st.Unit == "bytes") {
			idx, unit = i, st.Type
		}
	}
	if idx < 0 {
		return ProfileSummary{}, fmt.Errorf("neither a CPU nor a heap profile")
	}
	var total int64
	groups, leaves := map[string]int64{}, map[string]int64{}
	for _, s := range p.Sample {
		v := s.Value[idx]
		if v == 0 || len(s.Location) == 0 {
			continue
		}
		total += v
		fns := frames(s)
		leaves[fns[0]] += v
		if unit == "cpu" {
			groups[cpuGroup(fns)] += v
		}
	}
	if total == 0 {
		return ProfileSummary{}, fmt.Errorf("no samples")
	}
	var s ProfileSummary
	if unit == "cpu" {
		s.Total = fmt.Sprintf("%.2f s of CPU in %.0f s", float64(total)/1e9, float64(p.DurationNanos)/1e9)
	} else {
		s.Total = fmt.Sprintf("%.1f MB in use", float64(total)/1e6)
	}
	s.Groups = shares(groups, total, 8)
	s.Top = shares(leaves, total, 6)
	return s, nil
}

// frames are a sample's function names, leaf first, inlined calls included.
func frames(s *profile.Sample) []string {
	var fns []string
	for _, loc := range s.Location {
		for _, l := range loc.Line { // innermost inlined call first
			if l.Function != nil {
				fns = append(fns, l.Function.Name)
			}
		}
	}
	if len(fns) == 0 {
		fns = []string{"(unknown)"}
	}
	return fns
}

// cpuGroup says what a sampled stack was doing.
func cpuGroup(fns []string) string {
	for _, fn := range fns {
		switch fn {
		case "runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge":
			return "garbage collection"
		}
	}
	leaf := fns[0]
	switch pkg := funcPackage(leaf); {
	case pkg == "syscall" || pkg == "internal/runtime/syscall" || pkg == "internal/runtime/syscall/linux" || pkg == "golang.org/x/sys/unix" ||
		slices.Contains([]string{"runtime.futex", "runtime.epollwait", "runtime.usleep", "runtime.write1", "runtime.read", "runtime.madvise", "runtime.mmap", "runtime.nanotime1", "runtime.osyield"}, leaf):
		return "system calls (the kernel's share: TCP, veth, epoll, futex)"
	case strings.HasPrefix(pkg, "crypto/") || strings.Contains(pkg, "x/crypto"):
		return "cryptography (TLS records, handshakes)"
	case pkg == "runtime" || strings.HasPrefix(pkg, "internal/runtime"):
		return "Go runtime (scheduling, allocation)"
	case strings.HasPrefix(pkg, "github.com/ambient-mesh/ambient/"):
		return "the mesh's own code (" + strings.TrimPrefix(pkg, "github.com/ambient-mesh/ambient/") + ")"
	default:
		return pkg
	}
}

// funcPackage is the import path of a function's package: "crypto/tls" of
// "crypto/tls.(*Conn).Read".
func funcPackage(fn string) string {
	slash := strings.LastIndex(fn, "/")
	if dot := strings.Index(fn[slash+1:], "."); dot >= 0 {
		return fn[:slash+1+dot]
	}
	return fn
}

// shares are the n largest parts of total, largest first.
func shares(parts map[string]int64, total int64, n int) []Share {
	var out []Share
	for name, v := range parts {
		out = append(out, Share{name, 100 * float64(v) / float64(total)})
	}
	slices.SortFunc(out, func(a, b Share) int {
		return cmp.Or(cmp.Compare(b.Percent, a.Percent), strings.Compare(a.Name, b.Name))
	})
	return out[:min(n, len(out))]
}
